"""Cost of online test-time adaptation against plain inference on the same model and batches.

    python tools/benchmark_tta.py [--config CONFIG | --model segformer-b0] [--batch-size 8]
                                  [--size 64 128] [--repeats 7] [--threads 2] [--device cpu|cuda]
                                  [--methods bn prior tent sar eata cotta cotta-noaug]
                                  [--clock cpu|wall] [--out docs/tta.md]

Model: an mmseg segmentor built from ``--config`` (default: the embedded demo's DeepLabV3+ on a
reduced ResNet-18, random weights; ``configs/baseline/deeplabv3plus_r50-d8_...`` works too, at a
small ``--size``), or ``--model segformer-b0``: mmseg's SegFormer-B0 architecture
(MixVisionTransformer, embed dims 32, depths 2-2-2-2, + SegformerHead, 19 classes), random weights.
Batches: random images of ``--size`` through the model's data preprocessor. Timed, median (and best)
of ``--repeats`` after one warm-up call: ``model.test_step`` under ``torch.no_grad`` (plain
inference), the same with every BN layer of a copy of the model in train mode (``BN in train
mode``: the floor of any test-batch-statistics method, torch's own kernel computing the batch
statistics; BN models only) and ``TestTimeAdapter.adapt`` (one continual step per call) for every
method of ``--methods``: ``'bn'``, ``'prior'``, ``'tent'`` (forward, entropy, backward to the
tuned parameters, optimizer step), ``'sar'`` (two forwards and backwards), ``'eata'``,
``'cotta'`` (teacher on 14 views + anchor + student forward/backward) and ``cotta-noaug``
(``cotta_augment=False``: teacher and student only). SAR's and EATA's entropy margins are set to
``ln K`` and EATA's redundancy filter off, so every pixel of the random-weight model (near-uniform
predictions) enters the loss: the worst case of their cost. The calls take turns in every repeat (a
loaded machine slows them alike); on CPU the clock is the process's CPU time by default, which
other processes' load does not inflate. Peak memory of one call (CUDA: ``max_memory_allocated``;
CPU: the peak of the allocation curve recorded by ``torch.profiler``), beyond the model and the
batch; CoTTA also keeps two copies of the model (teacher, anchor; one without augmentation).
Goals (issue): ``'bn'`` / ``'prior'`` <= 1.10x, ``'tent'`` / ``'eata'`` <= 2.5x, ``'sar'`` <= 4.5x
inference.
``--out`` replaces the section between ``<!-- benchmark:start -->`` and ``<!-- benchmark:end -->``
(``--section NAME``: between ``<!-- benchmark:NAME:start -->`` and ``<!-- benchmark:NAME:end -->``).
"""
import argparse
import copy
import platform
import re
import statistics
from typing import Callable, Dict, List

import torch
from mmnorm_tools.timing import round_robin

DEMO = 'configs/demo/deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py'
GOALS = {'bn': 1.10, 'prior': 1.10, 'tent': 2.5, 'eata': 2.5, 'sar': 4.5}
METHODS = ('bn', 'prior', 'tent', 'sar', 'eata', 'cotta', 'cotta-noaug')
# every pixel enters SAR's / EATA's loss (random weights predict near-uniformly): their worst case
METHOD_ARGS = {
    'sar': dict(sar_margin=1.0),
    'eata': dict(eata_margin=1.0, eata_redundancy=None),
    'cotta-noaug': dict(cotta_augment=False),
}
# mmseg's own Cityscapes SegFormer-B0 config (19 classes); random weights, BN head, whole image
SEGFORMER_B0 = 'mmseg::segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py'


def build(config: str, device: str, model_name: str = 'config'):
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import mmnorm  # noqa: F401
    if model_name == 'segformer-b0':
        cfg = get_config(SEGFORMER_B0)
        # BN, not SyncBN, in the head (one process); whole-image inference, no padding
        cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
        cfg.model.data_preprocessor.size = None
        cfg.model.test_cfg = dict(mode='whole')
    else:
        cfg = Config.fromfile(config)
    # random weights: no download (timing does not depend on the values)
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = None
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.to(device).eval()


def make_batch(batch_size: int, size: List[int], seed: int = 0) -> dict:
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    h, w = size
    inputs = [(torch.rand(3, h, w, generator=g) * 255).to(torch.uint8) for _ in range(batch_size)]
    samples = [
        SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w))) for _ in range(batch_size)
    ]
    return dict(inputs=inputs, data_samples=samples)


def median_seconds(calls: Dict[str, Callable], repeats: int, device: str,
                   clock: str) -> Dict[str, tuple]:
    """``(median, best)`` seconds per call; the calls take turns in every repeat, so load on a
    shared machine hits all of them."""
    times = round_robin(calls, repeats, device, clocks=(clock, ))
    return {
        name: (statistics.median(t for t, in ts), min(t for t, in ts))
        for name, ts in times.items()
    }


