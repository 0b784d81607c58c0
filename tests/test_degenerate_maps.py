"""Defined behaviour of the mmnorm layers on degenerate maps: one spatial position, one value per
channel."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MMLogger

import mmnorm  # noqa: F401
from mmnorm.models.norms import IBN, PBN, RN, AdaBN
from mmnorm.models.norms.layer_names import layer_label, name_layers
from mmnorm.models.norms.pbn import sample_pbn_plan


def _ibn(c=8):
    torch.manual_seed(0)
    layer = IBN(c)
    with torch.no_grad():  # non-trivial affine in both halves
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    return layer


@pytest.mark.parametrize('train', [True, False])
def test_ibn_single_position_instance_half_outputs_its_bias(train, capsys):
    layer = _ibn().train(train)
    x = torch.randn(3, 8, 1, 1, dtype=torch.float64, requires_grad=True)
    layer.double()
    y = layer(x)
    h = layer.num_in
    # IN over one value: mean = x, var = 0 -> (x - x) / sqrt(eps) * w + b = b, computed here from
    # the formula
    mean, var = x[:, :h], torch.zeros_like(x[:, :h])
    expected_in = (x[:, :h] - mean) / torch.sqrt(var + layer.eps) \
        * layer.IN.weight.view(1, -1, 1, 1) \
        + layer.IN.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y[:, :h], expected_in.detach())
    bn = nn.BatchNorm2d(8 - h, dtype=torch.float64).train(train)
    bn.load_state_dict(layer.BN.state_dict())
    torch.testing.assert_close(y[:, h:], bn(x[:, h:].detach()).detach())
    y.sum().backward()
    assert torch.equal(x.grad[:, :h],
                       torch.zeros_like(x.grad[:, :h]))  # a constant output has no input gradient
    assert layer.IN.weight.grad is not None and torch.equal(layer.IN.weight.grad,
                                                            torch.zeros(h, dtype=torch.float64))
    torch.testing.assert_close(layer.IN.bias.grad, torch.full((h, ), 3.0, dtype=torch.float64))


def test_ibn_single_position_warns_once_with_the_layer_path():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), _ibn())
    assert name_layers(model) == 1 and layer_label(model[1]) == 'IBN(8) at 1'
    logger = MMLogger.get_current_instance()
    records = []
    handler = type('H', (__import__('logging').Handler, ), {
        'emit': lambda self, r: records.append(r.getMessage())
    })()
    logger.addHandler(handler)
    try:
        for _ in range(3):
            model(torch.randn(2, 3, 1, 1))
    finally:
        logger.removeHandler(handler)
    hits = [r for r in records if 'one spatial position' in r]
    assert len(hits) == 1 and hits[0].startswith(
        'IBN(8) at 1:') and 'norm_cfg=dict(type="BN")' in hits[0]


def test_ibn_one_value_per_channel_in_training_is_an_mmnorm_error():
    model = nn.Sequential(_ibn())
    name_layers(model)
    with pytest.raises(
            ValueError,
            match=r'IBN\(8\) at 0: input \(1, 8, 1, 1\) has one value per channel for the '
            r'batch-norm half in training.*more than one image per GPU'):
        model(torch.randn(1, 8, 1, 1))
    model.eval()  # eval uses the running statistics: defined for any batch
    x = torch.randn(1, 8, 1, 1)
    y = model(x)
    h = model[0].num_in
    torch.testing.assert_close(
        y[:, h:],
        F.batch_norm(x[:, h:], model[0].BN.running_mean, model[0].BN.running_var,
                     model[0].BN.weight, model[0].BN.bias, False, 0.0, 1e-5))


def test_ibn_larger_maps_unchanged():
    layer = _ibn()
    x = torch.randn(2, 8, 3, 3)
    h = layer.num_in
    expected = torch.cat([
        F.instance_norm(x[:, :h], weight=layer.IN.weight, bias=layer.IN.bias),
        F.batch_norm(x[:, h:], None, None, layer.BN.weight, layer.BN.bias, True)
    ], 1)
    torch.testing.assert_close(layer(x), expected)


# --------------------------------------------------------------------------------------------------
# One value per channel in training: AdaBN, RN, PBN (mmnorm.models.norms.degenerate)
# --------------------------------------------------------------------------------------------------
TORCH_MESSAGE = 'Expected more than 1 value per channel'


def _named(layer):
    model = nn.Sequential(layer)
    name_layers(model)
    return model


def _raises_mmnorm(fn, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        fn()
    assert TORCH_MESSAGE not in str(info.value)
    return str(info.value)


def test_split_adabn_one_image_per_domain_on_a_1x1_map_is_an_mmnorm_error():
    from mmnorm import domain_split
    model = _named(AdaBN(8))
    x = torch.randn(2, 8, 1, 1)
    with domain_split(model, (1, 1)):
        message = _raises_mmnorm(
            lambda: model(x), r"AdaBN\(8\) at 0: the 'source' domain part \(1, 8, 1, 1\) has "
            r'one value per channel')
    assert '2 images per domain per GPU' in message and '1x1 pooling branches' in message
    assert int(model[0].source.num_batches_tracked) == 0  # refused before any statistics update
    # 2 + 2 images on the same map: each domain part is torch BN on its own rows
    x = torch.randn(4, 8, 1, 1, dtype=torch.float64)
    model.double()
    with domain_split(model, (2, 2)):
        y = model(x)
    for rows in (slice(0, 2), slice(2, 4)):
        reference = F.batch_norm(x[rows], None, None, model[0].weight, model[0].bias, True)
        torch.testing.assert_close(y[rows], reference)


def test_adabn_one_image_on_a_1x1_map():
    model = _named(AdaBN(8))
    message = _raises_mmnorm(lambda: model(torch.randn(1, 8, 1, 1)),
                             r'AdaBN\(8\) at 0: input \(1, 8, 1, 1\) has one value per channel')
    assert 'at least 2 images per GPU' in message
    model(torch.randn(1, 8, 2, 1))  # two positions: defined, as for torch BN
    # norm_eval: the domain BNs in eval use the running statistics, defined for any batch
    model[0].source.eval()
    model[0].target.eval()
    x = torch.randn(1, 8, 1, 1)
    bn = model[0].source
    torch.testing.assert_close(
        model(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias))
    model.eval()
    model[0].set_test_mode(
        'batch')  # test-time batch statistics of one value: the error names the test-time fix
    message = _raises_mmnorm(lambda: model(x),
                             r'AdaBN\(8\) at 0: input \(1, 8, 1, 1\) has one value per channel')
    assert "test_mode='blend'" in message
    model[0].set_test_mode('blend', prior=16)  # blend: prior-weighted, defined
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize('split,part', [((1, 1), 'source'), ((3, 1), 'target'), ((1, 0), 'source')])
def test_rn_one_value_per_channel_in_a_domain_part(split, part):
    from mmnorm import domain_split
    model = _named(RN(8, allow_single_domain=True))
    x = torch.randn(sum(split), 8, 1, 1)
    with domain_split(model, split):
        count = split[0 if part == 'source' else 1]
        message = _raises_mmnorm(
            lambda: model(x), rf'RN\(8\) at 0: the {part} part \({count} of split '
            rf'\({split[0]}, {split[1]}\)\) of input \({sum(split)}, 8, 1, 1\) '
            'has one value per channel')
    assert '2 images per domain per GPU' in message
    assert int(model[0].num_batches_tracked) == 0


def test_rn_two_values_per_domain_on_a_1x1_map():
    """(2, 2) images on a 1x1 map: RN's formula re-implemented here (C < 512: one channel per
    super-channel)."""
    from mmnorm import domain_split
    model = _named(RN(4).double())
    x = torch.randn(4, 4, 1, 1, dtype=torch.float64)
    with domain_split(model, (2, 2)):
        y = model(x)
    flat = x.flatten(1)
    mean = torch.stack([flat[:2].mean(0), flat[2:].mean(0)])
    var = torch.stack([flat[:2].var(0),
                       flat[2:].var(0)])  # unbiased, the gates are 1: no compensation
    for d, rows in enumerate((slice(0, 2), slice(2, 4))):
        expected = (flat[rows] - mean[d]) / torch.sqrt(var[d] + model[0].eps)
        torch.testing.assert_close(y[rows].flatten(1), expected)


def test_pbn_one_image_on_a_1x1_map():
    model = _named(PBN(8))
    message = _raises_mmnorm(lambda: model(torch.randn(1, 8, 1, 1)),
                             r'PBN\(8\) at 0: input \(1, 8, 1, 1\) has one value per channel')
    assert 'at least 2 images per GPU' in message
    assert int(model[0].num_batches_tracked) == 0
    empty = model(torch.randn(0, 8, 3, 3))  # an empty batch: BN's empty output
    assert empty.shape == (0, 8, 3, 3)


@pytest.mark.parametrize('shape', [(2, 6, 1, 1), (3, 6, 3, 2)])
@pytest.mark.parametrize('p', [0.0, 1.0])
def test_pbn_small_maps_are_one_patch(shape, p):
    """Documented fallback: an axis shorter than 4 is never cut, so on such a map every view is the
    whole map; p=1 is train-mode BN; p=0 normalises with the running statistics, those before BN's
    update (view a) or after it (view b, the plan's ``use_b`` channels); the running statistics get
    BN's update."""
    torch.manual_seed(0)
    layer = PBN(6, p=p).double()
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    bn = nn.BatchNorm2d(6, dtype=torch.float64)
    bn.load_state_dict(layer.state_dict())
    x = torch.randn(*shape, dtype=torch.float64)
    torch.manual_seed(1)
    plan = sample_pbn_plan(6, *shape[2:], p=p)
    torch.manual_seed(1)
    y = layer(x)
    if p == 1.0:
        expected = bn.train()(x)
    else:
        before = F.batch_norm(x, bn.running_mean.clone(), bn.running_var.clone(), bn.weight,
                              bn.bias, False)
        bn.train()(x)  # the running-statistics update
        after = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False)
        expected = torch.where(plan.use_b.view(1, -1, 1, 1), after, before)
        assert 0 < int(plan.use_b.sum()) < 6  # both kinds of channel occur with this seed
    torch.testing.assert_close(y, expected.detach())
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)


