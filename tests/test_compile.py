"""torch.compile of every mmnorm layer (one graph on the common path: ``fullgraph=True``) and inside
DeepLabV3+ / Faster R-CNN: compiled forward and backward equal eager; mmengine's ``compile`` switch
through tools/train.py.

The default run traces every layer with the ``aot_eager`` backend (dynamo + AOT autograd: what
decides graph breaks and the backward graph) and runs inductor on a small conv stack; the inductor
runs of every layer, the two models and the Runner are marked slow."""
import copy
import json
import math
import os.path as osp

import pytest
import torch
import torch.nn as nn
from conftest import REPO, run_tool, tiny_seg_options
from layer_cases import LAYERS, SPLIT_LAYERS
from tool_loader import load_tool

import mmnorm  # noqa: F401  (registration)
from mmnorm.models.norms import IBN, PBN, domain_split

# Train mode with a graph break by design: PBN's random plan (cut positions drawn on the host every
# forward) runs eagerly; the perturbation layers branch on a host coin flip
# (StatPerturbation.forward, ``.item() < p``).
NOT_ONE_GRAPH_IN_TRAIN = ('PBN', 'MixStyle', 'EFDMix', 'DSU')
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    import torch._inductor.config as inductor_config
    torch._dynamo.reset()
    # compiled random ops draw from torch's generator like eager ones (the perturbation layers'
    # draws)
    with inductor_config.patch(fallback_random=True):
        yield
    torch._dynamo.reset()


def forward(name, layer, x, seed):
    torch.manual_seed(seed)
    if name in SPLIT_LAYERS:
        with domain_split(layer, (2, 2)):
            return layer(x)
    return layer(x)


def check_compiled_layer(name, train, backend):
    torch.manual_seed(0)
    eager = LAYERS[name]().train(train)
    module = copy.deepcopy(eager)
    fullgraph = not (train and name in NOT_ONE_GRAPH_IN_TRAIN)
    compiled = torch.compile(module, backend=backend, fullgraph=fullgraph)
    for step in range(2 if train else 1):  # train: twice, the running statistics move
        x = torch.randn(4, 8, 6, 5) * (step + 1) + step
        grad = torch.randn_like(x)
        x_e, x_c = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_e, y_c = forward(name, eager, x_e, step), forward(name, compiled, x_c, step)
        torch.testing.assert_close(y_c, y_e, **TOL)
        params = [p for p in module.parameters()]
        got = torch.autograd.grad(
            y_c, [x_c] + params, grad, allow_unused=True)  # RN's gates are unused in eval
        want = torch.autograd.grad(y_e, [x_e] + list(eager.parameters()), grad, allow_unused=True)
        for g, w in zip(got, want):
            assert (g is None) == (w is None)
            if w is not None:
                torch.testing.assert_close(g, w, **TOL)
    for key, value in eager.state_dict().items():  # running statistics updated alike
        torch.testing.assert_close(module.state_dict()[key], value, **TOL)


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize(
    'name',
    [pytest.param(n, marks=pytest.mark.slow) if n in ('BN', 'IBN-0.25') else n
     for n in LAYERS])  # BN: the reference; IBN-0.25: IBN's code path
def test_layer_traces_as_one_graph_and_matches_eager(name, train):
    check_compiled_layer(name, train, 'aot_eager')


@pytest.mark.slow
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('name', list(LAYERS))
def test_layer_inductor_matches_eager(name, train):
    check_compiled_layer(name, train, 'inductor')


def test_pbn_random_plan_is_the_only_break():
    """PBN in train mode: one graph break, at the eagerly-run plan + patch normalisation (no
    recompilation per plan: the second call with a new plan reuses the graphs)."""
    layer = nn.Sequential(nn.Conv2d(3, 8, 1), PBN(8), nn.ReLU())
    explanation = torch._dynamo.explain(layer)(torch.randn(2, 3, 8, 8))
    assert explanation.graph_break_count == 1, explanation.break_reasons
    assert 'disable' in str(explanation.break_reasons[0].reason).lower()


def test_inductor_conv_stack():
    """The default inductor run: conv -> IBN -> ReLU -> conv -> PBN(fixed) -> ReLU, train forward +
    backward."""
    torch.manual_seed(0)
    eager = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), IBN(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
        PBN(8, mode='fixed'), nn.ReLU())
    module = copy.deepcopy(eager)
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    y_e, y_c = eager(x), compiled(x)
    torch.testing.assert_close(y_c, y_e, **TOL)
    y_e.square().sum().backward()
    y_c.square().sum().backward()
    for p_c, p_e in zip(module.parameters(), eager.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# Inside the models (slow): each norm in the backbone, the model's tensor forward compiled whole
MODEL_NORMS = {
    'IBN-a': dict(type='IBNResNetV1c', ibn=dict(type='a')),
    'RN': dict(norm_cfg=dict(type='RN', requires_grad=True)),
    'PBN': dict(norm_cfg=dict(type='PBN', requires_grad=True)),
    'PBN-fixed': dict(norm_cfg=dict(type='PBN', mode='fixed', requires_grad=True)),
    'AdaBN': dict(norm_cfg=dict(type='AdaBN', requires_grad=True)),
}


def _compare_model(build, inputs, norm, backend='inductor'):
    """Compiled (inductor) against eager, forward and every parameter gradient, in float64: in
    float32 the two orders of summation move the first layer's gradient, which gathers every later
    layer's rounding, by up to ~2e-4."""
    torch.manual_seed(0)
    eager = build().double()
    module = copy.deepcopy(eager)
    compiled = torch.compile(module, backend=backend)
    split = (1, 1) if norm == 'RN' else None
    outs = []
    for model, fn in ((eager, eager), (module, compiled)):
        torch.manual_seed(1)
        with domain_split(model, split) if split else torch.enable_grad():
            out = fn(inputs.double())
        out = out if isinstance(out, torch.Tensor) else torch.cat([o.flatten() for o in out])
        out.square().mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-8, rtol=1e-6)
    for (name, p_c), p_e in zip(module.named_parameters(), eager.parameters()):
        if p_e.grad is not None:
            torch.testing.assert_close(
                p_c.grad,
                p_e.grad,
                atol=1e-8,
                rtol=1e-6,
                msg=lambda detail, name=name: f'{name}: {detail}')


