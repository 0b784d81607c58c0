"""Continual test-time adaptation on a drifting stream (the continual-stream experiment of ``make
demo``).

    python tools/analysis/tta_stream.py CONFIG CHECKPOINT [--stream-root DIR] [--frames 240]
    [--batch-size 8]
                                        [--lr 1e-3] [--window 3] [--out-dir DIR]

Renders the drifting stream of :mod:`mmnorm.datasets.synthetic_stream` (clear -> increasing fog ->
colour shift -> clear; skipped when present), then tests the trained BN checkpoint on it in stream
order, the same batches for every method:

1. ``BN``: the source model;
2. ``BN + test-batch stats``: ``TestTimeAdapter(method='bn')``;
3. ``AdaBN (offline)``: :func:`mmnorm.recalibrate_bn` on the *whole* stream first (transductive,
   needs the stream in advance), then the source model with those statistics;
4. ``TENT continual``: ``method='tent'`` (Adam, ``--lr``), never reset;
5. ``TENT continual + safeguards``: the same with reliable-pixel selection (``reliable=0.05``:
   entropy below 0.05 ln K) and the reset rule on the mean entropy (``reset_signal='entropy'``,
   ``reset_threshold=0.6``, ``reset_momentum=0.2``).

Writes ``stream_results.md`` (mIoU per phase and over the stream, TENT resets),
``stream_results.json`` and ``stream_miou.png`` (mIoU over a sliding window of ``--window`` batches
along the stream) to ``--out-dir``.
"""
import argparse
import copy
import json
import os
import os.path as osp
import sys
import time
from typing import Dict, List

