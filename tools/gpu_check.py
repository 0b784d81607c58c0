"""One-command GPU check of mmnorm: set-up on the GPU machine's image, CPU-vs-CUDA equality, speed
and memory, one nccl DDP step, and one markdown section for docs/benchmarks.md.

    python3 tools/gpu_check.py --setup [--wheels .gpu-wheels] [--venv .venv-gpucheck]
                               [--out DIR] [--budget-s 480] [--doc docs/benchmarks.md]
    .venv/bin/python tools/gpu_check.py --device cpu --small --out DIR    # the CPU dry run

Stages (each timed; ``DIR/gpu_check.md`` and ``DIR/gpu_check.json`` rewritten after each):

(a) ``--setup``: on an image with torch (CUDA) but no OpenMMLab stack and no network: a venv that
    sees the image's packages after its own (:func:`make_venv`), the wheels of
    ``requirements/gpu_check.txt`` from ``--wheels`` (``make gpu-wheels`` fetches them), mmcv built
    from its source tarball in the same folder by ``tools/build_mmcv_cuda.sh``
    (``TORCH_CUDA_ARCH_LIST=9.0``, ``MAX_JOBS`` = cores), mmnorm installed editable; then the
    script re-runs itself with that venv's python. A venv whose mmcv already imports, built for the
    same torch, is reused (safe to rerun).
(b) equality: every norm layer and perturbation module mmnorm registers (root ``MODELS``
    registry, plus the option variants of ``VARIANTS``), ``recalibrate_bn`` and every TTA method
    of ``mmnorm.tta.METHODS``, run on the CPU and on ``--device`` from the same weights, inputs and
    seed: outputs, gradients and statistics compared in float32 (tolerance ``FP32_TOL``) and with
    the device under bf16 autocast against the CPU in float32 (tolerance: :func:`compare`).
(c) speed / memory at ``--shape`` (2x3x512x1024): a DeepLabV3+ R50 training iteration per norm
    against BN (``benchmark_norms.run_model``), ``recalibrate_bn`` against train-mode forwards over
    the same batches, every TTA method against plain inference (``benchmark_tta``'s helpers), peak
    memory of each, and every layer eager vs ``torch.compile`` (``benchmark_norms.run_compile``).
    Parts that would overrun ``--budget-s`` are skipped and say so.
(d) one DDP training step per norm with mmengine's SyncBN conversion (nccl on CUDA; gloo on the
    CPU, where SyncBN cannot run and the conversion is skipped), launched by torchrun with
    ``--ddp-ranks`` processes (one by default: nccl refuses two ranks on one GPU), checked against
    the same step without DDP.
"""
import argparse
import contextlib
import copy
import datetime
import glob
import inspect
import json
import os
import os.path as osp
import platform
import re
import site
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FP32_TOL = 1e-4  # max |device - cpu| / max |cpu|, float32 on both
BF16_TOL = 5e-2  # device under bf16 autocast against the CPU in float32: at least this (compare())
# Option variants of registered layers, checked besides their defaults: name -> (type, kwargs).
VARIANTS = {
    'IBN-0.25': ('IBN', dict(ratio=0.25)),
    'PBN-fixed': ('PBN', dict(mode='fixed')),
}
SECTION = ('<!-- gpu-check:start -->', '<!-- gpu-check:end -->')
EQUALITY = ('equal mmcv ops', 'equal layers', 'equal recalibration', 'equal tta')  # (b)
Shape = Tuple[int, int, int, int]


def log(msg: str) -> None:
    print(f'[gpu_check {time.strftime("%H:%M:%S")}] {msg}', flush=True)


# ---------------------------------------------------------------------------------------------------
# (a) set-up
# ---------------------------------------------------------------------------------------------------
def required_wheels(wheels: str) -> Tuple[List[str], str]:
    """The wheel files for ``requirements/gpu_check.txt`` and mmcv's source tarball in ``wheels``;
    SystemExit naming what is missing."""
    if not osp.isdir(wheels):
        raise SystemExit(f'--wheels {wheels}: no such folder; fetch it with `make gpu-wheels` and '
                         'name it in the run tool\'s carry list')
    files, missing = [], []
    with open(osp.join(REPO, 'requirements', 'gpu_check.txt')) as f:
        pins = [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]
    for pin in pins:
        name, version = pin.split('==')
        found = glob.glob(osp.join(wheels, f'{name.replace("-", "_")}-{version}-*.whl'))
        files += found[:1]
        missing += [] if found else [pin]
    sdists = glob.glob(osp.join(wheels, 'mmcv-*.tar.gz'))
    if missing or not sdists:
        missing += [] if sdists else ['mmcv source tarball (mmcv-2.1.0.tar.gz)']
        raise SystemExit(f'--wheels {wheels} lacks {", ".join(missing)}; run `make gpu-wheels`')
    return files, sdists[0]