@pytest.mark.slow
@pytest.mark.parametrize('norm', list(MODEL_NORMS))
def test_compiled_deeplabv3plus(norm):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = Config.fromfile(osp.join(REPO, 'configs/_base_/models/deeplabv3plus_r18-mini-d8.py'))
    cfg.model.backbone.update(MODEL_NORMS[norm])
    cfg.model.decode_head.dropout_ratio = 0.0

    def build():
        return MODELS.build(cfg.model).train()

    seg = build()
    _compare_model(lambda: copy.deepcopy(seg), torch.randn(2, 3, 32, 64), norm)


# torch 2.13 CPU inductor: with PBN mode='random' (eager, its graph breaks split the backbone into
# many graphs) the FPN's last level gets a wrong gradient (fpn_convs.3.weight 50 % off, and from
# there every backbone parameter by ~0.3 %), while the forward matches to 1e-13 and aot_eager (same
# graphs, no inductor codegen) is exact.
INDUCTOR_PBN_RANDOM_FPN = pytest.mark.xfail(
    strict=True,
    reason='inductor: wrong FPN gradient around PBN random graph breaks (aot_eager exact)')


@pytest.mark.slow
@pytest.mark.parametrize(
    'norm,backend', [(n, 'inductor') for n in MODEL_NORMS if n != 'PBN'] +
    [pytest.param('PBN', 'inductor', marks=INDUCTOR_PBN_RANDOM_FPN), ('PBN', 'aot_eager')])
def test_compiled_faster_rcnn_backbone_and_neck(norm, backend, tmp_path):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    # mmdet's own model (a 'mmdet::' path resolves as a _base_ only)
    base = tmp_path / 'faster_rcnn.py'
    base.write_text("_base_ = ['mmdet::_base_/models/faster-rcnn_r50_fpn.py']\n")
    cfg = Config.fromfile(str(base))
    backbone = dict(depth=18, base_channels=16, init_cfg=None, frozen_stages=-1, norm_eval=False)
    if norm == 'IBN-a':
        backbone.update(type='IBNResNet', ibn=dict(type='a'))
    else:
        backbone.update(MODEL_NORMS[norm])
    cfg.model.backbone.update(backbone)
    cfg.model.neck.update(in_channels=[16, 32, 64, 128], out_channels=32)
    det = MODELS.build(cfg.model).train()

    class Features(nn.Module
                   ):  # the detector's backbone + FPN (what the norms change), as one module

        def __init__(self, det):
            super().__init__()
            self.det = det

        def forward(self, x):
            return self.det.extract_feat(x)

    _compare_model(lambda: Features(copy.deepcopy(det)), torch.randn(2, 3, 64, 64), norm, backend)


@pytest.mark.slow
def test_train_py_compile_switch(tiny_demo_data, tmp_path):
    """``tools/train.py --cfg-options compile=True``: mmengine compiles ``train_step`` (inductor
    generates code), losses finite."""
    config = osp.join(
        REPO, 'configs/demo/deeplabv3plus_r18-mini-d8-ibn-a_1xb8-1k_demo-gta5-cityscapes-64x128.py')
    opts = load_tool('demo').data_root_options(config, tiny_demo_data) + [
        o for o in tiny_seg_options(tiny_demo_data, iters=2) if 'data_root=' not in o
    ] + ['train_cfg.val_interval=3', 'compile=True']
    work_dir, inductor = tmp_path / 'wd', tmp_path / 'inductor'
    run_tool(['tools/train.py', config, '--work-dir', work_dir, '--cfg-options', *opts],
             TORCHINDUCTOR_CACHE_DIR=inductor)
    # inductor wrote the compiled graphs' code into its (fresh) cache: the run went through it
    assert list(inductor.rglob('*.py')), sorted(inductor.rglob('*'))
    (scalars, ) = work_dir.glob('*/vis_data/scalars.json')
    rows = [row for row in map(json.loads, scalars.read_text().splitlines()) if 'loss' in row]
    assert [row['iter'] for row in rows] == [1, 2]  # logger interval 1
    assert all(math.isfinite(row['loss']) for row in rows)