import numpy as np
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# Tuned for the over-confident demo model (mean pixel entropy ~0.15 nats of ln 19 = 2.9): a tight
# reliable margin (0.05 ln K; EATA's 0.4 ln K keeps ~99 % of the pixels here) and the
# over-confidence reset signal.
SAFEGUARDS = dict(reliable=0.05, reset_signal='entropy', reset_threshold=0.6, reset_momentum=0.2)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='the BN demo config the checkpoint was trained with')
    parser.add_argument('checkpoint')
    parser.add_argument('--stream-root', default='data/demo_stream')
    parser.add_argument(
        '--frames', type=int, default=240, help='stream length (default 240 = 30 batches of 8)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument(
        '--lr',
        type=float,
        default=3e-2,
        help='TENT Adam learning rate (default 3e-2: 30 batches at TENT\'s 1e-3 barely move)')
    parser.add_argument('--window', type=int, default=3, help='batches per point of the mIoU curve')
    parser.add_argument('--seed', type=int, default=0, help='stream seed')
    parser.add_argument('--out-dir', default='work_dirs/demo/stream')
    args = parser.parse_args(argv)
    for name in ('frames', 'batch_size', 'window'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if not args.lr > 0:
        parser.error(f'--lr must be > 0, got {args.lr}')
    return args


def load_model(config: str, checkpoint: str):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import mmnorm  # noqa: F401
    cfg = Config.fromfile(config)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(cfg.model)
    from mmnorm_tools.checkpoints import load_weights
    load_weights(model, checkpoint)  # refuses files that are unsafe or do not fit the model
    return cfg, model.eval()


def stream_batches(cfg, root: str, batch_size: int) -> List[dict]:
    """The stream's batches in order (held in memory: every method sees the same data)."""
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(
        dict(
            batch_size=batch_size,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False, round_up=False),
            dataset=dict(
                type='CityscapesDataset',
                data_root=root,
                pipeline=cfg.test_pipeline,
                data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'))))
    return list(loader)


def confusion(outputs, num_classes: int) -> np.ndarray:
    """(K, K) counts ``[ground truth, prediction]`` of a batch's predictions (ignore index 255)."""
    mat = np.zeros((num_classes, num_classes), np.int64)
    for sample in outputs:
        pred = sample.pred_sem_seg.data.squeeze(0).cpu().numpy().ravel()
        gt = sample.gt_sem_seg.data.squeeze(0).cpu().numpy().ravel()
        keep = gt != 255
        mat += np.bincount(
            gt[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(mat.shape)
    return mat


def miou(mat: np.ndarray) -> float:
    """mmseg's mIoU: per-class IoU, classes with an empty union left out (NaN), in percent."""
    inter = np.diag(mat).astype(float)
    union = mat.sum(0) + mat.sum(1) - inter
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = inter / union
    return float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else float('nan')


def run_methods(model, batches: List[dict], lr: float, num_classes: int) -> Dict[str, dict]:
    from mmnorm import TestTimeAdapter, recalibrate_bn

    def source(m):
        return lambda batch: m.test_step(batch)

    runs = {}

    def evaluate(name, predict, adapter=None):
        t0 = time.time()
        with torch.no_grad() if adapter is None else torch.enable_grad():
            mats = [confusion(predict(batch), num_classes) for batch in batches]
        runs[name] = dict(
            mats=mats,
            seconds=time.time() - t0,
            resets=None if adapter is None else adapter.num_resets,
            reset_steps=[]
            if adapter is None else [r['step'] for r in adapter.history if r['reset']])
        print(
            f'{name}: mIoU {miou(sum(mats)):.1f} over the stream ({runs[name]["seconds"]:.0f} s)',
            flush=True)

    evaluate('BN', source(model))
    evaluate('BN + test-batch stats', TestTimeAdapter(model, 'bn').adapt)
    adabn = copy.deepcopy(model)
    recalibrate_bn(adabn, batches, progress=False, logger=None)
    evaluate('AdaBN (offline)', source(adabn))
    optimizer = dict(type='Adam', lr=lr, betas=(0.9, 0.999))
    for name, extra in (('TENT continual', {}), ('TENT continual + safeguards', SAFEGUARDS)):
        adapter = TestTimeAdapter(model, 'tent', optimizer=optimizer, logger=None, **extra)
        evaluate(name, adapter.adapt, adapter)
        adapter.reset()  # the next method starts from the source model
    return runs


def summarise(runs: Dict[str, dict], phases: List[str], window: int) -> Dict[str, dict]:
    names = list(dict.fromkeys(phases))
    rows = {}
    for name, run in runs.items():
        mats = run['mats']
        per_phase = {p: miou(sum(m for m, q in zip(mats, phases) if q == p)) for p in names}
        curve = [miou(sum(mats[max(0, i - window + 1):i + 1])) for i in range(len(mats))]
        rows[name] = dict(
            stream=miou(sum(mats)),
            phases=per_phase,
            curve=curve,
            resets=run['resets'],
            reset_batches=run['reset_steps'],
            seconds=run['seconds'])
    return rows


def to_markdown(rows: Dict[str, dict], phase_names: List[str]) -> str:
    head = '| method | ' + ' | '.join(phase_names) + ' | whole stream | resets |'
    lines = [head, '|' + '---|' * (len(phase_names) + 3)]
    for name, row in rows.items():
        cells = [f'{row["phases"][p]:.1f}' for p in phase_names]
        resets = '' if row['resets'] is None else str(row['resets'])
        lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {row["stream"]:.1f} | {resets} |')
    return '\n'.join(lines) + '\n'


def plot(rows: Dict[str, dict], phases: List[str], batch_size: int, out_file: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3.6))
    frames = [(i + 1) * batch_size for i in range(len(phases))]
    start = 0
    for i in range(1, len(phases) + 1):
        if i == len(phases) or phases[i] != phases[start]:
            ax.axvspan(
                start * batch_size,
                i * batch_size,
                alpha=0.08 * (1 + start % 2),
                color='grey',
                lw=0)
            ax.text(
                (start + i) / 2 * batch_size,
                1.0,
                phases[start],
                ha='center',
                va='bottom',
                transform=ax.get_xaxis_transform(),
                fontsize=8)
            start = i
    for name, row in rows.items():
        line, = ax.plot(frames, row['curve'], label=name, lw=1.5)
        for b in row['reset_batches']:
            ax.plot(frames[b - 1], row['curve'][b - 1], 'v', color=line.get_color(), ms=5)
    ax.set_xlabel('frame of the stream')
    ax.set_ylabel('mIoU (%)')
    ax.legend(fontsize=7, loc='lower left')
    fig.tight_layout()
    fig.savefig(out_file, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    from mmnorm_tools import setup_runtime
    setup_runtime()  # Runner checkpoints load with torch's weights-only unpickler
    from mmnorm.runtime import check_checkpoint_file, user_errors
    with user_errors('tools/analysis/tta_stream.py'):
        check_checkpoint_file(args.checkpoint)
    from mmnorm.datasets.synthetic_stream import generate_drifting_stream
    t0 = time.time()
    try:
        schedule = generate_drifting_stream(args.stream_root, args.frames, seed=args.seed)
    except FileExistsError as err:  # a stream of another length / seed is there: never overwrite it
        sys.exit(f'tta_stream.py: {err}. Pass --stream-root with a new folder for --frames '
                 f'{args.frames} --seed {args.seed}.')
    cfg, model = load_model(args.config, args.checkpoint)
    batches = stream_batches(cfg, args.stream_root, args.batch_size)
    phases = [schedule[i * args.batch_size]['phase'] for i in range(len(batches))]
    runs = run_methods(model, batches, args.lr, model.decode_head.num_classes)
    rows = summarise(runs, phases, args.window)
    phase_names = list(dict.fromkeys(phases))
    os.makedirs(args.out_dir, exist_ok=True)
    table = to_markdown(rows, phase_names)
    with open(osp.join(args.out_dir, 'stream_results.md'), 'w') as f:
        f.write(table)
    with open(osp.join(args.out_dir, 'stream_results.json'), 'w') as f:
        json.dump(
            dict(rows=rows, phases=phases, lr=args.lr, safeguards=SAFEGUARDS, frames=args.frames),
            f,
            indent=1)
    plot(rows, phases, args.batch_size, osp.join(args.out_dir, 'stream_miou.png'))
    print(table + f'written to {args.out_dir} in {time.time() - t0:.0f} s')


if __name__ == '__main__':
    main()
