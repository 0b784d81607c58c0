"""Speed and exactness of ``mmnorm.recalibrate_bn`` against a plain forward,
``torch.optim.swa_utils.update_bn``, the mean-of-per-batch-variances estimator and an EMA.

    python tools/benchmark_recalibration.py [--batches 8 4 8 2 8 6] [--size 96] [--repeats 5]
    [--threads 2]
                                            [--out docs/adabn.md]

Model: mmdet's ResNet-18 (``init_cfg=None``, BN statistics set to a "source" state). Data: batches
of unequal sizes whose brightness drifts from batch to batch (so the between-batch variance term
matters).

Timing (median of ``--repeats``; all with ``torch.no_grad``): an inference forward (BN in eval
    mode), a forward
with BN in train mode (the forward any one-pass BN-statistics estimator runs), ``recalibrate_bn``
(one pass and layerwise) and ``update_bn``. Statistics error, against the float64 closed form (mean
/ unbiased variance of ``torch.cat`` of each layer's input, produced by torch's train-mode BN on the
same batches in float64): ``recalibrate_bn``, ``update_bn`` (cumulative average of per-batch
statistics), the batch-count-weighted mean of per-batch variances (mmpretrain-style) and an EMA with
momentum 0.1 (Dassl-style). Reported: the largest relative error of a variance and the largest mean
error in units of the channel's standard deviation, over all layers and channels. ``--out`` replaces
the section between ``<!-- benchmark:start -->`` and ``<!-- benchmark:end -->``.
"""
import argparse
import copy
import os
import platform
import re
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmnorm_tools.timing import round_robin
from torch.nn.modules.batchnorm import _BatchNorm

from mmnorm import recalibrate_bn

Stats = Dict[str, Tuple[torch.Tensor, torch.Tensor]]


def build_model(seed: int = 0) -> nn.Module:
    from mmdet.models.backbones import ResNet
    torch.manual_seed(seed)
    model = ResNet(depth=18, norm_eval=False, init_cfg=None, out_indices=(3, ))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()  # (mmdet's ResNet.train() returns None)
    return model


def make_batches(sizes: List[int], size: int, seed: int = 0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n, 3, size, size, generator=g) * (0.8 + 0.1 * i) + 0.3 * i
        for i, n in enumerate(sizes)
    ]


def bn_layers(model: nn.Module) -> Dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}


def closed_form(model: nn.Module, batches: List[torch.Tensor]) -> Stats:
    """float64 mean / unbiased variance of every BN input over all batches (``torch.cat`` of the
    float32 features torch's own train-mode BN produces on these batches, reduced once in
    float64)."""
    ref = copy.deepcopy(model)
    layers = bn_layers(ref)
    feats = {n: [] for n in layers}
    for n, m in layers.items():
        m.register_forward_pre_hook(lambda mod, inp, n=n: feats[n].append(inp[0]))
        m.train()
    with torch.no_grad():
        for x in batches:
            ref(x)
    cat = {n: torch.cat(f).double() for n, f in feats.items()}
    return {n: (x.mean((0, 2, 3)), x.var((0, 2, 3))) for n, x in cat.items()}


def read_stats(model: nn.Module) -> Stats:
    return {
        n: (m.running_mean.double().clone(), m.running_var.double().clone())
        for n, m in bn_layers(model).items()
    }


def errors(est: Stats, ref: Stats) -> Tuple[float, float]:
    """(max relative variance error, max |mean error| / std) over all layers and channels."""
    var_err = max(((est[n][1] - ref[n][1]).abs() / ref[n][1]).max().item() for n in ref)
    mean_err = max(((est[n][0] - ref[n][0]).abs() / ref[n][1].sqrt()).max().item() for n in ref)
    return var_err, mean_err


def mean_of_variances(model: nn.Module, batches: List[torch.Tensor]) -> Stats:
    """Per-batch statistics averaged with batch-size weights, dropping the between-batch variance
    term."""
    m = copy.deepcopy(model)
    layers = bn_layers(m)
    acc = {n: [] for n in layers}
    for n, layer in layers.items():
        layer.register_forward_pre_hook(lambda mod, inp, n=n: acc[n].append((inp[0].shape[
            0], *reversed(torch.var_mean(inp[0].double(), dim=(0, 2, 3), unbiased=True)))))
        layer.train()
    with torch.no_grad():
        for x in batches:
            m(x)
    total = sum(x.shape[0] for x in batches)
    return {
        n: (sum(k * mu for k, mu, _ in v) / total, sum(k * var for k, _, var in v) / total)
        for n, v in acc.items()
    }


def ema(model: nn.Module, batches: List[torch.Tensor], momentum: float = 0.1) -> Stats:
    m = copy.deepcopy(model)
    for layer in bn_layers(m).values():
        layer.momentum = momentum
        layer.train()
    with torch.no_grad():
        for x in batches:
            m(x)
    return read_stats(m)


