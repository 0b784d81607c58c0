"""Semantic-aware whitening (SAW, SAN-SAW arXiv 2204.00822): the channel groups on a hand-made
classifier, the loss against a loop re-implementation of the authors' ``sort_with_idx`` and
``instance_whitening_loss``, the segmentor's ``loss_whitening`` (summed over positions) and
``loss_saw_classifier`` (which trains the classifiers only), the config check and bad input."""
import pytest
import torch
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample
from test_whitening import TINY_BACKBONE
from test_whitening import tiny_segmentor as tiny_whitening_segmentor

from mmnorm.models.backbones import standardized_outputs
from mmnorm.models.whitening import SAW, saw_groups, saw_loss
from mmnorm.validation import ArgumentError

# relax_denom 0: no margin, so random features give a non-zero loss; the authors' positions
SAW_CFG = dict(type='SAW', selected_classes=(0, 10, 2, 1), relax_denom=0)


def test_groups_rank_the_channels_of_each_class():
    """K = 3 classes, C = 5 channels, groups of the classes (2, 0): G = 5 // 2 = 2; group g holds
    the g-th largest |w| channel of class 2, then of class 0."""
    w = torch.tensor([[0.1, -0.9, 0.3, 0.0, 0.5], [9.0, 9.0, 9.0, 9.0, 9.0],
                      [0.2, 0.1, -0.7, 0.4, 0.0]])
    index, scale = saw_groups(w, (2, 0))
    assert index.tolist() == [[2, 1], [3, 4]]
    expected = torch.sigmoid(torch.tensor([[0.7, 0.9], [0.4, 0.5]]))
    torch.testing.assert_close(scale, expected)


