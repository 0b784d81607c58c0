"""Speed / memory of every mmnorm norm layer relative to ``nn.BatchNorm2d``.

    python tools/benchmark_norms.py [--shapes 8x256x64x64 ...] [--repeats 20] [--device cpu|cuda]
    [--threads T]
                                    [--model] [--compile] [--out docs/benchmarks.md]

Each case builds a layer for a channel count, feeds it an input of the given shape (``(N, C, H,
W)``) and times train-mode forward+backward and eval-mode forward against ``nn.BatchNorm2d`` on the
same input. The two are timed interleaved (BN, layer, BN, layer, ... with the order swapped every
pair), so that a loaded machine slows both alike; the reported ratio is the median of the per-pair
ratios. Norm families add their entries to ``CASES`` below (a name -> ``Case``). Memory is the
autograd-saved tensor bytes of one train-mode forward (measured with
``torch.autograd.graph.saved_tensors_hooks``, on any device). ``--model`` times a DeepLabV3+ R50
training iteration per norm the same way; ``--compile`` times each layer under ``torch.compile``
(default inductor) against eager.
"""
import argparse
import contextlib
import copy
import platform
import statistics
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmnorm_tools.pbn_loop import pbn_patch_loop
from mmnorm_tools.segmentor import MODEL_CONFIG, build_segmentor, random_batch, training_step
from mmnorm_tools.timing import paired_seconds, timed