def timed(fns: Dict[str, Callable[[], object]],
          repeats: Dict[str, int]) -> Dict[str, Tuple[float, float]]:
    """Median ``(wall seconds, process CPU seconds)`` per function, timed round-robin (CPU time,
    all threads of this process, is the steadier measure on a shared machine)."""
    times = round_robin(fns, repeats, clocks=('wall', 'cpu'))

    def median(values):
        return sorted(values)[len(values) // 2]

    return {
        name: (median([w for w, _ in t]), median([c for _, c in t]))
        for name, t in times.items()
    }


def run(sizes: List[int], size: int, repeats: int) -> dict:
    load = os.getloadavg()[
        0]  # other jobs on the machine: the timings mean little when it exceeds the threads
    model = build_model()
    batches = make_batches(sizes, size)
    ref = closed_form(model, batches)

    def forward(bn_train):
        m = copy.deepcopy(model)
        for layer in bn_layers(m).values():
            layer.train(bn_train)

        def go():
            with torch.no_grad():
                for x in batches:
                    m(x)

        return go

    def recal(mode):
        m = copy.deepcopy(model)  # recalibrating an already recalibrated model is the same work
        return lambda: recalibrate_bn(m, batches, mode=mode, progress=False, logger=None)

    swa_model = copy.deepcopy(model)
    swa_model.train()
    fns = dict(
        forward_eval=forward(False),
        forward_train=forward(True),
        one_pass=recal('one_pass'),
        update_bn=lambda: torch.optim.swa_utils.update_bn(batches, swa_model),
        layerwise=recal('layerwise'))
    times = timed(
        fns, {name: (max(1, repeats // 2) if name == 'layerwise' else repeats)
              for name in fns})
    m = copy.deepcopy(model)
    recalibrate_bn(m, batches, progress=False, logger=None)
    swa_model = copy.deepcopy(model)
    swa_model.train()
    torch.optim.swa_utils.update_bn(batches, swa_model)
    errs = {
        'mmnorm recalibrate_bn (one pass)': errors(read_stats(m), ref),
        'torch update_bn (average of per-batch stats)': errors(read_stats(swa_model), ref),
        'mean of per-batch variances (size-weighted)':
        errors(mean_of_variances(model, batches), ref),
        'EMA, momentum 0.1': errors(ema(model, batches), ref)
    }
    return dict(times=times, errors=errs, layers=len(ref), samples=sum(sizes), load=load)


def to_markdown(res: dict, sizes: List[int], size: int, repeats: int) -> str:
    t = res['times']
    machine = f'{platform.processor() or platform.machine()}, torch {torch.__version__}, ' \
              f'{torch.get_num_threads()} threads, CPU'
    lines = [
        f'Machine: {machine}, load average {res["load"]:.2f} before the run; mmdet ResNet-18, '
        f'{res["layers"]} BN layers, batches of {sizes} images at {size}x{size} ({res["samples"]} '
        f'samples); median of {repeats} '
        'runs.', '', '| pass over the batches (no grad) | wall s | CPU s | × eval forward (CPU) | '
        '× train-mode-BN forward (CPU) | × train-mode-BN forward (wall) |',
        '|---|---:|---:|---:|---:|---:|'
    ]
    names = dict(
        forward_eval='inference forward (BN eval)',
        forward_train='forward with BN in train mode',
        one_pass='`recalibrate_bn` one pass',
        update_bn='`torch.optim.swa_utils.update_bn`',
        layerwise='`recalibrate_bn` layerwise')
    (_, eval_cpu), (train_wall, train_cpu) = t['forward_eval'], t['forward_train']
    for key, label in names.items():
        wall, cpu = t[key]
        lines.append(
            f'| {label} | {wall:.3f} | {cpu:.3f} | {cpu / eval_cpu:.2f} | {cpu / train_cpu:.2f} | '
            f'{wall / train_wall:.2f} |')
    lines += [
        '', '| estimator | max rel. error of running_var | max mean error / std |',
        '|---|---:|---:|'
    ]
    for label, (var_err, mean_err) in res['errors'].items():
        lines.append(f'| {label} | {var_err:.2e} | {mean_err:.2e} |')
    return '\n'.join(lines) + '\n'


SECTION = ('<!-- benchmark:start -->', '<!-- benchmark:end -->')


def section_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot take the benchmark section (None: it can)."""
    if not os.path.isfile(path):
        return (f'--out {path!r} is not a file; give a Markdown file with a '
                f'{SECTION[0]} ... {SECTION[1]} section')
    with open(path) as f:
        doc = f.read()
    if SECTION[0] not in doc or SECTION[1] not in doc:
        return (f'--out {path!r} has no {SECTION[0]} ... {SECTION[1]} section to fill; '
                'add the two markers')
    return None


def write_section(path: str, text: str) -> None:
    problem = section_problem(path)
    if problem:
        raise ValueError(problem)
    with open(path) as f:
        doc = f.read()
    start, end = SECTION
    doc = re.sub(
        f'{re.escape(start)}.*?{re.escape(end)}',
        lambda _: f'{start}\n{text}{end}',
        doc,
        flags=re.S)
    with open(path, 'w') as f:
        f.write(doc)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--batches', nargs='+', type=int, default=[8, 4, 8, 2, 8, 6], help='batch sizes')
    parser.add_argument('--size', type=int, default=96, help='image side')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument(
        '--out', help='Markdown file with a benchmark section to fill (e.g. docs/adabn.md)')
    args = parser.parse_args(argv)
    if any(b <= 1 for b in args.batches):
        parser.error(f'batch sizes must be > 1 (train-mode BN), got {args.batches}')
    if args.out and section_problem(args.out):  # checked before minutes of timing, not after
        parser.error(section_problem(args.out))
    torch.set_num_threads(args.threads)
    res = run(args.batches, args.size, args.repeats)
    text = to_markdown(res, args.batches, args.size, args.repeats)
    print(text)
    if args.out:
        write_section(args.out, text)
    return res


if __name__ == '__main__':
    main()