def run_step(cmd: List[str], **env) -> None:
    log('$ ' + ' '.join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO, env=dict(os.environ, **env))


def make_venv(venv: str) -> str:
    """A venv that sees this interpreter's packages (torch) after its own; its python.

    The image's python may itself be a venv, whose packages a new venv's ``--system-site-packages``
    would not see (that is the base interpreter's): a ``.pth`` file in the new venv's site-packages
    appends this interpreter's site-packages instead.
    """
    py = osp.join(venv, 'bin', 'python')
    if not osp.exists(py):
        run_step([sys.executable, '-m', 'venv', venv])
        purelib = subprocess.run(
            [py, '-c', "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True).stdout.strip()
        with open(osp.join(purelib, 'image-site-packages.pth'), 'w') as f:
            f.write('\n'.join(site.getsitepackages()) + '\n')
    return py


def setup(venv: str, wheels: str) -> Dict[str, float]:
    """Builds the stack in ``venv`` (see the module docstring); seconds per step."""
    files, sdist = required_wheels(wheels)
    os.environ.update(PIP_NO_INDEX='1', PIP_DISABLE_PIP_VERSION_CHECK='1')  # no network there
    seconds, start = {}, time.perf_counter()
    py = make_venv(venv)
    seconds['venv'] = time.perf_counter() - start
    start = time.perf_counter()
    run_step([py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps'] + files)
    seconds['wheels'] = time.perf_counter() - start
    start = time.perf_counter()
    stamp = osp.join(venv, '.mmcv-cuda-built-for')
    torch_version = subprocess.run([py, '-c', 'import torch; print(torch.__version__)'],
                                   check=True,
                                   capture_output=True,
                                   text=True).stdout.strip()
    built = osp.exists(stamp) and open(stamp).read() == torch_version and subprocess.run(
        [py, '-c', 'import mmcv._ext'], cwd='/', capture_output=True).returncode == 0
    if not built:
        run_step(
            ['bash', osp.join(REPO, 'tools', 'build_mmcv_cuda.sh'), py, sdist],
            TORCH_CUDA_ARCH_LIST=os.environ.get('TORCH_CUDA_ARCH_LIST', '9.0'),
            PATH=osp.dirname(sys.executable) + os.pathsep + os.environ['PATH'],  # ninja
            MAX_JOBS=os.environ.get('MAX_JOBS', str(os.cpu_count())))
        with open(stamp, 'w') as f:
            f.write(torch_version)
    seconds['mmcv build' if not built else 'mmcv (reused)'] = time.perf_counter() - start
    start = time.perf_counter()
    run_step([
        py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-build-isolation', '-e',
        REPO
    ])
    seconds['mmnorm'] = time.perf_counter() - start
    return seconds


# ---------------------------------------------------------------------------------------------------
# (b) CPU-vs-device equality
# ---------------------------------------------------------------------------------------------------
def layer_table() -> Dict[str, Callable[[int], nn.Module]]:
    """name -> ``build(num_channels)`` for every norm layer (first argument ``num_features``) and
    perturbation module (first argument ``p``, built with ``p=1.0``) that mmnorm registers in the
    root ``MODELS`` registry, plus ``VARIANTS``."""
    from mmengine.registry import MODELS

    import mmnorm  # noqa: F401  (registers the layers)
    table = {}
    for name, cls in sorted(MODELS.module_dict.items()):
        if not cls.__module__.startswith('mmnorm.models.'):
            continue
        first = list(inspect.signature(cls.__init__).parameters)[1]
        if first == 'num_features':
            table[name] = (lambda c, cls=cls: cls(c))
        elif first == 'p':
            table[name] = (lambda c, cls=cls: cls(p=1.0))
    for name, (base, kwargs) in VARIANTS.items():
        cls = MODELS.get(base)
        table[name] = (lambda c, cls=cls, kwargs=kwargs: cls(c, **kwargs))
    return table


def split_context(module: nn.Module, x: torch.Tensor):
    """A [source | target] half split declared on domain-aware layers (RN, AdaBN), as UDA does
    (``module`` or a child: ``torch.compile`` wraps the layer)."""
    from mmnorm.models.norms import DomainAwareMixin, domain_split
    if any(isinstance(m, DomainAwareMixin) for m in module.modules()):
        return domain_split(module, (x.shape[0] // 2, x.shape[0] - x.shape[0] // 2))
    return contextlib.nullcontext()


def autocast(device: str, bf16: bool):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)


def relative_error(results: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor]) -> float:
    """max over the named tensors of ``max |a - b| / max |b|``, on the CPU in float64."""
    worst = 0.0
    for key, ref in reference.items():
        a, b = results[key].detach().cpu().double(), ref.detach().cpu().double()
        worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)))
    return worst


def layer_pass(module: nn.Module, x: torch.Tensor, g: torch.Tensor, train: bool, device: str,
               bf16: bool) -> Dict[str, torch.Tensor]:
    """One forward (and, in train mode, backward of ``(y * g).sum()``) of a copy of ``module`` on
    ``device``: the output, input / parameter gradients and the buffers after it."""
    module = copy.deepcopy(module).to(device).train(train)
    x = x.to(device).requires_grad_(train)
    torch.manual_seed(0)  # the layers draw their random numbers on the CPU: same on every device
    with autocast(device, bf16), split_context(module, x):
        y = module(x)
    out = {'output': y.float()}
    if train:
        (y.float() * g.to(device)).sum().backward()
        out['input grad'] = x.grad
        grads = {f'grad {n}': p.grad for n, p in module.named_parameters() if p.grad is not None}
        out.update(grads)
    out.update({n: b for n, b in module.named_buffers() if b.is_floating_point()})
    return out


def check_layers(device: str, shape: Shape) -> List[dict]:
    rows = []
    for name, build in layer_table().items():
        torch.manual_seed(0)
        module = build(shape[1])
        x, g = torch.randn(*shape), torch.randn(*shape)
        for train in (True, False):
            rows += compare('layer', name, 'train fwd+bwd' if train else 'eval fwd', device,
                            lambda dev, bf16: layer_pass(module, x, g, train, dev, bf16))
    return rows


def compare(kind: str, name: str, what: str, device: str,
            run: Callable[[str, bool], Dict[str, torch.Tensor]]) -> List[dict]:
    """Two rows: ``run(device, False)`` against ``run('cpu', False)`` (float32, ``FP32_TOL``), and
    ``run(device, True)`` (bf16 autocast) against the same CPU float32 reference, allowed
    ``max(BF16_TOL, 2 x`` the CPU's own bf16 autocast error``)``: bf16 through a deep model drifts
    by itself (a ResNet-18's BN statistics by tens of percent), the device must not add to it."""
    ref = run('cpu', False)
    cpu_bf16 = relative_error(run('cpu', True), ref)
    dev_bf16 = cpu_bf16 if device == 'cpu' else relative_error(run(device, True), ref)
    return [
        row(kind, name, what, 'float32', relative_error(run(device, False), ref), FP32_TOL),
        row(kind, name, what, 'bf16 autocast', dev_bf16, max(BF16_TOL, 2 * cpu_bf16), cpu_bf16)
    ]


def row(kind: str,
        name: str,
        what: str,
        dtype: str,
        err: float,
        tol: float,
        cpu_bf16: Optional[float] = None) -> dict:
    return dict(
        kind=kind,
        name=name,
        what=what,
        dtype=dtype,
        error=err,
        tolerance=tol,
        cpu_bf16_error=cpu_bf16,
        ok=bool(err <= tol))


def check_recalibration(device: str) -> List[dict]:
    """``recalibrate_bn`` of mmdet's ResNet-18 (benchmark_recalibration's model and drifting
    batches): the running statistics written on the CPU and on the device."""
    import benchmark_recalibration as recal_bench

    from mmnorm import recalibrate_bn
    model = recal_bench.build_model()
    batches = recal_bench.make_batches([4, 2, 4], 32)

    def stats(dev, bf16):
        m = copy.deepcopy(model).to(dev)
        with autocast(dev, bf16):
            recalibrate_bn(m, [b.to(dev) for b in batches], progress=False, logger=None)
        return {n: t for n, t in m.named_buffers() if t.is_floating_point()}

    return compare('recalibration', 'recalibrate_bn', 'running statistics', device, stats)


def check_mmcv_ops(device: str) -> List[dict]:
    """mmcv's compiled ops on the device (its CUDA kernels when built with them): ``nms`` kept
    boxes and ``roi_align`` features against the CPU kernels."""
    from mmcv.ops import nms, roi_align
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 30], 1)
    scores = torch.rand(200, generator=g)
    feats = torch.randn(2, 8, 32, 32, generator=g)
    rois = torch.cat([torch.randint(2, (16, 1), generator=g).float(), boxes[:16] / 4], 1)

    def run(dev):
        _, keep = nms(boxes.to(dev), scores.to(dev), 0.5)
        return {
            'nms kept': keep.float(),
            'roi_align': roi_align(feats.to(dev), rois.to(dev), (7, 7), 1.0, 2, 'avg', True)
        }

    ref, got = run('cpu'), run(device)
    err = relative_error(got,
                         ref) if got['nms kept'].shape == ref['nms kept'].shape else float('inf')
    return [row('mmcv op', 'nms, roi_align', 'kept boxes, features', 'float32', err, FP32_TOL)]


