"""Defined behaviour of the mmnorm layers on degenerate maps: one spatial position, one value per channel."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MMLogger

import mmnorm  # noqa: F401
from mmnorm.models.norms import IBN
from mmnorm.models.norms.layer_names import layer_label, name_layers


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
    # IN over one value: mean = x, var = 0 -> (x - x) / sqrt(eps) * w + b = b, computed here from the formula
    mean, var = x[:, :h], torch.zeros_like(x[:, :h])
    expected_in = (x[:, :h] - mean) / torch.sqrt(var + layer.eps) * layer.IN.weight.view(1, -1, 1, 1) \
        + layer.IN.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y[:, :h], expected_in.detach())
    bn = nn.BatchNorm2d(8 - h, dtype=torch.float64).train(train)
    bn.load_state_dict(layer.BN.state_dict())
    torch.testing.assert_close(y[:, h:], bn(x[:, h:].detach()).detach())
    y.sum().backward()
    assert torch.equal(x.grad[:, :h], torch.zeros_like(x.grad[:, :h]))  # a constant output has no input gradient
    assert layer.IN.weight.grad is not None and torch.equal(layer.IN.weight.grad, torch.zeros(h, dtype=torch.float64))
    torch.testing.assert_close(layer.IN.bias.grad, torch.full((h, ), 3.0, dtype=torch.float64))


def test_ibn_single_position_warns_once_with_the_layer_path():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), _ibn())
    assert name_layers(model) == 1 and layer_label(model[1]) == 'IBN(8) at 1'
    logger = MMLogger.get_current_instance()
    records = []
    handler = type('H', (__import__('logging').Handler, ), {'emit': lambda self, r: records.append(r.getMessage())})()
    logger.addHandler(handler)
    try:
        for _ in range(3):
            model(torch.randn(2, 3, 1, 1))
    finally:
        logger.removeHandler(handler)
    hits = [r for r in records if 'one spatial position' in r]
    assert len(hits) == 1 and hits[0].startswith('IBN(8) at 1:') and 'norm_cfg=dict(type="BN")' in hits[0]


def test_ibn_one_value_per_channel_in_training_is_an_mmnorm_error():
    model = nn.Sequential(_ibn())
    name_layers(model)
    with pytest.raises(ValueError, match=r'IBN\(8\) at 0: input \(1, 8, 1, 1\) has one value per channel for the '
                                         r'batch-norm half in training.*more than one image per GPU'):
        model(torch.randn(1, 8, 1, 1))
    model.eval()  # eval uses the running statistics: defined for any batch
    x = torch.randn(1, 8, 1, 1)
    y = model(x)
    h = model[0].num_in
    torch.testing.assert_close(y[:, h:], F.batch_norm(x[:, h:], model[0].BN.running_mean, model[0].BN.running_var,
                                                      model[0].BN.weight, model[0].BN.bias, False, 0.0, 1e-5))


def test_ibn_larger_maps_unchanged():
    layer = _ibn()
    x = torch.randn(2, 8, 3, 3)
    h = layer.num_in
    expected = torch.cat([F.instance_norm(x[:, :h], weight=layer.IN.weight, bias=layer.IN.bias),
                          F.batch_norm(x[:, h:], None, None, layer.BN.weight, layer.BN.bias, True)], 1)
    torch.testing.assert_close(layer(x), expected)