def peak_bytes(fn: Callable, device: str) -> int:
    """Peak memory allocated during one call, above what was allocated before it."""
    if device == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # ops' own allocations (net of their frees) and the frees recorded apart, in time order
    level = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        level += event.cpu_memory_usage if event.name == '[memory]' else event.self_cpu_memory_usage
        peak = max(peak, level)
    return peak


def run(config: str,
        batch_size: int,
        size: List[int],
        repeats: int,
        device: str,
        clock: str = 'wall',
        model_name: str = 'config',
        methods=METHODS) -> Dict[str, dict]:
    from mmnorm import TestTimeAdapter
    model = build(config, device, model_name)
    batch = make_batch(batch_size, size)

    def inference():
        with torch.no_grad():
            return model.test_step(batch)

    train_bn = copy.deepcopy(model)  # its running buffers may move: the adapted model's never do
    for module in train_bn.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()

    def inference_train_bn():
        with torch.no_grad():
            return train_bn.test_step(batch)

    calls = {'inference': inference}
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn:
        calls['BN in train mode'] = inference_train_bn
    adapters = {
        m: TestTimeAdapter(model, m.split('-')[0], logger=None, **METHOD_ARGS.get(m, {}))
        for m in methods
    }
    for method, adapter in adapters.items():
        calls[method] = (lambda a: (lambda: a.adapt(batch)))(adapter)
    seconds = median_seconds(calls, repeats, device, clock)
    rows = {
        name: dict(seconds=seconds[name][0], best=seconds[name][1], peak=peak_bytes(fn, device))
        for name, fn in calls.items()
    }
    for adapter in adapters.values():
        adapter.reset()
    base = rows['inference']
    for row in rows.values():
        row['ratio'] = row['seconds'] / base['seconds']
        row['best_ratio'] = row['best'] / base['best']
        row['memory_ratio'] = row['peak'] / max(base['peak'], 1)
    return rows


def to_markdown(rows: Dict[str, dict], args, device: str) -> str:
    model = ('--model segformer-b0' if args.model == 'segformer-b0' else f'--config {args.config}')
    lines = [
        f'`python tools/benchmark_tta.py {model} --batch-size {args.batch_size} '
        f'--size {args.size[0]} {args.size[1]} --repeats {args.repeats} --threads {args.threads}` '
        f'on {device} ({platform.processor() or platform.machine()}, torch {torch.__version__}, '
        f'{args.threads} threads, {args.clock} time):', '',
        '| call | s / batch (median) | x inference (median) | x inference (best) | goal | peak '
        'memory (MiB) | x inference |', '|---|---|---|---|---|---|---|'
    ]
    for name, row in rows.items():
        goal = GOALS.get(name)
        verdict = ''
        if goal is not None:
            verdict = f'<= {goal:.2f}x: {"met" if row["ratio"] <= goal else "NOT met"}'
        lines.append(
            f'| {name} | {row["seconds"]:.4f} | {row["ratio"]:.2f} | {row["best_ratio"]:.2f} | '
            f'{verdict} | {row["peak"] / 2**20:.1f} | {row["memory_ratio"]:.2f} |')
    return '\n'.join(lines) + '\n'


def write_section(path: str, text: str, section: str = '') -> None:
    with open(path) as f:
        doc = f.read()
    tag = f'benchmark:{section}:' if section else 'benchmark:'
    pattern = re.compile(rf'(<!-- {tag}start -->\n).*?(<!-- {tag}end -->)', re.S)
    if not pattern.search(doc):
        raise SystemExit(f'{path} has no <!-- {tag}start --> ... <!-- {tag}end --> section')
    with open(path, 'w') as f:
        f.write(pattern.sub(lambda m: m.group(1) + text + m.group(2), doc))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default=DEMO)
    parser.add_argument(
        '--model',
        choices=('config', 'segformer-b0'),
        default='config',
        help="'segformer-b0': mmseg's SegFormer-B0 architecture instead of --config")
    parser.add_argument(
        '--methods',
        nargs='+',
        choices=METHODS,
        default=list(METHODS),
        help='adapter methods to time (default: all)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--size', type=int, nargs=2, default=[64, 128], metavar=('H', 'W'))
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--clock',
        choices=('cpu', 'wall'),
        help='process CPU time (default on CPU: other '
        "processes' load does not count) or wall time (default on CUDA)")
    parser.add_argument('--out', help='markdown file whose benchmark section is replaced')
    parser.add_argument(
        '--section', default='', help='name of the section in --out (default: the unnamed one)')
    args = parser.parse_args(argv)
    for name in ('batch_size', 'repeats', 'threads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    torch.set_num_threads(args.threads)
    args.clock = args.clock or ('wall' if args.device == 'cuda' else 'cpu')
    rows = run(args.config, args.batch_size, args.size, args.repeats, args.device, args.clock,
               args.model, args.methods)
    text = to_markdown(rows, args, args.device)
    print(text)
    if args.out:
        write_section(args.out, text, args.section)
    return rows


if __name__ == '__main__':
    main()