def tta_methods() -> Tuple[str, ...]:
    from mmnorm.tta import METHODS
    return tuple(METHODS)


def check_tta(device: str, batch_size: int = 4, size: Tuple[int, int] = (64, 128)) -> List[dict]:
    """Every TTA method on the demo segmentor (random weights), two batches of ``batch_size``
    images of ``size``: the second batch's logits (after the first batch's adaptation) and the
    model's parameters and buffers after both."""
    import benchmark_tta as tta_bench

    from mmnorm import TestTimeAdapter
    model = tta_bench.build(tta_bench.DEMO, 'cpu')
    batches = [tta_bench.make_batch(batch_size, list(size), seed=s) for s in (0, 1)]

    def adapt(method, dev, bf16):
        m = copy.deepcopy(model).to(dev)
        adapter = TestTimeAdapter(m, method, logger=None)
        torch.manual_seed(0)
        with autocast(dev, bf16):
            preds = [adapter.adapt(b) for b in batches][-1]
        out = {'logits': torch.stack([p.seg_logits.data.float() for p in preds])}
        out.update({n: t for n, t in m.state_dict().items() if t.is_floating_point()})
        return out

    rows = []
    for method in tta_methods():
        rows += compare('TTA', method, 'logits, parameters, buffers', device,
                        lambda dev, bf16: adapt(method, dev, bf16))
    return rows