def authors_loss(x, class_weights, selected, relax_denom, eps=1e-5):
    """The authors' SAW.forward written out: ``sort_with_idx`` channel by channel, then
    ``instance_whitening_loss`` per group (``X X^T / (HW - 1) + eps I``, upper triangle,
    ``clamp((sum |.| - margin) / N, 0)``, summed over the batch / B), summed over groups."""
    b, c, h, w = x.shape
    k = len(selected)
    weights = torch.sigmoid(class_weights.abs())
    order = torch.sort(class_weights.abs(), dim=1, descending=True).indices
    sorted_x = torch.zeros_like(x)
    for i in range(b):
        for g in range(c // k):
            for j in range(k):
                channel = order[selected[j]][g]
                sorted_x[i][k * g + j] = weights[selected[j]][channel] * x[i][channel]
    upper = torch.ones(k, k, dtype=x.dtype).triu(1)
    num_off = float(upper.sum())
    margin = 0 if relax_denom == 0 else num_off // relax_denom
    total = 0.0
    for g in range(c // k):
        group = sorted_x[:, k * g:k * (g + 1)].reshape(b, k, -1)
        cov = torch.bmm(group, group.transpose(1, 2)) / (h * w - 1) + eps * torch.eye(k)
        off = (cov * upper).abs().sum(dim=(1, 2)) - margin
        total = total + (off / num_off).clamp(min=0).sum() / b
    return total


@pytest.mark.parametrize('relax_denom', [0.0, 2.0])
def test_loss_equals_the_authors_loop(relax_denom):
    g = torch.Generator().manual_seed(0)
    # correlated channels (a shared component of varying strength), so the margin is exceeded
    base = torch.randn(2, 1, 6, 5, generator=g, dtype=torch.float64)
    x = torch.randn(
        2, 23, 6, 5, generator=g, dtype=torch.float64) + base * torch.linspace(
            -3, 3, 23, dtype=torch.float64).view(1, 23, 1, 1)
    class_weights = torch.randn(19, 23, generator=g, dtype=torch.float64)
    selected = (0, 10, 2, 1, 8)
    index, scale = saw_groups(class_weights, selected)
    margin = 0.0 if relax_denom == 0 else float(10 // relax_denom)
    got = saw_loss(x, index, scale, margin)
    expected = authors_loss(x, class_weights, selected, relax_denom)
    assert float(expected) > 0
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # the module: the same loss of its standardised output, the classifier's weights ranking
    module = SAW(23, selected_classes=selected, relax_denom=relax_denom).double()
    module.classifier.weight.data.copy_(class_weights.view(19, 23, 1, 1))
    standardized = module(x)
    module_loss = module.loss(standardized)
    assert float(module_loss) > 0
    torch.testing.assert_close(module_loss,
                               authors_loss(standardized, class_weights, selected, relax_denom))


def test_default_margin_lets_the_loss_act_at_init():
    """At the classifier's init (|w| ~ 0.01, sigmoid ~ 0.5) a group's covariance elements are
    at most ~0.25 on standardised features: the authors' margin (relax_denom 2: 5 of 10) keeps the
    loss at zero even for perfectly correlated channels; the default (no margin) does not."""
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(2, 1, 8, 8, generator=g)
    x = shared + 0.01 * torch.randn(2, 64, 8, 8, generator=g)  # every channel nearly the same
    torch.manual_seed(0)
    default, authors = SAW(64), SAW(64, relax_denom=2)
    authors.load_state_dict(default.state_dict())
    assert float(default.loss(default(x))) > 0.1
    assert float(authors.loss(authors(x))) == 0.0


def tiny_segmentor():
    return tiny_whitening_segmentor(SAW_CFG, after_stages=(0, 1))


def labelled_batch(seed=0, hw=(32, 32)):
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=hw, ori_shape=hw, pad_shape=hw))
        labels = torch.randint(0, 19, (1, *hw), generator=g)
        labels[:, :4] = 255  # an ignored band
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return torch.randn(2, 3, *hw, generator=g), samples


def test_segmentor_sums_positions_and_trains_the_classifiers_on_labels():
    model = tiny_segmentor()
    inputs, samples = labelled_batch()
    losses = model.loss(inputs, samples)
    assert losses['loss_whitening'] > 0
    with standardized_outputs(model.backbone) as maps:
        model.backbone(inputs)
    assert [type(m).__name__ for m, _ in maps] == ['SAW', 'SAW']
    expected = torch.stack([m.loss(out) for m, out in maps]).sum() * 0.1
    torch.testing.assert_close(losses['loss_whitening'], expected)
    # the classifiers' cross-entropy on the detached maps, upsampled to the labels
    labels = torch.cat([s.gt_sem_seg.data for s in samples])
    ce = 0.0
    for module, out in maps:
        logits = torch.nn.functional.interpolate(
            module.classifier(out), size=(32, 32), mode='bilinear', align_corners=True)
        ce = ce + 0.1 * torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
    torch.testing.assert_close(losses['loss_saw_classifier'], ce)
    # the classifier loss reaches the classifiers and nothing of the network
    model.zero_grad()
    losses['loss_saw_classifier'].backward()
    assert model.backbone.layer1[-1].whitening.classifier.weight.grad.abs().sum() > 0
    assert model.backbone.layer1[0].conv1.weight.grad is None
    # SAW's own loss reaches the network, not the classifiers (their weights enter detached)
    model.zero_grad()
    saw = SAW(16, selected_classes=(0, 10, 2, 1), relax_denom=0)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    saw.loss(saw(x)).backward()
    assert x.grad.abs().sum() > 0 and saw.classifier.weight.grad is None


def test_every_label_ignored_gives_zero_classifier_loss():
    model = tiny_segmentor()
    inputs, samples = labelled_batch()
    for s in samples:
        s.gt_sem_seg.data[:] = 255
    losses = model.loss(inputs, samples)
    assert losses['loss_saw_classifier'].item() == 0.0
    assert torch.isfinite(losses['loss_whitening'])


@pytest.mark.parametrize('kwargs, match', [
    (dict(selected_classes=(0, 0, 1)), 'selected_classes must be >= 2 distinct'),
    (dict(selected_classes=(0, 19)), r'class indices in 0\.\.18'),
    (dict(selected_classes=(3, )), 'selected_classes must be >= 2'),
    (dict(selected_classes='road'), 'selected_classes must be'),
    (dict(relax_denom=-1), 'relax_denom must be a number >= 0'),
    (dict(classifier_weight=float('nan')), 'classifier_weight must be a number >= 0'),
    (dict(num_classes=1), 'num_classes'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        SAW(64, **kwargs)


def test_too_few_channels_and_mismatched_classes():
    with pytest.raises(ArgumentError, match=r'at least len\(selected_classes\)=5 channels'):
        SAW(4)
    with pytest.raises(
            ArgumentError,
            match=r"SAW at backbone position 0 has num_classes=21 but "
            r"the decode head predicts 19: set whitening=dict\(type='SAW', "
            r'num_classes=19\)'):
        tiny_whitening_segmentor(dict(SAW_CFG, num_classes=21), after_stages=(0, 1))


def test_classifier_init_survives_the_backbone_init():
    """The ResNet's own init (Kaiming on every Conv2d when init_cfg is None) runs first; SAW's
    init_weights then gives its classifiers the authors' N(0, 0.01), bias 0."""
    model = tiny_segmentor()
    model.init_weights()
    for module in model.backbone.whitening_modules().values():
        weight = module.classifier.weight
        assert 0.005 < weight.std().item() < 0.015 and not module.classifier.bias.any()


def test_tools_config_check_names_the_key():
    from mmnorm_tools.config import UserError, check_layer_types
    backbone = dict(TINY_BACKBONE, whitening=dict(type='SAW', selected_classes=(1, 1)))
    cfg = Config(dict(model=dict(type='WhiteningEncoderDecoder', backbone=backbone)))
    with pytest.raises(UserError, match=r'model.backbone.whitening \(SAW\): .*distinct'):
        check_layer_types(cfg)
    cfg.model.backbone.whitening = dict(type='SAW')
    assert check_layer_types(cfg) == 1
