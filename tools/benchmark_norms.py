"""Speed / memory of every mmnorm norm layer relative to ``nn.BatchNorm2d``.

    python tools/benchmark_norms.py [--shapes 8x256x64x64 ...] [--repeats 20] [--out docs/benchmarks.md]

Each case builds a layer for a channel count, feeds it an input of the given shape (``(N, C, H, W)``) and times
train-mode forward+backward and eval-mode forward; the ratio to BN on the same input is reported. Norm families add
their entries to ``CASES`` below (a name -> ``Case``). Peak memory is the autograd-saved tensor bytes of one
train-mode forward (CPU: measured with ``torch.autograd.graph.saved_tensors_hooks``).
"""
import argparse
import contextlib
import os.path as osp
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmnorm.models.norms import IBN
from mmnorm.models.norms.pbn import PBN, sample_pbn_plan
from mmnorm.models.norms.domain import domain_split
from mmnorm.models.norms.rn import RN
from mmnorm.models.norms.adabn import AdaBN

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tests'))
from references import pbn_patch_loop  # noqa: E402  (the per-patch loop oracle of the tests)

Shape = Tuple[int, int, int, int]


class PBNLoop(PBN):
    """``PBN`` whose training forward is :func:`pbn_patch_loop` (benchmark baseline only)."""

    def forward(self, x):
        if not (self.training and self.bn.training):
            return self.bn(x)
        self.bn.num_batches_tracked.add_(1)
        return pbn_patch_loop(x, self, sample_pbn_plan(x.shape[1], x.shape[2], x.shape[3], self.p))


@dataclass
class Case:
    """One benchmarked layer.

    Attributes:
        build: ``build(num_channels) -> nn.Module``.
        context: ``context(module, x) -> context manager`` wrapping each forward (e.g. a domain-split declaration);
            None for a plain call.
        shapes: Shapes named in the layer's issue, benchmarked besides the common ``--shapes``.
    """
    build: Callable[[int], nn.Module]
    context: Optional[Callable[[nn.Module, torch.Tensor], ContextManager]] = None
    shapes: Sequence[Shape] = field(default_factory=tuple)