# ---------------------------------------------------------------------------------------------------
# (c) speed and memory
# ---------------------------------------------------------------------------------------------------
class Budget:
    """Wall-clock budget of the whole check; parts that would overrun it are skipped."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, seconds: float, what: str, skipped: List[str]) -> bool:
        if self.left() >= seconds:
            return True
        skipped.append(f'{what} (needs ~{seconds:.0f} s, {max(self.left(), 0):.0f} s left)')
        log(f'skipped: {skipped[-1]}')
        return False


def segmentor(device: str):
    """The DeepLabV3+ R50-D8 of benchmark_norms.MODEL_CONFIG in eval mode, SyncBN reverted to BN."""
    import benchmark_norms as norm_bench
    import benchmark_tta as tta_bench
    from mmengine.model import revert_sync_batchnorm
    return revert_sync_batchnorm(tta_bench.build(osp.join(REPO, norm_bench.MODEL_CONFIG), device))


def bench_models(device: str, shape: Shape, repeats: int) -> List[dict]:
    import benchmark_norms as norm_bench
    import benchmark_tta as tta_bench
    rows = norm_bench.run_model(list(norm_bench.MODEL_NORMS), shape, repeats, device)
    for r in rows:
        r['peak_mib'] = tta_bench.peak_bytes(
            norm_bench.model_step(r['norm'], shape, device), device) / 2**20
    return rows


def bench_recalibration(device: str, shape: Shape, repeats: int, num_batches: int = 4) -> dict:
    """``recalibrate_bn`` over ``num_batches`` batches of ``shape`` against the same forwards with
    BN in train mode (``torch.no_grad``): the floor of any one-pass recalibration."""
    import benchmark_tta as tta_bench
    from mmnorm_tools.timing import round_robin
    from torch.nn.modules.batchnorm import _BatchNorm

    from mmnorm import recalibrate_bn
    model = segmentor(device)
    batches = [tta_bench.make_batch(shape[0], list(shape[2:]), seed=s) for s in range(num_batches)]
    train_bn = copy.deepcopy(model)
    for m in train_bn.modules():
        if isinstance(m, _BatchNorm):
            m.train()

    def forwards():
        with torch.no_grad():
            for b in batches:
                data = train_bn.data_preprocessor(b, False)
                train_bn(data['inputs'], data['data_samples'], mode='tensor')

    calls = {
        'train-mode forwards': forwards,
        'recalibrate_bn': lambda: recalibrate_bn(model, batches, progress=False, logger=None)
    }
    times = round_robin(calls, repeats, device)
    out = {}
    for name, fn in calls.items():
        seconds = sorted(t for t, in times[name])[len(times[name]) // 2]
        out[name] = dict(seconds=seconds, peak_mib=tta_bench.peak_bytes(fn, device) / 2**20)
    return out


def bench_tta(device: str, shape: Shape, repeats: int) -> Dict[str, dict]:
    """Plain inference and every TTA method's ``adapt`` on one batch of ``shape``."""
    import benchmark_tta as tta_bench

    from mmnorm import TestTimeAdapter
    model = segmentor(device)
    batch = tta_bench.make_batch(shape[0], list(shape[2:]))

    def inference():
        with torch.no_grad():
            return model.test_step(batch)

    calls = {'inference': inference}
    for method in tta_methods():
        adapter = TestTimeAdapter(model, method, logger=None)
        calls[method] = (lambda a: (lambda: a.adapt(batch)))(adapter)
    seconds = tta_bench.median_seconds(calls, repeats, device, 'wall')
    return {
        name: dict(seconds=seconds[name][0], peak_mib=tta_bench.peak_bytes(fn, device) / 2**20)
        for name, fn in calls.items()
    }


