"""Every mmnorm layer under bfloat16 autocast and with channels_last maps; ``tools/train.py --amp``
(bfloat16 autocast on CPU) on the demo configs."""
import copy
import glob
import math
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn
from conftest import REPO, run_tool, tiny_seg_options
from layer_cases import LAYERS, SPLIT_LAYERS
from tool_loader import load_tool

import mmnorm  # noqa: F401  (registration)
from mmnorm.engine.optimizers import CPUAmpOptimWrapper
from mmnorm.models.norms import domain_split

SPLIT = (2, 2)


def forward(name, layer, x, seed=0):
    torch.manual_seed(seed)
    if name in SPLIT_LAYERS and layer.training:
        with domain_split(layer, SPLIT):
            return layer(x)
    return layer(x)


@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('name', list(LAYERS))
def test_channels_last_same_numbers_and_format(name, train):
    torch.manual_seed(0)
    layer = LAYERS[name]().train(train)
    other = copy.deepcopy(layer)
    x = torch.randn(4, 8, 6, 5) * 2 + 1
    grad = torch.randn_like(x)
    x_cf = x.clone().requires_grad_()
    x_cl = x.to(memory_format=torch.channels_last).requires_grad_()
    y_cf, y_cl = forward(name, layer, x_cf), forward(name, other, x_cl)
    torch.testing.assert_close(y_cl, y_cf, atol=1e-5, rtol=1e-5)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)  # as torch's BN returns it
    (g_cf, ), (g_cl, ) = torch.autograd.grad(y_cf, x_cf,
                                             grad), torch.autograd.grad(y_cl, x_cl, grad)
    torch.testing.assert_close(g_cl, g_cf, atol=1e-5, rtol=1e-5)
    for key, value in layer.state_dict().items():  # running statistics
        torch.testing.assert_close(other.state_dict()[key], value)


@pytest.mark.parametrize('name', list(LAYERS))
def test_bfloat16_autocast_statistics_in_float32(name):
    """A bfloat16 map from an autocast conv: the layer returns bfloat16 (as torch's BN), finite, and
    equal to the float32 computation on the same (bfloat16-rounded) values up to the output's
    rounding."""
    torch.manual_seed(0)
    layer = LAYERS[name]().train()
    ref = copy.deepcopy(layer)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    image = torch.randn(4, 3, 6, 5) * 3
    with torch.autocast('cpu', dtype=torch.bfloat16):
        x = conv(image)
        assert x.dtype == torch.bfloat16
        y = forward(name, layer, x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    expected = forward(name, ref, x.detach().float())
    torch.testing.assert_close(y.float(), expected, atol=0.05, rtol=0.02)
    y.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


def test_cpu_amp_wrapper_runs_the_forward_in_bfloat16():
    model = nn.Conv2d(3, 4, 1)
    wrapper = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with wrapper.optim_context(model):
        out = model(torch.randn(1, 3, 2, 2))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().sum())
    with pytest.raises(ValueError, match="dtype must be 'bfloat16'"):
        CPUAmpOptimWrapper(dtype='float16', optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


DEMO_CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'demo', '*.py')))
DEFAULT_DEMOS = ('ibn-a-adabn', 'rn-uda', 'pbn-mixstyle')  # IBN + AdaBN, RN (UDA), PBN + MixStyle


def _demo_cases():
    for path in DEMO_CONFIGS:
        norm = osp.basename(path).split('_')[1].split('-d8-')[-1]
        yield pytest.param(path, id=norm, marks=() if norm in DEFAULT_DEMOS else pytest.mark.slow)


@pytest.mark.parametrize('config', list(_demo_cases()))
def test_train_amp_demo_config(config, tiny_demo_data, tmp_path):
    """``tools/train.py --amp`` (bfloat16 autocast on CPU) trains 3 iterations with finite
    losses."""
    iters = 3
    opts = load_tool('demo').data_root_options(config, tiny_demo_data) + [
        o for o in tiny_seg_options(tiny_demo_data, iters=iters) if 'data_root=' not in o
    ]
    opts += [f'train_cfg.val_interval={iters + 1}']  # training only
    work_dir = tmp_path / 'wd'
    run_tool(['tools/train.py', config, '--amp', '--work-dir', work_dir, '--cfg-options', *opts])
    log = open(glob.glob(str(work_dir / '*' / '*.log'))[0]).read()
    assert ("type='AmpOptimWrapper'"
            if torch.cuda.is_available() else "type='CPUAmpOptimWrapper'") in log
    losses = re.findall(r'Iter\(train\) \[(\d+)/\d+\].*?  loss: (\S+)', log)
    assert [int(step) for step, _ in losses] == list(range(1, iters + 1)), log[-2000:]
    assert all(math.isfinite(float(loss)) for _, loss in losses), losses
