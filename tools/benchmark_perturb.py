"""Cost of the statistics-perturbation layers (MixStyle, EFDMix, DSU).

    python tools/benchmark_perturb.py [--model-input 2x3x256x256] [--model-repeats 5]
    [--layer-repeats 10]
                                      [--layer-batch 2] [--layer-crop 512] [--p 1.0] [--out
                                      docs/benchmarks_perturb.md]

Two tables:

* model: one DeepLabV3+ R50-D8 training iteration (forward, loss, backward, SGD step) of the GTA5 ->
  Cityscapes baseline with each layer at its config placement, against the same model (same weights)
  without it. The layers run with ``--p`` (default 1: every forward perturbed, the worst case; ``--p
  0.5`` is the configs' setting, where an iteration is perturbed or not at random, so the mean over
  the rounds is reported instead of the median). Variants are timed round-robin, so drift of a
  shared machine hits all alike.
* layer: train-mode forward+backward of one call (``p=1``) at the shapes the layer sees in that
  model for a ``--layer-batch`` x 3 x crop x crop input, in ms and relative to ``nn.BatchNorm2d`` on
  the same shape.
"""
import argparse
import platform
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmnorm_tools.segmentor import MODEL_CONFIG, build_segmentor, random_batch, training_step
from mmnorm_tools.timing import timed

from mmnorm.models.backbones.perturb_resnet import add_perturbation

#: name -> (layer config, positions), as in configs/perturb/.
VARIANTS = {
    'MixStyle': (dict(type='MixStyle', p=1.0), (0, 1, 2)),
    'EFDMix': (dict(type='EFDMix', p=1.0), (0, 1, 2)),
    'DSU': (dict(type='DSU', p=1.0), ('conv1', 'stem', 0, 1, 2, 3)),
}
MODEL_GOAL = 1.05
Shape = Tuple[int, int, int, int]


def variant_cfg(name: str, p: float) -> dict:
    """The layer config of ``VARIANTS[name]`` applied with probability ``p``."""
    return dict(VARIANTS[name][0], p=p)


def set_variant(backbone: nn.Module, name: Optional[str], p: float) -> None:
    """Puts the layers of ``VARIANTS[name]`` into a ``PerturbResNetV1c`` (None: no perturbation
    at all)."""
    for child in [n for n, _ in backbone.named_children() if n.startswith('perturb_')]:
        delattr(backbone, child)
    if name is None:
        backbone.perturb_positions = ()
    else:
        add_perturbation(backbone, variant_cfg(name, p), VARIANTS[name][1])