CASES: Dict[str, Case] = {
    'BN': Case(build=lambda c: nn.BatchNorm2d(c)),
    # AdaBN (issue 3): an undeclared batch (trains exactly like BN) and a declared [source | target] split
    # (each half normalised with / updating its own domain's statistics).
    'AdaBN': Case(build=lambda c: AdaBN(c)),
    'AdaBN-split': Case(build=lambda c: AdaBN(c),
                        context=lambda m, x: domain_split(m, (x.shape[0] // 2, x.shape[0] - x.shape[0] // 2))),
    # PBN (issue 5): the released random-view algorithm, the deterministic grid variant and the per-patch loop.
    'PBN': Case(build=lambda c: PBN(c)),
    'PBN-fixed': Case(build=lambda c: PBN(c, mode='fixed', grid=(2, 2), lam=0.5)),
    'PBN-loop': Case(build=lambda c: PBNLoop(c)),
    # RN (issue 6): the [source | target] split declared as the UDA wrappers do (first half source).
    'RN': Case(build=lambda c: RN(c),
               context=lambda m, x: domain_split(m, (x.shape[0] // 2, x.shape[0] - x.shape[0] // 2)),
               shapes=[(8, 256, 64, 64), (8, 1024, 32, 32)]),
    # IBN (issue 4); (8, 64, 56, 56): the IBN-a bn1 of ResNet-50 stage 1 at 224x224.
    'IBN': Case(build=lambda c: IBN(c, ratio=0.5), shapes=[(8, 64, 56, 56)]),
    'IBN-0.25': Case(build=lambda c: IBN(c, ratio=0.25), shapes=[(8, 64, 56, 56)]),
    'IBN-0.75': Case(build=lambda c: IBN(c, ratio=0.75), shapes=[(8, 64, 56, 56)]),
}


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(step: Callable[[], None], repeats: int, warmup: int) -> float:
    """Median wall time of ``step()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        step()
        _sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def time_case(case: Case, shape: Shape, repeats: int, device: str) -> Dict[str, float]:
    """Median seconds of train fwd+bwd and eval fwd, plus autograd-saved MiB of one train forward."""
    torch.manual_seed(0)
    module = case.build(shape[1]).to(device)
    x = torch.randn(*shape, device=device, requires_grad=True)
    ctx = case.context or (lambda m, inp: contextlib.nullcontext())

    def train_step():
        with ctx(module, x):
            y = module(x)
        y.sum().backward()

    def eval_step():
        with torch.no_grad(), ctx(module, x):
            module(x)

    results = {}
    for mode, step in (('train', train_step), ('eval', eval_step)):
        module.train(mode == 'train')
        results[mode] = median_seconds(step, repeats, warmup=3)
    module.train()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        with ctx(module, x):
            module(x)
    results['saved_mib'] = sum(saved) / 2**20
    return results


def run(names: List[str], shapes: List[Shape], repeats: int, device: str) -> List[dict]:
    rows = []
    for name in names:
        case = CASES[name]
        for shape in list(shapes) + [s for s in case.shapes if s not in shapes]:
            ref = time_case(CASES['BN'], shape, repeats, device)
            res = time_case(case, shape, repeats, device)
            rows.append(dict(norm=name, shape='x'.join(map(str, shape)), train_ms=res['train'] * 1e3,
                             eval_ms=res['eval'] * 1e3, train_ratio=res['train'] / ref['train'],
                             eval_ratio=res['eval'] / ref['eval'], saved_mib=res['saved_mib'],
                             saved_ratio=res['saved_mib'] / max(ref['saved_mib'], 1e-9)))
    return rows


# Goals (ratios to BN) from the norm issues; a case named 'X-...' falls under X's goal.
TRAIN_GOALS = {'AdaBN': 1.02, 'IBN': 1.10, 'RN': 1.30, 'PBN': 2.2}
EVAL_GOAL = 1.05
MODEL_GOALS = {'AdaBN': 1.10, 'IBN-a': 1.10, 'RN': 1.5, 'PBN': 1.5}


def _goal(table: Dict[str, float], name: str) -> Optional[float]:
    if name.endswith('-loop'):
        return None  # a reference implementation, not a layer
    return table.get(name, table.get(name.split('-')[0]))


def _verdict(ratio: float, goal: Optional[float]) -> str:
    if goal is None:
        return ''
    return f'≤ {goal:g} ✓' if ratio <= goal else f'≤ {goal:g} ✗ (+{100 * (ratio / goal - 1):.0f} %)'


def to_markdown(rows: List[dict], device: str, repeats: int) -> str:
    machine = f'{platform.processor() or platform.machine()}, torch {torch.__version__}, ' \
              f'{torch.get_num_threads()} threads, device {device}'
    lines = [f'Machine: {machine}; median of {repeats} runs.', '',
             '| norm | shape (N×C×H×W) | train fwd+bwd ms | × BN | goal | eval ms | × BN | goal | saved MiB | × BN |',
             '|---|---|---:|---:|---|---:|---:|---|---:|---:|']
    for r in rows:
        is_bn = r['norm'] == 'BN'
        train_goal = None if is_bn else _goal(TRAIN_GOALS, r['norm'])
        eval_goal = None if is_bn or r['norm'].endswith('-loop') else EVAL_GOAL
        lines.append(f"| {r['norm']} | {r['shape']} | {r['train_ms']:.2f} | {r['train_ratio']:.2f} | "
                     f"{_verdict(r['train_ratio'], train_goal)} | {r['eval_ms']:.2f} | {r['eval_ratio']:.2f} | "
                     f"{_verdict(r['eval_ratio'], eval_goal)} | {r['saved_mib']:.1f} | {r['saved_ratio']:.2f} |")
    return '\n'.join(lines) + '\n'


# Model level: DeepLabV3+ R50-D8 of the GTA5 -> Cityscapes baseline with each norm swapped into the backbone
# (IBN with the IBN-Net-a placement; RN and AdaBN on a declared [source | target] batch, as in UDA training).
MODEL_CONFIG = 'configs/baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py'
MODEL_NORMS = {
    'BN': dict(norm_cfg=dict(type='BN', requires_grad=True)),
    'AdaBN': dict(norm_cfg=dict(type='AdaBN', requires_grad=True)),
    'IBN-a': dict(type='IBNResNetV1c', ibn=dict(type='a'), norm_cfg=dict(type='BN', requires_grad=True)),
    'PBN': dict(norm_cfg=dict(type='PBN', requires_grad=True)),
    'RN': dict(norm_cfg=dict(type='RN', requires_grad=True)),
}


def time_model(norm: str, input_shape: Shape, repeats: int, device: str) -> float:
    """Median seconds of one DeepLabV3+ R50-D8 training iteration (forward, loss, backward, SGD step)."""
    import os.path as osp

    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    init_default_scope('mmseg')
    cfg = Config.fromfile(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), MODEL_CONFIG))
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.update(MODEL_NORMS[norm])
    for head in ('decode_head', 'auxiliary_head'):
        cfg.model[head].norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.data_preprocessor.size = input_shape[2:]
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    n, _, h, w = input_shape
    inputs = torch.randn(*input_shape, device=device)
    samples = []
    for _ in range(n):
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, h, w), device=device))
        samples.append(sample)
    split = (n // 2, n - n // 2) if norm in ('RN', 'AdaBN') else None

    def step():
        ctx = domain_split(model, split) if split else contextlib.nullcontext()
        with ctx:
            losses = model(inputs, samples, mode='loss')
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median_seconds(step, repeats, warmup=1)


def run_model(norms: List[str], input_shape: Shape, repeats: int, device: str) -> List[dict]:
    ref = time_model('BN', input_shape, repeats, device)
    rows = []
    for norm in norms:
        t = ref if norm == 'BN' else time_model(norm, input_shape, repeats, device)
        rows.append(dict(norm=norm, input='x'.join(map(str, input_shape)), iter_s=t, ratio=t / ref))
    return rows


def model_markdown(rows: List[dict], repeats: int) -> str:
    lines = [f'DeepLabV3+ R50-D8 ({MODEL_CONFIG}), one training iteration (forward, loss, backward, SGD step), '
             f'median of {repeats}; norm in the backbone, heads BN.', '',
             '| norm in backbone | input | s / iter | × BN | goal |', '|---|---|---:|---:|---|']
    for r in rows:
        goal = None if r['norm'] == 'BN' else MODEL_GOALS.get(r['norm'])
        lines.append(f"| {r['norm']} | {r['input']} | {r['iter_s']:.3f} | {r['ratio']:.2f} | "
                     f"{_verdict(r['ratio'], goal)} |")
    return '\n'.join(lines) + '\n'


def parse_shape(text: str) -> Shape:
    parts = tuple(int(p) for p in text.lower().split('x'))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f'shape must be NxCxHxW, got {text!r}')
    return parts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--norms', nargs='+', default=None, help=f'subset of {sorted(CASES)}')
    parser.add_argument('--shapes', nargs='+', type=parse_shape, default=[(8, 256, 64, 64)])
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--model', action='store_true',
                        help='also time a DeepLabV3+ R50 training iteration with each norm in the backbone')
    parser.add_argument('--model-input', type=parse_shape, default=(2, 3, 256, 256))
    parser.add_argument('--model-repeats', type=int, default=3)
    parser.add_argument('--out', help='write the Markdown table to this file')
    args = parser.parse_args(argv)
    names = args.norms or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f'unknown norms {unknown}; choose from {sorted(CASES)}')
    rows = run(names, args.shapes, args.repeats, args.device)
    text = to_markdown(rows, args.device, args.repeats)
    if args.model:
        model_rows = run_model(list(MODEL_NORMS), args.model_input, args.model_repeats, args.device)
        text += '\n' + model_markdown(model_rows, args.model_repeats)
        rows = rows + model_rows
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    return rows


if __name__ == '__main__':
    main()