def test_uda_segmentor_names_the_pooling_branch(tiny_demo_data):
    """A real DeepLabV3+ in UDAEncoderDecoder with AdaBN everywhere and 1 + 1 images: the ASPP
    image-pooling branch (1x1 map) is the first layer with one value per domain, and the error names
    its module path."""
    from test_uda import build, losses_of, seg_datasets, seg_model_cfg
    cfg = seg_model_cfg('AdaBN')
    cfg.decode_head.norm_cfg = dict(type='AdaBN', requires_grad=True)
    model, _, batch = build('mmseg', cfg, *seg_datasets(tiny_demo_data, 'target_labelled'), n=1)
    message = _raises_mmnorm(
        lambda: losses_of(model, batch),
        r"AdaBN\(\d+\) at decode_head\.image_pool\.1\.bn: the 'source' domain part "
        r'\(1, \d+, 1, 1\) has one value per channel')
    assert '2 images per domain per GPU' in message
    model2, _, batch2 = build('mmseg', cfg, *seg_datasets(tiny_demo_data, 'target_labelled'), n=2)
    assert torch.isfinite(losses_of(model2, batch2)['decode.loss_ce'])


# --------------------------------------------------------------------------------------------------
# BN1d positions: IBN / PBN on (N, C, L) and (N, C) (e.g. EncNet's encoding, built from the head's
# norm_cfg)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('train', [True, False])
def test_ibn_on_sequences_is_in1d_and_bn1d(train):
    layer = _ibn().double().train(train)
    x = torch.randn(3, 8, 5, dtype=torch.float64)
    h = layer.num_in
    bn = nn.BatchNorm1d(8 - h, dtype=torch.float64).train(train)
    bn.load_state_dict(layer.BN.state_dict())
    expected = torch.cat(
        [F.instance_norm(x[:, :h], weight=layer.IN.weight, bias=layer.IN.bias),
         bn(x[:, h:])], 1)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.BN.running_mean, bn.running_mean)
    flat = layer(torch.randn(
        4, 8, dtype=torch.float64))  # (N, C): one position, the IN half outputs its bias
    assert flat.shape == (4, 8) and torch.equal(flat[:, :h], layer.IN.bias.expand(4, h))


def test_pbn_on_sequences():
    layer = PBN(6, p=1.0).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)  # L < 4: one patch, p=1: train-mode BN1d
    bn = nn.BatchNorm1d(6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), bn(x))
    torch.testing.assert_close(layer.running_var, bn.running_var)
    assert layer(torch.randn(2, 6, 16, dtype=torch.float64)).shape == (2, 6, 16)  # patches along L
    layer.eval()
    bn.load_state_dict(layer.state_dict())
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), bn.eval()(x))


def test_split_on_rows_that_are_not_images_names_layer_and_fix():
    """A head that reshapes the map into rows of patches (ISANet) gives RN a batch the split does
    not describe."""
    from mmnorm import domain_split
    model = _named(RN(8))
    with domain_split(model, (2, 2)):
        message = _raises_mmnorm(
            lambda: model(torch.randn(16, 8, 2, 2)),
            r'RN\(8\) at 0: declared domain split \(2, 2\) \(source, target\) sums to 4 but the '
            r'batch holds 16 samples')
    assert "norm_cfg=dict(type='BN') there" in message and 'ISANet' in message