def bench_compile(device: str, shape: Shape, repeats: int, names: List[str], budget: Budget,
                  skipped: List[str]) -> List[dict]:
    """Every layer of :func:`layer_table` eager vs ``torch.compile`` (benchmark_norms.run_compile,
    the layers added to its ``CASES``), while the budget lasts."""
    import benchmark_norms as norm_bench
    rows = []
    table = layer_table()
    for name in names or table:
        build = table[name]
        if not budget.allows(45, f'torch.compile {name}', skipped):
            continue
        norm_bench.CASES.setdefault(name, norm_bench.Case(build=build, context=split_context))
        rows += norm_bench.run_compile([name], shape, repeats, device)
    return rows


# ---------------------------------------------------------------------------------------------------
# (d) DDP step with SyncBN conversion
# ---------------------------------------------------------------------------------------------------
def ddp_worker(result_file: str, device_type: str, shape: Shape) -> None:
    """One rank (under torchrun): per norm, one training step of the DDP-wrapped, SyncBN-converted
    model and of an unwrapped copy on the same data; the loss and updated weights compared."""
    import benchmark_norms as norm_bench
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel, convert_sync_batchnorm

    from mmnorm.models.norms import domain_split
    cuda = device_type == 'cuda'
    dist.init_process_group('nccl' if cuda else 'gloo')
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = f'cuda:{local_rank}' if cuda else 'cpu'
    if cuda:
        torch.cuda.set_device(local_rank)
    rows = []
    for norm in norm_bench.MODEL_NORMS:
        model, inputs, samples = norm_bench.build_model(norm, shape, device)
        plain = copy.deepcopy(model)
        if cuda:  # torch's SyncBatchNorm runs on CUDA only
            model = convert_sync_batchnorm(model)
        synced = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        ddp = MMDistributedDataParallel(
            model, device_ids=[local_rank] if cuda else None, find_unused_parameters=True)
        n = shape[0]
        split = (n // 2, n - n // 2) if norm in ('RN', 'AdaBN') else None

        def step(net, inner):
            optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
            torch.manual_seed(0)
            with domain_split(inner, split) if split else contextlib.nullcontext():
                losses = net(inputs, samples, mode='loss')
            loss = sum(v for k, v in losses.items() if 'loss' in k)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.detach()

        start = time.perf_counter()
        loss = step(ddp, ddp.module)
        seconds = time.perf_counter() - start
        plain_loss = step(plain, plain)
        weights = dict(ddp.module.named_parameters())
        err = relative_error(weights, dict(plain.named_parameters()))
        rows.append(
            dict(
                norm=norm,
                syncbn=synced,
                loss=float(loss),
                plain_loss=float(plain_loss),
                loss_error=abs(float(loss) - float(plain_loss)) / abs(float(plain_loss)),
                weight_error=err,
                seconds=seconds,
                world_size=dist.get_world_size()))
    if dist.get_rank() == 0:
        with open(result_file, 'w') as f:
            json.dump(rows, f)
    dist.destroy_process_group()


def run_ddp(device: str, shape: Shape, ranks: int, workdir: str) -> List[dict]:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    result = osp.join(workdir, 'ddp.json')
    cmd = [
        sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={ranks}',
        f'--master_port={port}',
        osp.abspath(__file__), '--ddp-worker', result, '--device', device, '--ddp-shape',
        'x'.join(map(str, shape))
    ]
    run_step(cmd, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    with open(result) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------
# (e) markdown
# ---------------------------------------------------------------------------------------------------
def machine(device: str) -> str:
    name = torch.cuda.get_device_name(device) if device.startswith('cuda') else \
        platform.processor() or platform.machine()
    return (f'{name}, torch {torch.__version__} (CUDA {torch.version.cuda or "none"}), '
            f'{os.cpu_count()} CPU cores')


def to_markdown(res: dict) -> str:
    a = res['args']
    lines = [
        f'### GPU check, {res["date"]}: {res["machine"]}', '',
        f'`{res["command"]}`: {res["total_s"]:.0f} s in all.', ''
    ]
    if res.get('setup'):
        lines += [
            'Set-up from the carried wheels and mmcv source: ' +
            ', '.join(f'{k} {v:.0f} s' for k, v in res['setup'].items()) + '.', ''
        ]
    equality = [r for key in EQUALITY for r in res.get(key) or []]
    if equality:
        bad = [r for r in equality if not r['ok']]
        lines += [
            f'CPU vs {a["device"]} (same weights, inputs, seed; max |Δ| / max |CPU|; float32 '
            f'tolerance {FP32_TOL:g}; bf16 autocast on the device against the CPU in float32, '
            f'tolerance max({BF16_TOL:g}, 2 × the CPU\'s own bf16 error)): '
            f'{len(equality) - len(bad)} / {len(equality)} within.', '',
            '| kind | name | compared | dtype | error | CPU bf16 error | tolerance | ok |',
            '|---|---|---|---|---:|---:|---:|---|'
        ]
        lines += [
            f"| {r['kind']} | {r['name']} | {r['what']} | {r['dtype']} | {r['error']:.1e} | "
            f"{'' if r['cpu_bf16_error'] is None else format(r['cpu_bf16_error'], '.1e')} | "
            f"{r['tolerance']:.0e} | {'✓' if r['ok'] else '✗'} |" for r in equality
        ]
        lines.append('')
    shape = 'x'.join(map(str, a['shape']))
    if res.get('models'):
        lines += [
            f'DeepLabV3+ R50-D8 training iteration at {shape} (forward, loss, backward, SGD; '
            f'{a["repeats"]} interleaved pairs with BN, medians), peak memory of one iteration:',
            '', '| norm in backbone | s / iter | × BN | peak MiB |', '|---|---:|---:|---:|'
        ]
        lines += [
            f"| {r['norm']} | {r['iter_s']:.3f} | {r['ratio']:.2f} | {r['peak_mib']:.0f} |"
            for r in res['models']
        ]
        lines.append('')
    for key, title in (('recalibration', f'recalibrate_bn over 4 batches of {shape} against the '
                        'same forwards with BN in train mode'),
                       ('tta', f'TTA methods against plain inference, one batch of {shape}')):
        if res.get(key):
            base = next(iter(res[key].values()))
            lines += [
                f'{title} (median of {a["repeats"]}):', '', '| call | s | × first | peak MiB |',
                '|---|---:|---:|---:|'
            ]
            lines += [
                f"| {name} | {r['seconds']:.3f} | {r['seconds'] / base['seconds']:.2f} | "
                f"{r['peak_mib']:.0f} |" for name, r in res[key].items()
            ]
            lines.append('')
    if res.get('compile'):
        import benchmark_norms as norm_bench
        lines += [norm_bench.compile_markdown(res['compile'], a['device'], a['repeats'])]
    if res.get('ddp'):
        lines += [
            f'DDP ({res["ddp"][0]["world_size"]} rank(s), '
            f'{"nccl" if a["device"].startswith("cuda") else "gloo"}) training step at '
            f'{"x".join(map(str, a["ddp_shape"]))}, mmengine SyncBN conversion (CUDA only), '
            'against the same step without DDP:', '',
            '| norm in backbone | SyncBN layers | loss | rel. Δ loss | rel. Δ weights | s |',
            '|---|---:|---:|---:|---:|---:|'
        ]
        lines += [
            f"| {r['norm']} | {r['syncbn']} | {r['loss']:.4f} | {r['loss_error']:.1e} | "
            f"{r['weight_error']:.1e} | {r['seconds']:.2f} |" for r in res['ddp']
        ]
        lines.append('')
    if res.get('skipped'):
        lines += ['Skipped: ' + '; '.join(res['skipped']) + '.', '']
    return '\n'.join(lines)


def write_section(path: str, text: str) -> None:
    """Replaces the text between ``SECTION``'s markers in ``path``."""
    with open(path) as f:
        doc = f.read()
    pattern = re.compile(re.escape(SECTION[0]) + r'\n.*?' + re.escape(SECTION[1]), re.S)
    if not pattern.search(doc):
        raise SystemExit(f'{path} has no {SECTION[0]} ... {SECTION[1]} section')
    with open(path, 'w') as f:
        f.write(pattern.sub(lambda m: f'{SECTION[0]}\n{text}\n{SECTION[1]}', doc))


# ---------------------------------------------------------------------------------------------------
def parse_shape(text: str) -> Shape:
    parts = tuple(int(p) for p in text.lower().split('x'))
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f'shape must be NxCxHxW of positive ints, got {text!r}')
    return parts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda', help='cuda, cuda:N or cpu (the dry run)')
    parser.add_argument('--setup', action='store_true', help='(a): build the stack first')
    parser.add_argument('--wheels', default=osp.join(REPO, '.gpu-wheels'))
    parser.add_argument('--venv', default=osp.join(REPO, '.venv-gpucheck'))
    parser.add_argument('--setup-json', help=argparse.SUPPRESS)  # set-up times, from the re-run
    parser.add_argument('--small', action='store_true', help='tiny sizes (the CPU dry run)')
    parser.add_argument('--shape', type=parse_shape, default=None, help='default 2x3x512x1024')
    parser.add_argument('--ddp-shape', type=parse_shape, default=None, help='default 2x3x256x512')
    parser.add_argument('--ddp-ranks', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=None, help='default 5 (--small: 1)')
    parser.add_argument('--budget-s', type=float, default=480, help='wall-clock budget, seconds')
    parser.add_argument(
        '--stages',
        nargs='+',
        default=['equality', 'bench', 'ddp'],
        choices=['equality', 'bench', 'ddp'])
    parser.add_argument(
        '--out', default=os.environ.get('OUT') or osp.join(REPO, 'work_dirs', 'gpu_check'))
    parser.add_argument('--compile-layers', nargs='+', help='subset of the layers (default: all)')
    parser.add_argument('--doc', help='replace the gpu-check section of this markdown file')
    parser.add_argument(
        '--section-from',
        help='only put this gpu_check.md (brought back from the GPU machine) into --doc')
    parser.add_argument('--ddp-worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type not in ('cpu', 'cuda'):
        parser.error(f'--device must be cuda, cuda:N or cpu, got {args.device!r}')
    needs_cuda = dev.type == 'cuda' and not (args.setup or args.section_from)
    if needs_cuda and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available (torch {torch.__version__}); '
                     'use --device cpu for the dry run')
    if args.ddp_ranks < 1:
        parser.error(f'--ddp-ranks must be >= 1, got {args.ddp_ranks}')
    args.shape = args.shape or ((2, 3, 32, 64) if args.small else (2, 3, 512, 1024))
    args.ddp_shape = args.ddp_shape or ((2, 3, 32, 64) if args.small else (2, 3, 256, 512))
    args.repeats = args.repeats or (1 if args.small else 5)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.section_from:
        if not args.doc:
            raise SystemExit('--section-from needs --doc (the markdown file to write it into)')
        with open(args.section_from) as f:
            write_section(args.doc, f.read().rstrip('\n') + '\n')
        return {}
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, torch.device(args.device).type, args.ddp_shape)
        return {}
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    if args.setup:  # (a), then the rest with the venv's python
        seconds = setup(args.venv, args.wheels)
        with open(osp.join(args.out, 'setup.json'), 'w') as f:
            json.dump(seconds, f)
        argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != '--setup']
        budget = args.budget_s - (time.perf_counter() - started)
        cmd = [osp.join(args.venv, 'bin', 'python'),
               osp.abspath(__file__)] + argv + [
                   '--setup-json',
                   osp.join(args.out, 'setup.json'), '--budget-s', f'{budget:.0f}'
               ]
        raise SystemExit(subprocess.call(cmd, cwd=REPO))
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # benchmark_* and mmnorm_tools
    budget, device = Budget(args.budget_s), args.device
    res = dict(
        args=dict(vars(args)),
        skipped=[],
        date=datetime.date.today().isoformat(),
        machine=machine(device),
        command='python3 tools/gpu_check.py ' + ' '.join(sys.argv[1:] if argv is None else argv))
    if args.setup_json:
        with open(args.setup_json) as f:
            res['setup'] = json.load(f)
        res['command'] = re.sub(r' --setup-json \S+| --budget-s \S+', '', res['command'])

    def save():
        res['total_s'] = time.perf_counter() - started
        text = to_markdown(res)
        with open(osp.join(args.out, 'gpu_check.md'), 'w') as f:
            f.write(text)
        with open(osp.join(args.out, 'gpu_check.json'), 'w') as f:
            json.dump(res, f, indent=1, default=str)
        if args.doc:
            write_section(args.doc, text)

    def stage(name: str, seconds: float, fn: Callable[[], object]) -> None:
        if budget.allows(seconds, name, res['skipped']):
            log(f'{name} ...')
            start = time.perf_counter()
            try:
                res[name] = fn()
            except Exception as err:  # report and go on: one broken part must not hide the rest
                res['skipped'].append(f'{name} failed: {type(err).__name__}: {err}')
                log(f'FAILED {name}: {err!r}')
            log(f'{name}: {time.perf_counter() - start:.1f} s')
            save()

    small = (4, 8, 8, 8) if args.small else (4, 16, 16, 16)
    if 'equality' in args.stages:
        stage('equal mmcv ops', 2, lambda: check_mmcv_ops(device))
        stage('equal layers', 10, lambda: check_layers(device, small))
        stage('equal recalibration', 5, lambda: check_recalibration(device))
        stage('equal tta', 10, lambda: check_tta(device, *((2, (32, 64)) if args.small else ())))
    if 'ddp' in args.stages:
        stage('ddp', 30, lambda: run_ddp(device, args.ddp_shape, args.ddp_ranks, args.out))
    if 'bench' in args.stages:
        stage('models', 60, lambda: bench_models(device, args.shape, args.repeats))
        stage('recalibration', 30, lambda: bench_recalibration(device, args.shape, args.repeats))
        stage('tta', 30, lambda: bench_tta(device, args.shape, args.repeats))
        compile_shape = (2, 8, 8, 8) if args.small else (2, 256, 128, 256)

        def compile_rows():
            return bench_compile(device, compile_shape, args.repeats, args.compile_layers, budget,
                                 res['skipped'])

        stage('compile', 45, compile_rows)
    failed = [r for key in EQUALITY for r in res.get(key) or [] if not r['ok']]
    broken = [s for s in res['skipped'] if ' failed: ' in s]
    res['failures'] = len(failed) + len(broken)
    save()
    log(f'done in {time.perf_counter() - started:.0f} s; {len(failed)} equality failure(s), '
        f'{len(broken)} failed part(s), {len(res["skipped"]) - len(broken)} skipped; '
        f'{osp.join(args.out, "gpu_check.md")}')
    return res


if __name__ == '__main__':
    sys.exit(1 if main().get('failures') else 0)
