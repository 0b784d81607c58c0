"""Cost of the whitening losses (IW, IRW, ISW, SAW) in a DeepLabV3+ R50 training iteration.

    python tools/benchmark_whitening.py [--input 2x3x256x256] [--repeats 5] [--stat-images 4]
                                        [--out docs/benchmarks_whitening.md]

Two tables:

* iteration: one training iteration (forward, losses, backward, SGD step) of DeepLabV3+ on
  ResNet-50-V1c at output stride 16 (RobustNet's model) with the whitening loss at RobustNet's
  positions (stem, stages 1-2; SAW at stages 1-2, as SAN-SAW, with its classifiers), against the
  same network without it (``ResNetV1c`` + ``EncoderDecoder``). ISW is timed with its mask
  selected (its cost after the statistics pass; before, its loss is zero). Variants are timed
  round-robin (``mmnorm_tools.timing.round_robin``), so drift of a shared machine hits all alike;
  medians.
* statistics pass: ISW's one-off pass (``run_isw_selection``), seconds per image pair
  (image + photometric twin, backbone only, no gradient) at the iteration's crop, and the
  authors' full pass (10 trials x 500 pairs) in units of training iterations.
"""
import argparse
import platform
import statistics
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmnorm_tools.segmentor import build_segmentor, random_batch, training_step
from mmnorm_tools.timing import round_robin, timed

#: name -> whitening config (the authors' weights and options)
VARIANTS = {
    'IW': dict(type='IW', loss_weight=0.8),
    'IRW': dict(type='IRW', loss_weight=0.6, relax_denom=64.0),
    'ISW': dict(type='ISW', loss_weight=0.6, clusters=3),
    'SAW': dict(type='SAW', loss_weight=0.1),
}
#: name -> positions, where not RobustNet's (SAN-SAW: stages 1 and 2)
POSITIONS = {'SAW': (0, 1)}
#: the issue's goals (SAW had none)
GOALS = {'IW': 1.10, 'IRW': 1.10, 'ISW': 2.1}
BASELINE = 'none (ResNetV1c)'
#: the authors' statistics pass: trials x images
AUTHORS_PASS = (10, 500)
Shape = Tuple[int, int, int, int]


def build_model(whitening: Optional[dict], input_shape: Shape, device: str) -> nn.Module:
    """DeepLabV3+ R50-V1c at output stride 16 (RobustNet's model); with ``whitening`` a
    WhiteningResNetV1c and WhiteningEncoderDecoder."""
    updates = dict(
        backbone=dict(strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)),
        decode_head=dict(dilations=(1, 6, 12, 18)))  # RobustNet's ASPP rates at stride 16
    if whitening is not None:
        updates['type'] = 'WhiteningEncoderDecoder'
        updates['backbone'].update(
            type='WhiteningResNetV1c',
            whitening=whitening,
            after_stages=POSITIONS.get(whitening['type'], ('stem', 0, 1)))
    return build_segmentor(input_shape, device, updates)


def select_random_masks(model: nn.Module) -> None:
    """Gives every ISW position a selection from a random variance matrix (the timed cost only
    depends on the mask existing)."""
    g = torch.Generator().manual_seed(0)
    for module in model.backbone.isw_modules().values():
        c = module.num_features
        module.select(torch.rand(c, c, generator=g, dtype=torch.float64).triu(1))


def run_iterations(names: List[str], input_shape: Shape, repeats: int, device: str) -> List[dict]:
    """Median seconds per training iteration without whitening and with each variant."""
    models = {None: build_model(None, input_shape, device)}
    for name in names:
        models[name] = build_model(VARIANTS[name], input_shape, device)
        if name == 'ISW':
            select_random_masks(models[name])
    batch = random_batch(input_shape, device)
    steps = {name: training_step(m, *batch) for name, m in models.items()}
    times = round_robin(steps, repeats, device=device, clocks=('wall', 'cpu'))
    wall = {name: statistics.median(t[0] for t in ts) for name, ts in times.items()}
    cpu = {name: statistics.median(t[1] for t in ts) for name, ts in times.items()}
    return [
        dict(
            variant=name or BASELINE,
            input='x'.join(map(str, input_shape)),
            iter_s=wall[name],
            cpu_s=cpu[name],
            ratio=wall[name] / wall[None],
            cpu_ratio=cpu[name] / cpu[None]) for name in models
    ]


