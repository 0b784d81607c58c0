"""Device- and dtype-correct code, checked on CPU: every norm layer, perturbation module,
recalibration, TTA method and UDA wrapper creates its tensors on the device and in the dtype of its
input.

Two recorders watch a case run, and only calls made from ``mmnorm/`` count (the toolboxes' own code
is theirs):

* :class:`DeviceFollowing` (a ``TorchFunctionMode``): a tensor made by a factory function
  (``torch.zeros``, ``torch.tensor``, ``torch.rand``, ...) without a ``device`` argument lives on
  the default device -- the CPU -- whatever the input's device. Such *host* tensors (and what is
  computed from them alone, and ``.cpu()`` results) are fine for host work (``.item()``, random
  plans drawn on the CPU generator) but an operation that combines one of them (not 0-dim) with a
  tensor of the input's device would fail on a GPU: that is a violation. ``.to(device)`` makes a
  host tensor a device tensor; ``copy_`` and indexing accept host tensors on GPUs too.
* :class:`DtypeFollowing` (a ``TorchDispatchMode``): the case runs on float64 inputs with float64
  modules, so any float32 / half value is a tensor made in a fixed dtype: a violation where one
  meets float64 data (an operation mixing them, or an up-cast of it) or where float64 data is cast
  down. Deliberate statistics in float32 / float64 follow :func:`mmnorm.stats.compute_dtype`, so a
  float64 input never produces float32.

Cases are a table (``CASES``: name -> build the module, run it on an input); a new layer, TTA method
or wrapper is one more entry. The TTA cases cover every method of ``mmnorm.tta.METHODS``.
"""
import copy
import os
import os.path as osp
import sys
from typing import Any, Callable, Dict, List, NamedTuple

import pytest
import torch
import torch.nn as nn
from conftest import REPO
from layer_cases import LAYERS, SPLIT_LAYERS
from test_tta import K, make_net
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._device import _device_constructors
from torch.utils._python_dispatch import TorchDispatchMode

from mmnorm import tta
from mmnorm.models import whitening
from mmnorm.models.norms import AdaBN, domain_split
from mmnorm.models.whitening import instance_covariance, instance_standardize, pair_variance
from mmnorm.recalibration import recalibrate_bn

MMNORM_DIR = osp.join(REPO, 'mmnorm') + os.sep
TORCH_DIR = osp.dirname(torch.__file__) + os.sep
FACTORIES = _device_constructors() | {torch.from_numpy}
HOST_ACCEPTED = {torch.Tensor.copy_, torch.Tensor.__getitem__, torch.Tensor.__setitem__}
LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)