def run_model(names: List[str],
              input_shape: Shape,
              repeats: int,
              device: str,
              p: float = 1.0) -> List[dict]:
    """Seconds per training iteration (median; mean when ``p < 1``) for no perturbation and each
    variant, timed round-robin."""
    model = build_segmentor(input_shape, device, dict(backbone=dict(type='PerturbResNetV1c')))
    step = training_step(model, *random_batch(input_shape, device))
    variants = [None] + names
    times: Dict[Optional[str], List[float]] = {v: [] for v in variants}
    for round_ in range(repeats + 1):  # round 0 warms up every variant
        for variant in variants:
            set_variant(model.backbone, variant, p)
            t = timed(step, device)
            if round_:
                times[variant].append(t)
    if p < 1:  # each iteration is perturbed or not at random: the expected cost is the mean
        typical = {v: sum(ts) / len(ts) for v, ts in times.items()}
    else:
        typical = {v: sorted(ts)[len(ts) // 2] for v, ts in times.items()}
    return [
        dict(
            variant=v or 'none (BN)',
            input='x'.join(map(str, input_shape)),
            iter_s=typical[v],
            ratio=typical[v] / typical[None]) for v in variants
    ]


def layer_shapes(batch: int, crop: int) -> Dict[str, Shape]:
    """Shapes after the deep stem's first conv, the stem and each stage of ResNetV1c-50-D8 (stride
    2, 4, 4, 8, 8, 8) for a crop x crop input."""
    s2, s4, s8 = crop // 2, crop // 4, crop // 8
    return {
        'conv1': (batch, 32, s2, s2),
        'stem': (batch, 64, s4, s4),
        'stage 1': (batch, 256, s4, s4),
        'stage 2': (batch, 512, s8, s8),
        'stage 3': (batch, 1024, s8, s8),
        'stage 4': (batch, 2048, s8, s8)
    }


def time_layer(module: nn.Module, shape: Shape, repeats: int, device: str) -> float:
    x = torch.randn(*shape, device=device, requires_grad=True)
    module.to(device).train()

    def step():
        module(x).sum().backward()

    for _ in range(2):
        step()
    ts = sorted(timed(step, device) for _ in range(repeats))
    return ts[len(ts) // 2]


def run_layers(names: List[str], batch: int, crop: int, repeats: int, device: str) -> List[dict]:
    """Per-call train forward+backward time of each layer (``p=1``) at each of its positions, and
    BN2d's."""
    from mmengine.registry import MODELS
    rows = []
    for where, shape in layer_shapes(batch, crop).items():
        bn = time_layer(nn.BatchNorm2d(shape[1]), shape, repeats, device)
        for name in names:
            positions = VARIANTS[name][1]
            stage = where if where in ('conv1', 'stem') else int(where.split()[-1]) - 1
            if stage not in positions:
                continue
            t = time_layer(MODELS.build(variant_cfg(name, 1.0)), shape, repeats, device)
            rows.append(
                dict(
                    layer=name,
                    where=where,
                    shape='x'.join(map(str, shape)),
                    ms=t * 1e3,
                    bn_ms=bn * 1e3,
                    ratio=t / bn))
    return rows


def to_markdown(model_rows: List[dict],
                layer_rows: List[dict],
                device: str,
                model_repeats: int,
                layer_repeats: int,
                p: float = 1.0) -> str:
    machine = f'{platform.processor() or platform.machine()}, torch {torch.__version__}, ' \
              f'{torch.get_num_threads()} threads, device {device}'
    lines = [
        f'Machine: {machine}.', '', f'DeepLabV3+ R50-D8 ({MODEL_CONFIG}), one training iteration, '
        f'{"median" if p >= 1 else "mean"} of {model_repeats} round-robin rounds, layers at their '
        f'config placement with p={p:g}{" (worst case)" if p >= 1 else ""}, heads BN.', '',
        '| perturbation | input | s / iter | × without | goal |', '|---|---|---:|---:|---|'
    ]
    for r in model_rows:
        goal = '' if r['variant'].startswith('none') else \
            (f'≤ {MODEL_GOAL:g} ✓' if r['ratio'] <= MODEL_GOAL else f'≤ {MODEL_GOAL:g} ✗')
        lines.append(
            f"| {r['variant']} | {r['input']} | {r['iter_s']:.3f} | {r['ratio']:.3f} | {goal} |")
    lines += [
        '',
        f'One layer call, train forward+backward with p=1, median of {layer_repeats}; BN2d on the '
        'same shape as a yardstick.', '',
        '| layer | position | shape (N×C×H×W) | ms / call | BN2d ms | × BN2d |',
        '|---|---|---|---:|---:|---:|'
    ]
    for r in layer_rows:
        lines.append(
            f"| {r['layer']} | {r['where']} | {r['shape']} | {r['ms']:.2f} | {r['bn_ms']:.2f} | "
            f"{r['ratio']:.2f} |")
    return '\n'.join(lines) + '\n'


def parse_shape(text: str) -> Shape:
    parts = tuple(int(p) for p in text.lower().split('x'))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f'shape must be NxCxHxW, got {text!r}')
    return parts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--layers', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--model-input', type=parse_shape, default=(2, 3, 256, 256))
    parser.add_argument('--model-repeats', type=int, default=5)
    parser.add_argument('--no-model', action='store_true', help='only the per-call layer table')
    parser.add_argument('--layer-batch', type=int, default=2)
    parser.add_argument('--layer-crop', type=int, default=512)
    parser.add_argument('--layer-repeats', type=int, default=10)
    parser.add_argument(
        '--p',
        type=float,
        default=1.0,
        help="probability of a perturbed forward in the model table (the configs' 0.5)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--out', help='write the Markdown tables to this file')
    args = parser.parse_args(argv)
    if min(args.model_repeats, args.layer_repeats, args.layer_batch) < 1 or args.layer_crop < 32:
        parser.error(
            '--model-repeats, --layer-repeats and --layer-batch must be >= 1 and --layer-crop >= '
            f'32, got {args.model_repeats}, {args.layer_repeats}, {args.layer_batch}, '
            f'{args.layer_crop}')
    if not 0 < args.p <= 1:
        parser.error(f'--p must be in (0, 1], got {args.p}')
    model_rows = [] if args.no_model else run_model(args.layers, args.model_input,
                                                    args.model_repeats, args.device, args.p)
    layer_rows = run_layers(args.layers, args.layer_batch, args.layer_crop, args.layer_repeats,
                            args.device)
    text = to_markdown(model_rows, layer_rows, args.device, args.model_repeats, args.layer_repeats,
                       args.p)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    return model_rows + layer_rows


if __name__ == '__main__':
    main()