def run_statistics_pass(input_shape: Shape, images: int, device: str) -> dict:
    """Seconds per image pair of ISW's statistics pass (``collect_isw_variances``) at the crop of
    ``input_shape``."""
    from mmseg.structures import SegDataSample

    from mmnorm.models.whitening import collect_isw_variances
    model = build_model(VARIANTS['ISW'], input_shape, device)
    _, _, h, w = input_shape
    rng = np.random.default_rng(0)

    def batches():
        while True:
            img = torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
            sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
            sample.set_data(dict(twin_inputs=torch.flip(img, dims=(0, ))))
            yield dict(inputs=[img], data_samples=[sample])

    stream = batches()
    collect_isw_variances(model, stream, 1)  # warm-up
    seconds = timed(lambda: collect_isw_variances(model, stream, images), device, clock='cpu')
    return dict(pair_s=seconds / images, images=images)


def to_markdown(rows: List[dict], stats: Optional[dict], device: str, repeats: int) -> str:
    machine = f'{platform.processor() or platform.machine()}, torch {torch.__version__}, ' \
              f'{torch.get_num_threads()} threads, device {device}'
    lines = [
        f'Machine: {machine}.', '',
        'DeepLabV3+ R50-V1c output stride 16, one training iteration (forward, losses, backward, '
        f'SGD step), median of {repeats} round-robin rounds; whitening at the stem and stages 1-2 '
        '(RobustNet), ISW with its mask selected; SAW at stages 1-2 (SAN-SAW) with its '
        'classifiers\' loss.', '',
        'Wall-clock and this process\'s CPU seconds (all its threads); on a shared machine the '
        'CPU-time ratio is the one that measures the method, and the goal is read on it.', '',
        '| loss | input | wall s / iter | × without | CPU s / iter | × without (CPU) | goal |',
        '|---|---|---:|---:|---:|---:|---|'
    ]
    base = rows[0] if rows and rows[0]['variant'] == BASELINE else None
    for r in rows:
        goal = GOALS.get(r['variant'])
        verdict = '' if goal is None else f"≤ {goal:g} {'✓' if r['cpu_ratio'] <= goal else '✗'}"
        lines.append(f"| {r['variant']} | {r['input']} | {r['iter_s']:.3f} | {r['ratio']:.3f} | "
                     f"{r['cpu_s']:.3f} | {r['cpu_ratio']:.3f} | {verdict} |")
    if stats is not None:
        trials, images = AUTHORS_PASS
        total = stats['pair_s'] * trials * images
        in_iters = '' if base is None else f" = {total / base['cpu_s']:.0f} iterations"
        lines += [
            '', f"ISW statistics pass (once per run), {stats['images']} pairs: "
            f"{stats['pair_s']:.3f} CPU s per image pair (backbone only, no gradient, same "
            f"crop); the authors' {trials} trials × {images} pairs ≈ {total:.0f} s{in_iters}."
        ]
    return '\n'.join(lines) + '\n'


def parse_shape(text: str) -> Shape:
    parts = tuple(int(p) for p in text.lower().split('x'))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f'shape must be NxCxHxW, got {text!r}')
    return parts


def main(argv=None) -> Dict[str, list]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--losses', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--input', type=parse_shape, default=(2, 3, 256, 256))
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument(
        '--stat-images',
        type=int,
        default=4,
        help='image pairs timed in the ISW statistics pass (0: skip it)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--out', help='write the Markdown tables to this file')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.stat_images < 0 or min(args.input[2:]) < 32:
        parser.error('--repeats must be >= 1, --stat-images >= 0 and the input at least 32x32, '
                     f'got {args.repeats}, {args.stat_images}, {args.input}')
    rows = run_iterations(args.losses, args.input, args.repeats, args.device)
    stats = run_statistics_pass(args.input, args.stat_images,
                                args.device) if args.stat_images else None
    text = to_markdown(rows, stats, args.device, args.repeats)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    return dict(rows=rows, stats=[stats] if stats else [])


if __name__ == '__main__':
    main()