def call_site() -> str:
    """``file:line`` of the innermost frame outside torch (the code that called torch)."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH_DIR)
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return '?' if frame is None else f'{frame.f_code.co_filename}:{frame.f_lineno}'


def tensors(tree) -> List[torch.Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


class DeviceFollowing(TorchFunctionMode):
    """Records mmnorm calls that combine a host tensor (made without a device) with a tensor of
    the input's device."""

    def __init__(self):
        super().__init__()
        self.host: Dict[int, torch.Tensor] = {}  # id -> tensor (kept alive: ids stay unique)
        self.violations: List[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        site = call_site()
        ours = site.startswith(MMNORM_DIR)
        inputs = tensors((args, kwargs))
        host_in = [t for t in inputs if id(t) in self.host]
        if func in FACTORIES:
            host = ours and kwargs.get('device') is None
        elif func is torch.Tensor.cpu:
            host = True
        elif func in (torch.Tensor.to, torch.Tensor.cuda):
            moved = func is torch.Tensor.cuda or 'device' in kwargs or any(
                isinstance(a, (torch.device, str, int, torch.Tensor)) for a in args[1:])
            host = not moved and bool(host_in)
        else:
            device_in = [t for t in inputs if id(t) not in self.host]
            mixed = [tuple(t.shape) for t in host_in if t.dim() > 0]
            if ours and mixed and device_in and func not in HOST_ACCEPTED:
                self.violations.append(f'{site}: {getattr(func, "__name__", func)} combines '
                                       f'host tensors {mixed} with tensors of the input device')
            host = bool(host_in) and not device_in
        if host:
            self.host.update((id(t), t) for t in tensors(out))
        elif func in (torch.Tensor.to, torch.Tensor.cuda):
            for t in tensors(out):  # on the CPU ``.to(x.device)`` returns the host tensor itself
                self.host.pop(id(t), None)
        return out


class DtypeFollowing(TorchDispatchMode):
    """Records mmnorm calls where a float32 / half tensor meets float64 data or float64 data is
    cast down (the case runs entirely in float64)."""

    def __init__(self):
        super().__init__()
        self.violations: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        floats_in = [t for t in tensors((args, kwargs)) if t.is_floating_point()]
        floats_out = [t for t in tensors(out) if t.is_floating_point()]
        low_in = [t.dtype for t in floats_in if t.dtype in LOW_PRECISION]
        wide = any(t.dtype == torch.float64 for t in floats_in + floats_out)
        down = (
            any(t.dtype == torch.float64 for t in floats_in)
            and any(t.dtype in LOW_PRECISION for t in floats_out))
        if (low_in and wide) or down:
            site = call_site()
            if site.startswith(MMNORM_DIR):
                self.violations.append(f'{site}: {func} mixes {low_in} with float64'
                                       if low_in else f'{site}: {func} casts float64 down')
        return out


class Case(NamedTuple):
    """``build()`` makes the module (CPU, float32), ``run(module, x)`` exercises it on ``x``
    ``(4, channels, H, W)``; ``autocast``: also watched under bf16 autocast (the layers' deliberate
    float32 / float64 statistics must still follow the input's device)."""
    build: Callable[[], nn.Module]
    run: Callable[[nn.Module, torch.Tensor], Any]
    channels: int = 8
    autocast: bool = False


def train_forward(split=None):
    """Train-mode forward (inside a declared split) and a backward through the output."""

    def run(module, x):
        module.train()
        x = x.clone().requires_grad_()
        if split is None:
            y = module(x)
        else:
            with domain_split(module, split):
                y = module(x)
        y.square().sum().backward()
        module.eval()
        return module(x)

    return run


def adabn_test_mode(mode):

    def build():
        return AdaBN(8, test_mode=mode)

    return build


def adapter_case(method):
    """``TestTimeAdapter`` on the test suite's small BN segmentation net: two batches."""

    def build():
        return make_net('BN')

    def run(net, x):
        options = dict(fisher_loader=[x[:2]]) if method == 'eata' else {}  # EATA's Fisher pass
        adapter = tta.TestTimeAdapter(net, method, num_classes=K, logger=None, **options)
        for batch in (x, x.flip(0) * 0.5):
            adapter.adapt(batch)

    return Case(build, run, channels=3)


def recalibration_case(mode):

    def run(net, x):
        recalibrate_bn(net, [x, x.flip(0) * 0.5], mode=mode, progress=False, logger=None)
        return net(x)

    return Case(lambda: make_net('RN' if mode == 'one_pass' else 'PBN'), run, channels=3)


def whitening_case(kind):
    """An instance-whitening position (IW / IRW / ISW after its selection, SAW with its channel
    groups and classifier): forward, loss and backward."""

    def run(module, x):
        if kind == 'ISW':
            cov = instance_covariance(instance_standardize(x))
            module.select(pair_variance(cov, cov.flip(0)).mean(0))
        x = x.clone().requires_grad_()
        y = module(x)
        loss = module.loss(y) + y.square().mean()
        if kind == 'SAW':
            loss = loss + module.classifier_logits(y).square().mean()
        loss.backward()

    return Case(lambda: getattr(whitening, kind)(8), run)


def uda_case():
    """UDAEncoderDecoder (mmseg) with RN in the backbone: one loss + backward on a [source |
    target] batch (the inputs' dtype / device replace the preprocessor's)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    def build():
        cfg = Config.fromfile(osp.join(REPO, 'configs/_base_/models/deeplabv3plus_r18-mini-d8.py'))
        model = copy.deepcopy(cfg.model)
        model.type = 'UDAEncoderDecoder'
        model.backbone.norm_cfg = dict(type='RN', requires_grad=True)
        model.data_preprocessor.size = (16, 16)
        with DefaultScope.overwrite_default_scope('mmseg'):
            torch.manual_seed(0)
            return MODELS.build(model)

    def run(model, x):
        samples = []
        for i in range(x.shape[0]):
            sample = SegDataSample(
                metainfo=dict(img_shape=(16, 16), ori_shape=(16, 16), pad_shape=(16, 16)))
            sample.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, 16, 16)))
            samples.append(sample)
        model.train()
        half = x.shape[0] // 2
        losses = model(x, samples[:half], mode='loss', target_data_samples=samples[half:])
        sum(v for k, v in losses.items() if 'loss' in k).backward()

    return Case(build, run, channels=3)


CASES: Dict[str, Case] = {
    **{
        name: Case(factory, train_forward((2, 2) if name in SPLIT_LAYERS else None), autocast=True)
        for name, factory in LAYERS.items() if name != 'BN'
    },
    'AdaBN-batch': Case(adabn_test_mode('batch'), lambda m, x: m.eval()(x)),
    'AdaBN-blend': Case(adabn_test_mode('blend'), lambda m, x: m.eval()(x)),
    **{
        f'tta-{method}': adapter_case(method)
        for method in tta.METHODS
    },
    'recalibration-one_pass': recalibration_case('one_pass'),
    'recalibration-layerwise': recalibration_case('layerwise'),
    **{
        f'whitening-{kind}': whitening_case(kind)
        for kind in ('IW', 'IRW', 'ISW', 'SAW')
    },
    'uda-segmentor': uda_case(),
}


def make_input(case: Case, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (4, case.channels, 16, 16) if case.channels == 3 else (4, case.channels, 6, 7)
    return (torch.randn(shape, generator=g) * 2 + 1).to(dtype)


@pytest.mark.parametrize('name', list(CASES))
def test_tensors_follow_the_input(name):
    case = CASES[name]
    module = case.build()
    x = make_input(case)
    with DeviceFollowing() as device_mode:
        case.run(module, x)
    if case.autocast:
        module = case.build()
        with torch.autocast('cpu', dtype=torch.bfloat16), DeviceFollowing() as autocast_mode:
            case.run(module, x)
        device_mode.violations += autocast_mode.violations
    module = case.build().double()
    with DtypeFollowing() as dtype_mode:
        case.run(module, make_input(case, torch.float64))
    assert device_mode.violations + dtype_mode.violations == []


def test_the_recorders_see_fixed_devices_and_dtypes():
    """The recorders catch the two mistakes they look for (attributed to mmnorm code)."""
    from mmnorm.stats import chan_merge

    def fixed(x):  # a helper that creates its tensor on the default device and dtype
        return x + torch.ones(x.shape[-1])

    fixed.__code__ = fixed.__code__.replace(co_filename=MMNORM_DIR + 'fake.py')
    with DeviceFollowing() as device_mode:
        fixed(torch.randn(2, 3))
    assert len(device_mode.violations) == 1 and 'fake.py' in device_mode.violations[0]
    with DtypeFollowing() as dtype_mode:
        fixed(torch.randn(2, 3, dtype=torch.float64))
    assert len(dtype_mode.violations) == 1 and 'fake.py' in dtype_mode.violations[0]
    with DeviceFollowing() as device_mode, DtypeFollowing() as dtype_mode:
        chan_merge(2, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), 3,
                   torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert device_mode.violations == [] and dtype_mode.violations == []
