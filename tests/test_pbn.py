"""PBN: numerics against slicing / per-patch-loop / torch BN references, reproducibility, gradcheck,
small maps, checkpoints, sync-BN conversion, toolbox integration and the two PBN configs."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import REPO
from mmcv.cnn import build_norm_layer
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.registry import DefaultScope
from mmnorm_tools.pbn_loop import pbn_patch_loop  # the per-patch loop (released structure)

from mmnorm.models.norms import PBN
from mmnorm.models.norms.pbn import (PatchView, PBNPlan, grid_edges, pbn_fixed, pbn_train,
                                     sample_pbn_plan)


def make_layer(c=6, dtype=torch.float64, **kwargs):
    """A PBN with non-trivial affine parameters and running statistics."""
    layer = PBN(c, **kwargs).to(dtype)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
    return layer


def features(*shape, dtype=torch.float64):
    return (torch.randn(*shape, dtype=dtype) * 2 + 1).requires_grad_()


def run_functional(layer, x, plan):
    return pbn_train(x, layer.weight, layer.bias, layer.running_mean, layer.running_var, plan,
                     layer.momentum, layer.eps)


def full_plan(c, views, use_b=False, patch_stats=True):
    """A plan with pinned choices: ``views`` = ((row_cuts, col_cuts), (row_cuts, col_cuts))."""
    out = []
    for rows, cols in views:
        k = (len(rows) + 1) * (len(cols) + 1)
        out.append(
            PatchView(tuple(rows), tuple(cols), torch.full((k, c), patch_stats, dtype=torch.bool)))
    return PBNPlan(views=tuple(out), use_b=torch.full((c, ), use_b, dtype=torch.bool))


# --------------------------------------------------------------------------------------------------
# Registry and construction
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
def test_build_norm_layer_in_toolbox_scopes(scope):
    import mmnorm  # noqa: F401
    with DefaultScope.overwrite_default_scope(scope):
        name, layer = build_norm_layer(
            dict(type='PBN', requires_grad=False, mode='fixed', lam=0.25), 8, postfix=1)
    assert name == 'bn1' and isinstance(layer, PBN)
    assert layer.mode == 'fixed' and layer.lam == 0.25 and layer.eps == 1e-5
    assert not layer.weight.requires_grad
    assert 'mode=fixed' in repr(layer) and 'lam=0.25' in repr(layer)


@pytest.mark.parametrize('kwargs, match', [
    (dict(mode='grid'), "mode must be 'random' or 'fixed', got mode='grid'"),
    (dict(p=1.5), r'p must be a number in \[0, 1\], got p=1.5'),
    (dict(lam=-0.1), r'lam must be a number in \[0, 1\], got lam=-0.1'),
    (dict(grid=(0, 2)), r'PBN grid rows \(grid=\(0, 2\)\) must be a positive int, got 0'),
    (dict(grid=4), 'got grid=4'),
    (dict(momentum=None), r'momentum must be a number in \[0, 1\], got momentum=None'),
    (dict(track_running_stats=False), 'needs running statistics, got track_running_stats=False'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PBN(4, **kwargs)


def test_bad_inputs():
    layer = PBN(4)
    with pytest.raises(
            ValueError,
            match=r'expects an \(N, C, H, W\), \(N, C, L\) or \(N, C\) input, got shape '
            r'\(2, 4, 8, 1, 1\)'):
        layer(torch.randn(2, 4, 8, 1, 1))
    with pytest.raises(ValueError, match='PBN over 4 channels got an input with 3'):
        layer(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match='num_features must be a positive int, got 0'):
        PBN(0)
    with pytest.raises(ValueError, match='view_id must be 0, 1 or 2, got 3'):
        from mmnorm.models.norms.pbn import view_cuts
        view_cuts(3, 8, 8)


# --------------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------------
def test_eval_is_batch_norm_with_the_buffers_bit_for_bit():
    layer = make_layer(dtype=torch.float32).eval()
    x = torch.randn(4, 6, 9, 7)
    expected = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias,
                            False, 0.0, layer.eps)
    assert torch.equal(layer(x), expected)
    # norm_eval: the toolbox backbones put only the BN child in eval mode
    layer.train()
    layer.bn.eval()
    assert torch.equal(layer(x), expected)


@pytest.mark.parametrize('shape', [(3, 6, 9, 11), (2, 6, 16, 5), (1, 6, 8, 8), (4, 6, 3, 12),
                                   (2, 6, 2, 3)])
def test_random_mode_equals_per_patch_loop(shape):
    """Output, gradients (x, weight, bias) and running statistics equal the released per-patch
    structure."""
    torch.manual_seed(sum(shape))
    for _ in range(6):
        layer = make_layer()
        ref = copy.deepcopy(layer)
        x = features(*shape)
        x_ref = x.detach().clone().requires_grad_()
        plan = sample_pbn_plan(*shape[1:])
        y, y_ref = run_functional(layer, x, plan), pbn_patch_loop(x_ref, ref, plan)
        grad = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, layer.weight, layer.bias), grad)
        want = torch.autograd.grad(y_ref, (x_ref, ref.weight, ref.bias), grad)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(layer.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.running_var, ref.running_var, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('cuts', [((4, ), ()), ((), (3, )), ((2, ), (5, ))])
def test_pinned_patch_stats_normalise_each_patch_by_its_own_statistics(cuts):
    """All channels patch statistics, one view: every patch is BN of that patch alone (reference by
    slicing)."""
    layer = make_layer()
    x = features(3, 6, 7, 8)
    plan = full_plan(6, (cuts, ((), ())), use_b=False, patch_stats=True)
    y = run_functional(layer, x, plan).detach()
    rows, cols = (0, *cuts[0], 7), (0, *cuts[1], 8)
    w, b = layer.weight.detach().view(1, -1, 1, 1), layer.bias.detach().view(1, -1, 1, 1)
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            patch = x.detach()[:, :, r0:r1, c0:c1].double()
            mean = patch.mean(dim=(0, 2, 3), keepdim=True)
            var = patch.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
            expected = (patch - mean) / torch.sqrt(var + layer.eps) * w + b
            torch.testing.assert_close(y[:, :, r0:r1, c0:c1], expected, rtol=1e-12, atol=1e-12)


def test_pinned_running_stats_equal_eval_batch_norm():
    x = features(3, 6, 9, 10).detach()
    # all-running choices, the whole-map view first: the buffers as they were before the forward
    layer = make_layer()
    expected = F.batch_norm(x, layer.running_mean.clone(), layer.running_var.clone(), layer.weight,
                            layer.bias, False, 0.0, layer.eps)
    plan = full_plan(6, (((), ()), ((3, ), (4, ))), use_b=False, patch_stats=False)
    torch.testing.assert_close(run_functional(layer, x, plan), expected, rtol=1e-12, atol=1e-12)
    # p=0 and momentum=0 through the module: any views, always eval-mode BN
    layer = make_layer(p=0.0, momentum=0.0)
    expected = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias,
                            False, 0.0, layer.eps)
    torch.manual_seed(0)
    for _ in range(3):
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_running_stats_follow_the_released_rule():
    """View a's patches update the buffers one after another (F.batch_norm's EMA, unbiased
    variance); view b not."""
    layer = make_layer(momentum=0.3)
    x = features(2, 6, 8, 9).detach()
    rm, rv = layer.running_mean.clone(), layer.running_var.clone()
    plan = full_plan(6, (((3, ), (4, )), ((5, ), ())), patch_stats=False)
    run_functional(layer, x, plan)
    for r0, r1, c0, c1 in ((0, 3, 0, 4), (0, 3, 4, 9), (3, 8, 0, 4), (3, 8, 4,
                                                                      9)):  # lu, ru, ld, rd
        patch = x[:, :, r0:r1, c0:c1]
        rm = 0.7 * rm + 0.3 * patch.mean(dim=(0, 2, 3))
        rv = 0.7 * rv + 0.3 * patch.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(layer.running_mean, rm, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.running_var, rv, rtol=1e-12, atol=1e-12)
    # whole-map view a: exactly torch BN's update; num_batches_tracked counts forwards like BN
    layer, bn = make_layer(), nn.BatchNorm2d(6).double()
    bn.load_state_dict(layer.state_dict())
    run_functional(layer, x, full_plan(6, (((), ()), ((4, ), ()))))
    bn(x)
    torch.testing.assert_close(layer.running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.running_var, bn.running_var, rtol=1e-12, atol=1e-12)
    module = make_layer()
    module(x)
    module(x)
    assert module.num_batches_tracked.item() == 2


def test_fixed_mode_against_slicing_and_bn_update():
    layer, bn = make_layer(mode='fixed', grid=(2, 3), lam=0.25), nn.BatchNorm2d(6).double()
    bn.load_state_dict(layer.state_dict())
    x = features(3, 6, 8, 9).detach()
    rm, rv = layer.running_mean.clone(), layer.running_var.clone()
    y = layer(x)
    rows, cols = grid_edges(8, 2), grid_edges(9, 3)
    assert rows == (0, 4, 8) and cols == (0, 3, 6, 9)
    w, b = layer.weight.detach().view(1, -1, 1, 1), layer.bias.detach().view(1, -1, 1, 1)
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            patch = x[:, :, r0:r1, c0:c1]
            mean = 0.25 * rm + 0.75 * patch.mean(dim=(0, 2, 3))
            var = 0.25 * rv + 0.75 * patch.var(dim=(0, 2, 3), unbiased=False)
            expected = (patch - mean.view(
                1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + layer.eps) * w + b
            torch.testing.assert_close(y[:, :, r0:r1, c0:c1], expected, rtol=1e-12, atol=1e-12)
    bn(x)  # running statistics: BN's update from the whole map
    torch.testing.assert_close(layer.running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.running_var, bn.running_var, rtol=1e-12, atol=1e-12)
    # lam = 0 with a 1x1 grid is train-mode BN, gradients included
    layer, bn = make_layer(mode='fixed', grid=(1, 1), lam=0.0), nn.BatchNorm2d(6).double()
    bn.load_state_dict(layer.state_dict())
    x1 = features(2, 6, 5, 5)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = layer(x1), bn(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y1)
    torch.testing.assert_close(
        torch.autograd.grad(y1, x1, g)[0], torch.autograd.grad(y2, x2, g)[0], rtol=1e-9, atol=1e-9)


def test_gradcheck_float64():
    x = features(2, 3, 6, 7)
    base = make_layer(
        3, momentum=0.0)  # constant buffers, so repeated calls see the same running statistics
    w, b = base.weight.detach().clone().requires_grad_(), base.bias.detach().clone().requires_grad_(
    )
    rm, rv = base.running_mean, base.running_var
    torch.manual_seed(3)
    plan = sample_pbn_plan(3, 6, 7)
    plan.views[0].patch_stats[0, 0] = True  # both branches appear
    plan.views[0].patch_stats[-1, 1] = False
    mixed = PBNPlan(
        views=(PatchView((2, ), (3, ),
                         torch.rand(4, 3) < 0.5), PatchView((), (4, ),
                                                            torch.rand(2, 3) < 0.5)),
        use_b=torch.tensor([True, False, True]))
    for p in (plan, mixed):
        assert torch.autograd.gradcheck(lambda x, w, b: pbn_train(x, w, b, rm, rv, p, 0.0, 1e-5),
                                        (x, w, b))
    assert torch.autograd.gradcheck(
        lambda x, w, b: pbn_fixed(x, w, b, rm, rv, (2, 2), 0.3, 0.0, 1e-5), (x, w, b))
    layer = make_layer(3).eval()
    assert torch.autograd.gradcheck(layer, (x, ))


def test_same_seed_same_output_different_seed_different_output():
    from mmengine.runner import set_random_seed
    x = torch.randn(2, 6, 16, 16)

    def run(seed, seeder=torch.manual_seed):
        layer = make_layer(dtype=torch.float32)
        seeder(seed)
        return layer(x), layer.running_mean.clone()

    torch.manual_seed(123)  # the parameter draws in make_layer are seeded too
    a = run(0)
    torch.manual_seed(123)
    b = run(0, lambda s: set_random_seed(s))  # mmengine's randomness config path
    torch.manual_seed(123)
    c = run(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # the plan is drawn on the CPU generator only: identical for any input device
    torch.manual_seed(5)
    p1 = sample_pbn_plan(6, 16, 16)
    torch.manual_seed(5)
    p2 = sample_pbn_plan(6, 16, 16)
    assert [(v.row_cuts, v.col_cuts) for v in p1.views] == [(v.row_cuts, v.col_cuts)
                                                            for v in p2.views]
    assert all(torch.equal(v1.patch_stats, v2.patch_stats) for v1, v2 in zip(p1.views, p2.views))
    assert torch.equal(p1.use_b, p2.use_b)


def test_small_maps_and_batch_size_one_behave_like_bn():
    torch.manual_seed(0)
    layer = make_layer(4, dtype=torch.float32)
    for _ in range(20):  # axes shorter than 4 are never cut
        plan = sample_pbn_plan(4, 3, 2)
        assert all(v.row_cuts == () and v.col_cuts == () for v in plan.views)
        plan = sample_pbn_plan(4, 3, 8)
        assert all(v.row_cuts == () and all(2 <= c < 6 for c in v.col_cuts) for v in plan.views)
    for shape in [(2, 4, 1, 1), (2, 4, 3, 3), (1, 4, 2, 5), (1, 4, 4, 4)]:
        y = layer(torch.randn(*shape))
        assert y.shape == shape and torch.isfinite(y).all()
    assert torch.isfinite(layer.running_var).all()
    # one value per channel: mmnorm's error naming the layer and the fix
    # (tests/test_degenerate_maps.py)
    with pytest.raises(
            ValueError, match=r'PBN\(4\): input \(1, 4, 1, 1\) has one value per channel'):
        layer(torch.randn(1, 4, 1, 1))


def test_autocast_statistics_in_float32():
    layer = make_layer(8, dtype=torch.float32)
    ref = copy.deepcopy(layer)
    x = torch.randn(2, 8, 12, 12).to(torch.bfloat16)
    torch.manual_seed(0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x)
    torch.manual_seed(0)
    y_ref = ref(x.float())
    assert y.dtype == torch.bfloat16 and layer.running_mean.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(layer.running_mean, ref.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.running_var, ref.running_var, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('offset', [0.0, 1e3])
def test_float32_matches_the_float64_loop(offset):
    """PBN in float32 (two-pass cell moments), also on a map with a large mean and a constant
    channel, against the released per-patch loop in float64: outputs, gradients, running
    statistics."""
    torch.manual_seed(0)
    layer = PBN(5)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
        layer.running_mean.fill_(offset)
    ref = copy.deepcopy(layer).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 6, 7, generator=g) * torch.rand(5, 1, 1, generator=g).add(0.5) + offset
    x[:, 1] = 2.5  # a constant channel
    x.requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    plan = sample_pbn_plan(5, 6, 7)
    y = run_functional(layer, x, plan)
    y_ref = pbn_patch_loop(x_ref, ref, plan)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.weight, layer.bias), grad)
    want = torch.autograd.grad(y_ref, (x_ref, ref.weight, ref.bias), grad.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=2e-4 if offset else 1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-3, atol=1e-3 if offset else 1e-4)
    torch.testing.assert_close(layer.running_mean.double(), ref.running_mean, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(layer.running_var.double(), ref.running_var, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# State dict, sync-BN conversion, toolbox integration
# --------------------------------------------------------------------------------------------------
def test_state_dict_is_a_bn_state_dict():
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_()
        bn.running_mean.normal_()
    bn.num_batches_tracked.fill_(7)
    layer = PBN(6)
    assert list(layer.state_dict()) == list(bn.state_dict())
    layer.load_state_dict(bn.state_dict(), strict=True)  # a plain BN checkpoint loads strictly
    for key, value in bn.state_dict().items():
        assert torch.equal(layer.state_dict()[key], value)
    other = nn.BatchNorm2d(6)
    other.load_state_dict(layer.state_dict(), strict=True)  # and a PBN checkpoint loads into BN
    nested = {'bn.' + k: v for k, v in bn.state_dict().items()}
    PBN(6).load_state_dict(nested, strict=True)
    with pytest.raises(RuntimeError, match='size mismatch'):
        PBN(4).load_state_dict(bn.state_dict())


def test_resnet_with_pbn_loads_a_bn_resnet_checkpoint_strictly():
    from mmengine.runner.checkpoint import load_state_dict
    from mmseg.models.backbones import ResNetV1c
    bn_net = ResNetV1c(depth=18, base_channels=8, init_cfg=None)
    pbn_net = ResNetV1c(
        depth=18, base_channels=8, norm_cfg=dict(type='PBN', requires_grad=True), init_cfg=None)
    assert sum(isinstance(m, PBN) for m in pbn_net.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in bn_net.modules())
    assert list(pbn_net.state_dict()) == list(bn_net.state_dict())
    pbn_net.load_state_dict(bn_net.state_dict(), strict=True)
    load_state_dict(
        pbn_net, bn_net.state_dict(), strict=True)  # mmengine's loader walks modules itself
    x = torch.randn(2, 3, 32, 32)
    bn_net.eval(), pbn_net.eval()
    for a, b in zip(bn_net(x), pbn_net(x)):
        assert torch.equal(a, b)


def test_survives_convert_and_revert_sync_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), PBN(6), nn.ReLU())
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 12, 12)
    torch.manual_seed(0)
    before = copy.deepcopy(model)(x)
    for convert in (convert_sync_batchnorm, nn.SyncBatchNorm.convert_sync_batchnorm):
        synced = convert(copy.deepcopy(model))
        assert isinstance(synced[1], PBN) and isinstance(synced[1].bn, nn.SyncBatchNorm)
        assert list(synced.state_dict()) == keys
        torch.manual_seed(0)
        assert torch.equal(synced(x),
                           before)  # PBN behaviour kept (its patch statistics are per process)
        reverted = revert_sync_batchnorm(convert(
            copy.deepcopy(model)))  # what a single-process Runner does
        assert isinstance(reverted[1], PBN) and type(reverted[1].bn).__name__ == '_BatchNormXd'
        assert list(reverted.state_dict()) == keys
        torch.manual_seed(0)
        assert torch.equal(reverted(x), before)
        assert torch.equal(reverted[1].running_mean, synced[1].running_mean)
        reverted.eval(), synced.eval()
        assert torch.equal(reverted(x), synced(x))


def test_norm_eval_and_optimizer_norm_decay_see_the_layer():
    from mmdet.models.backbones import ResNet
    from mmengine.optim import build_optim_wrapper
    net = ResNet(
        depth=18,
        base_channels=8,
        norm_cfg=dict(type='PBN'),
        norm_eval=True,
        frozen_stages=1,
        init_cfg=None)
    net.train()
    assert all(not m.bn.training for m in net.modules() if isinstance(m, PBN))
    x = torch.randn(2, 3, 32, 32)
    y1, y2 = net(x), net(x)
    assert all(torch.equal(a, b) for a, b in zip(y1, y2))  # frozen BN behaviour, no randomness
    wrapper = build_optim_wrapper(
        net,
        dict(
            optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
            paramwise_cfg=dict(norm_decay_mult=0.0)))
    pbn_params = {
        id(p)
        for m in net.modules() if isinstance(m, PBN) for p in m.parameters() if p.requires_grad
    }
    groups = [g for g in wrapper.optimizer.param_groups if id(g['params'][0]) in pbn_params]
    assert len(groups) == len(pbn_params) and all(g['weight_decay'] == 0 for g in groups)


def test_adabn_recalibration_writes_the_input_statistics():
    from mmnorm.recalibration import recalibrate_bn
    layer = PBN(4)
    assert layer.recalibration_buffers()[0] is layer.bn.running_mean
    model = nn.Sequential(layer)
    batches = [torch.randn(3, 4, 6, 6) * 3 + 1, torch.randn(5, 4, 6, 6) - 2]
    recalibrate_bn(model, batches)
    data = torch.cat(batches).double()
    torch.testing.assert_close(
        layer.running_mean.double(), data.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        layer.running_var.double(), data.var(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------
PBN_CONFIGS = [
    'configs/pbn/deeplabv3plus_r50-d8-pbn_4xb2-40k_gta5-cityscapes-512x512.py',
    'configs/pbn/faster-rcnn_r50-pbn_fpn_2xb4-20k_cityscapes-foggy.py'
]


@pytest.mark.parametrize('path', PBN_CONFIGS)
def test_config_builds_and_runs_a_forward(path):
    from mmengine.config import Config

    import mmnorm  # noqa: F401
    cfg = Config.fromfile(osp.join(REPO, path))
    assert cfg.model.backbone.norm_cfg.type == 'PBN'
    cfg.model.backbone.init_cfg = None
    cfg.model.pop('pretrained', None)
    scope = 'mmseg' if 'deeplab' in path else 'mmdet'
    with DefaultScope.overwrite_default_scope(scope):
        from mmengine.registry import MODELS
        model = revert_sync_batchnorm(MODELS.build(cfg.model))  # what a single-process Runner does
    pbns = [m for m in model.backbone.modules() if isinstance(m, PBN)]
    # every norm of the R50 backbone: stem (ResNetV1c deep stem: 3, ResNet: 1) + 16 blocks x 3 + 4
    # downsample
    assert len(pbns) == (55 if scope == 'mmseg' else 53)
    model.train()
    torch.manual_seed(0)
    inputs = torch.randn(2, 3, 64, 64)
    losses = model(
        inputs, _data_samples(scope), mode='loss')  # one training forward on a tiny input
    total = sum(t.sum() for k, v in losses.items() if 'loss' in k
                for t in (v if isinstance(v, list) else [v]))
    assert torch.isfinite(total)
    total.backward()
    assert all(m.weight.grad is not None for m in pbns if m.weight.requires_grad)
    assert all(m.num_batches_tracked.item() == 1 for m in pbns if m.training and m.bn.training)


def _data_samples(scope):
    meta = dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64), scale_factor=(1.0, 1.0))
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(2):
        if scope == 'mmseg':
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, 64, 64), generator=g))
        else:
            from mmdet.structures import DetDataSample
            from mmengine.structures import InstanceData
            sample = DetDataSample(metainfo=meta)
            sample.gt_instances = InstanceData(
                bboxes=torch.tensor([[4., 6., 30., 40.], [20., 10., 60., 50.]]),
                labels=torch.tensor([0, 2]))
        samples.append(sample)
    return samples