from mmnorm.models.norms import IBN
from mmnorm.models.norms.adabn import AdaBN
from mmnorm.models.norms.domain import domain_split
from mmnorm.models.norms.pbn import PBN, sample_pbn_plan
from mmnorm.models.norms.rn import RN

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
        build: ``build(num_channels) -> nn.Module``. context: ``context(module, x) -> context
        manager`` wrapping each forward (e.g. a domain-split declaration);
            None for a plain call.
        shapes: Shapes named in the layer's issue, benchmarked besides the common ``--shapes``.
    """
    build: Callable[[int], nn.Module]
    context: Optional[Callable[[nn.Module, torch.Tensor], ContextManager]] = None
    shapes: Sequence[Shape] = field(default_factory=tuple)


CASES: Dict[str, Case] = {
    'BN':
    Case(build=lambda c: nn.BatchNorm2d(c)),
    # AdaBN: an undeclared batch (trains exactly like BN) and a declared [source | target] split
    # (each half normalised with / updating its own domain's statistics).
    'AdaBN':
    Case(build=lambda c: AdaBN(c)),
    'AdaBN-split':
    Case(
        build=lambda c: AdaBN(c),
        context=lambda m, x: domain_split(m, (x.shape[0] // 2, x.shape[0] - x.shape[0] // 2))),
    # PBN: the released random-view algorithm, the deterministic grid variant and the per-patch
    # loop.
    'PBN':
    Case(build=lambda c: PBN(c)),
    'PBN-fixed':
    Case(build=lambda c: PBN(c, mode='fixed', grid=(2, 2), lam=0.5)),
    'PBN-loop':
    Case(build=lambda c: PBNLoop(c)),
    # RN: the [source | target] split declared as the UDA wrappers do (first half source).
    'RN':
    Case(
        build=lambda c: RN(c),
        context=lambda m, x: domain_split(m, (x.shape[0] // 2, x.shape[0] - x.shape[0] // 2)),
        shapes=[(8, 256, 64, 64), (8, 1024, 32, 32)]),
    # IBN; (8, 64, 56, 56): the IBN-a bn1 of ResNet-50 stage 1 at 224x224.
    'IBN':
    Case(build=lambda c: IBN(c, ratio=0.5), shapes=[(8, 64, 56, 56)]),
    'IBN-0.25':
    Case(build=lambda c: IBN(c, ratio=0.25), shapes=[(8, 64, 56, 56)]),
    'IBN-0.75':
    Case(build=lambda c: IBN(c, ratio=0.75), shapes=[(8, 64, 56, 56)]),
}


def _steps(module: nn.Module, x: torch.Tensor, context) -> Dict[str, Callable[[], None]]:
    ctx = context or (lambda m, inp: contextlib.nullcontext())

    def train_step():
        with ctx(module, x):
            y = module(x)
        y.sum().backward()

    def eval_step():
        with torch.no_grad(), ctx(module, x):
            module(x)

    return dict(train=train_step, eval=eval_step)


def saved_mib(module: nn.Module, x: torch.Tensor, context) -> float:
    """Autograd-saved MiB of one train-mode forward."""
    ctx = context or (lambda m, inp: contextlib.nullcontext())
    saved = []
    module.train()
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        with ctx(module, x):
            module(x)
    return sum(saved) / 2**20


def time_case(case: Case, shape: Shape, repeats: int, device: str) -> Dict[str, float]:
    """The layer against ``nn.BatchNorm2d`` on the same input: median seconds of both and the
    median ratio, for train fwd+bwd (``train``, ``train_ref``, ``train_ratio``) and eval fwd
    (``eval...``), plus saved MiB of both."""
    torch.manual_seed(0)
    ref, module = CASES['BN'].build(shape[1]).to(device), case.build(shape[1]).to(device)
    x = torch.randn(*shape, device=device, requires_grad=True)
    ref_steps, steps = _steps(ref, x, None), _steps(module, x, case.context)
    results = {}
    for mode in ('train', 'eval'):
        ref.train(mode == 'train')
        module.train(mode == 'train')
        results[f'{mode}_ref'], results[mode], results[f'{mode}_ratio'] = paired_seconds(
            ref_steps[mode], steps[mode], repeats, warmup=3, device=device)
    results['saved_mib'] = saved_mib(module, x, case.context)
    results['saved_ref_mib'] = saved_mib(ref, x, None)
    return results


def run(names: List[str], shapes: List[Shape], repeats: int, device: str) -> List[dict]:
    rows = []
    for name in names:
        case = CASES[name]
        for shape in list(shapes) + [s for s in case.shapes if s not in shapes]:
            res = time_case(case, shape, repeats, device)
            rows.append(
                dict(
                    norm=name,
                    shape='x'.join(map(str, shape)),
                    train_ms=res['train'] * 1e3,
                    eval_ms=res['eval'] * 1e3,
                    train_ratio=res['train_ratio'],
                    eval_ratio=res['eval_ratio'],
                    saved_mib=res['saved_mib'],
                    saved_ratio=res['saved_mib'] / max(res['saved_ref_mib'], 1e-9)))
    return rows


# Goals (ratios to BN) from the norm issues; a case named 'X-...' falls under X's goal.
TRAIN_GOALS = {'AdaBN': 1.02, 'IBN': 1.10, 'RN': 1.30, 'PBN': 1.50}
EVAL_GOAL = 1.05
# IBN must reduce its instance half in eval (BN only applies stored statistics): ~1.25x is the
# memory-traffic limit.
IBN_EVAL_GOALS = {'8x64x56x56': 1.60}
IBN_EVAL_GOAL = 1.30
MODEL_GOALS = {'AdaBN': 1.10, 'IBN-a': 1.10, 'RN': 1.10, 'PBN': 1.10}


def _goal(table: Dict[str, float], name: str) -> Optional[float]:
    if name.endswith('-loop'):
        return None  # a reference implementation, not a layer
    return table.get(name, table.get(name.split('-')[0]))


def _eval_goal(name: str, shape: str) -> Optional[float]:
    if name == 'BN' or name.endswith('-loop'):
        return None
    if name.split('-')[0] == 'IBN':
        return IBN_EVAL_GOALS.get(shape, IBN_EVAL_GOAL)
    return EVAL_GOAL


def _verdict(ratio: float, goal: Optional[float]) -> str:
    if goal is None:
        return ''
    return f'≤ {goal:g} ✓' if ratio <= goal else f'≤ {goal:g} ✗ (+{100 * (ratio / goal - 1):.0f} %)'


def machine_line(device: str) -> str:
    name = torch.cuda.get_device_name(device) if str(device).startswith('cuda') else \
        platform.processor() or platform.machine()
    return f'{name}, torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}'


def to_markdown(rows: List[dict], device: str, repeats: int) -> str:
    lines = [
        f'Machine: {machine_line(device)}; {repeats} interleaved pairs, medians.', '',
        '| norm | shape (N×C×H×W) | train fwd+bwd ms | × BN | goal | eval ms | × BN | goal | '
        'saved MiB | × BN |', '|---|---|---:|---:|---|---:|---:|---|---:|---:|'
    ]
    for r in rows:
        train_goal = None if r['norm'] == 'BN' else _goal(TRAIN_GOALS, r['norm'])
        lines.append(
            f"| {r['norm']} | {r['shape']} | {r['train_ms']:.2f} | {r['train_ratio']:.2f} | "
            f"{_verdict(r['train_ratio'], train_goal)} | {r['eval_ms']:.2f} | "
            f"{r['eval_ratio']:.2f} | "
            f"{_verdict(r['eval_ratio'], _eval_goal(r['norm'], r['shape']))} | "
            f"{r['saved_mib']:.1f} | {r['saved_ratio']:.2f} |")
    return '\n'.join(lines) + '\n'


# Model level: DeepLabV3+ R50-D8 of the GTA5 -> Cityscapes baseline with each norm swapped into the
# backbone (IBN with the IBN-Net-a placement; RN and AdaBN on a declared [source | target] batch, as
# in UDA training).
MODEL_NORMS = {
    'BN': dict(norm_cfg=dict(type='BN', requires_grad=True)),
    'AdaBN': dict(norm_cfg=dict(type='AdaBN', requires_grad=True)),
    'IBN-a':
    dict(type='IBNResNetV1c', ibn=dict(type='a'), norm_cfg=dict(type='BN', requires_grad=True)),
    'PBN': dict(norm_cfg=dict(type='PBN', requires_grad=True)),
    'RN': dict(norm_cfg=dict(type='RN', requires_grad=True)),
}


def build_model(norm: str, input_shape: Shape, device: str) -> Tuple[nn.Module, torch.Tensor, list]:
    """The DeepLabV3+ R50-D8 segmentor with ``norm`` in the backbone (train mode, random weights),
    a random ``input_shape`` batch and its random labels: ``(model, inputs, data_samples)``."""
    model = build_segmentor(input_shape, device, dict(backbone=MODEL_NORMS[norm]))
    return (model, *random_batch(input_shape, device))


def model_step(norm: str, input_shape: Shape, device: str) -> Callable[[], None]:
    """One DeepLabV3+ R50-D8 training iteration (forward, loss, backward, SGD step) with ``norm``
    in the backbone."""
    model, inputs, samples = build_model(norm, input_shape, device)
    n = input_shape[0]
    split = (n // 2, n - n // 2) if norm in ('RN', 'AdaBN') else None
    context = (lambda: domain_split(model, split)) if split else contextlib.nullcontext
    return training_step(model, inputs, samples, lr=1e-3, context=context)


def run_model(norms: List[str], input_shape: Shape, repeats: int, device: str) -> List[dict]:
    """Each norm's iteration interleaved with the BN model's (built once)."""
    ref_step = model_step('BN', input_shape, device)
    rows, ref_times = [], []
    for norm in norms:
        if norm == 'BN':
            continue
        ref_s, t, ratio = paired_seconds(
            ref_step, model_step(norm, input_shape, device), repeats, warmup=1, device=device)
        ref_times.append(ref_s)
        rows.append(dict(norm=norm, input='x'.join(map(str, input_shape)), iter_s=t, ratio=ratio))
    if 'BN' in norms:
        ref_s = statistics.median(ref_times) if ref_times else paired_seconds(
            ref_step, ref_step, repeats, 1, device)[0]
        rows.insert(0,
                    dict(norm='BN', input='x'.join(map(str, input_shape)), iter_s=ref_s, ratio=1.0))
    return rows


def model_markdown(rows: List[dict], repeats: int) -> str:
    lines = [
        f'DeepLabV3+ R50-D8 ({MODEL_CONFIG}), one training iteration (forward, loss, backward, SGD '
        f'step), {repeats} interleaved pairs with the BN model, medians; norm in the backbone, '
        'heads BN.', '', '| norm in backbone | input | s / iter | × BN | goal |',
        '|---|---|---:|---:|---|'
    ]
    for r in rows:
        goal = None if r['norm'] == 'BN' else MODEL_GOALS.get(r['norm'])
        lines.append(f"| {r['norm']} | {r['input']} | {r['iter_s']:.3f} | {r['ratio']:.2f} | "
                     f"{_verdict(r['ratio'], goal)} |")
    return '\n'.join(lines) + '\n'


def run_compile(names: List[str], shape: Shape, repeats: int, device: str) -> List[dict]:
    """Each layer under ``torch.compile`` (default inductor backend) against the same layer
    eager, train fwd+bwd and eval fwd; the first compiled calls (compilation) are warm-up, not
    timed."""
    rows = []
    for name in names:
        case = CASES[name]
        torch.manual_seed(0)
        eager = case.build(shape[1]).to(device)
        compiled = torch.compile(copy.deepcopy(eager))
        x = torch.randn(*shape, device=device, requires_grad=True)
        eager_steps, compiled_steps = _steps(eager, x,
                                             case.context), _steps(compiled, x, case.context)
        row = dict(norm=name, shape='x'.join(map(str, shape)))
        for mode in ('train', 'eval'):
            eager.train(mode == 'train')
            compiled.train(mode == 'train')
            row[f'{mode}_compile_s'] = timed(compiled_steps[mode], device)
            _, row[f'{mode}_ms'], row[f'{mode}_ratio'] = paired_seconds(
                eager_steps[mode], compiled_steps[mode], repeats, warmup=2, device=device)
            row[f'{mode}_ms'] *= 1e3
        rows.append(row)
    return rows


def compile_markdown(rows: List[dict], device: str, repeats: int) -> str:
    lines = [
        f'torch.compile (inductor) / eager, {machine_line(device)}; {repeats} interleaved pairs, '
        'medians (first compiled call = compilation, not timed).', '',
        '| norm | shape (N×C×H×W) | train compiled ms | × eager | eval compiled ms | × eager | '
        'compile s (train + eval) |', '|---|---|---:|---:|---:|---:|---:|'
    ]
    for r in rows:
        lines.append(
            f"| {r['norm']} | {r['shape']} | {r['train_ms']:.2f} | {r['train_ratio']:.2f} | "
            f"{r['eval_ms']:.2f} | {r['eval_ratio']:.2f} | "
            f"{r['train_compile_s'] + r['eval_compile_s']:.0f} |")
    return '\n'.join(lines) + '\n'


def parse_shape(text: str) -> Shape:
    parts = tuple(int(p) for p in text.lower().split('x'))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f'shape must be NxCxHxW, got {text!r}')
    return parts


def check_device(parser: argparse.ArgumentParser, device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; a CUDA device that this torch build or machine lacks is a
    usage error."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        parser.error(f'--device must be cpu, cuda or cuda:N, got {device!r}')
    if dev.type not in ('cpu', 'cuda'):
        parser.error(f'--device must be cpu, cuda or cuda:N, got {device!r}')
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            parser.error(f'--device {device}: CUDA is not available (torch {torch.__version__}, '
                         f'CUDA build: {torch.version.cuda or "no"}); use --device cpu')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            parser.error(
                f'--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible')
    return str(dev)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--norms', nargs='+', default=None, help=f'subset of {sorted(CASES)}')
    parser.add_argument('--shapes', nargs='+', type=parse_shape, default=[(8, 256, 64, 64)])
    parser.add_argument(
        '--repeats', type=int, default=20, help='interleaved (BN, layer) pairs per measurement')
    parser.add_argument(
        '--device',
        default='cuda' if torch.cuda.is_available() else 'cpu',
        help='cpu, cuda or cuda:N (default: cuda when available)')
    parser.add_argument(
        '--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    parser.add_argument(
        '--model',
        action='store_true',
        help='also time a DeepLabV3+ R50 training iteration with each norm in the backbone')
    parser.add_argument('--model-input', type=parse_shape, default=(2, 3, 256, 256))
    parser.add_argument('--model-repeats', type=int, default=3)
    parser.add_argument(
        '--model-norms', nargs='+', default=None, help=f'subset of {list(MODEL_NORMS)}')
    parser.add_argument(
        '--compile',
        action='store_true',
        help='also time every layer under torch.compile against eager (--compile-shape)')
    parser.add_argument('--compile-shape', type=parse_shape, default=(8, 64, 56, 56))
    parser.add_argument('--out', help='write the Markdown table to this file')
    args = parser.parse_args(argv)
    device = check_device(parser, args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = args.norms or list(CASES)
    unknown = [n for n in names if n not in CASES
               ] + [n for n in args.model_norms or [] if n not in MODEL_NORMS]
    if unknown:
        parser.error(f'unknown norms {unknown}; choose from {sorted(CASES)} (--model-norms: '
                     f'{list(MODEL_NORMS)})')
    rows = run(names, args.shapes, args.repeats, device)
    text = to_markdown(rows, device, args.repeats)
    if args.model:
        model_rows = run_model(
            args.model_norms or list(MODEL_NORMS), args.model_input, args.model_repeats, device)
        text += '\n' + model_markdown(model_rows, args.model_repeats)
        rows = rows + model_rows
    if args.compile:
        compile_rows = run_compile([n for n in names if n != 'BN' or len(names) == 1],
                                   args.compile_shape, args.repeats, device)
        text += '\n' + compile_markdown(compile_rows, device, args.repeats)
        rows = rows + compile_rows
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    return rows


if __name__ == '__main__':
    main()
