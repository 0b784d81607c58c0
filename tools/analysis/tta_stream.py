"""Continual test-time adaptation on a drifting stream (the continual-stream experiment of ``make
demo``).

    python tools/analysis/tta_stream.py CONFIG CHECKPOINT [CONFIG CHECKPOINT ...]
        [--labels NAME ...] [--stream-root DIR] [--frames 240] [--batch-size 8] [--lr 3e-2]
        [--cotta-lr 1e-3] [--fisher-root DIR] [--fisher-frames 64] [--window 3] [--out-dir DIR]

Renders the drifting stream of :mod:`mmnorm.datasets.synthetic_stream` (clear -> increasing fog ->
colour shift -> clear; skipped when present), then tests every trained checkpoint on it in stream
order, the same batches for every model and method; every adapting method is continual (never reset
by the tool, one pass over the stream):

1. ``source``: the trained model, unchanged;
2. ``bn (test-batch stats)``: ``TestTimeAdapter(method='bn')`` (every BN-like layer normalises
   with the test batch's statistics; on a SegFormer only its decode head has BN);
3. ``AdaBN (offline)``: :func:`mmnorm.recalibrate_bn` on the *whole* stream first (transductive,
   needs the stream in advance), then the model with those statistics;
4. ``tent``: ``method='tent'`` (Adam, ``--lr``);
5. ``tent + safeguards``: the same with reliable-pixel selection (``reliable=0.05``: entropy below
   0.05 ln K) and the reset rule on the mean entropy (``reset_signal='entropy'``,
   ``reset_threshold=0.6``, ``reset_momentum=0.2``);
6. ``sar``: ``method='sar'`` with SAR's defaults (E0 = 0.4 ln K, rho 0.05, recovery at 0.2), the
   same optimizer as TENT;
7. ``eata``: ``method='eata'`` (E0 = 0.4 ln K, redundancy filter off, Fisher term alpha 2000 from
   ``--fisher-frames`` source train frames under ``--fisher-root``), the same optimizer as TENT;
8. ``cotta``: ``method='cotta'`` with the authors' defaults (teacher EMA 0.999, restore p 0.01,
   scales 0.5-2.0 x flips below confidence 0.69), every weight tuned with Adam ``--cotta-lr``.

TENT, SAR and EATA tune the norm layers' affine (SAR without the top backbone block), so they share
one optimizer and differ only in their objective, filter and update. Writes ``stream_results.md``
(per model: mIoU per phase and over the stream, resets), ``stream_results.json`` and
``stream_miou.png`` (one panel per model, mIoU over a sliding window of ``--window`` batches) to
``--out-dir``.
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
TOOL = 'tools/analysis/tta_stream.py'

# Tuned for the over-confident demo model (mean pixel entropy ~0.15 nats of ln 19 = 2.9): a tight
# reliable margin (0.05 ln K; EATA's 0.4 ln K keeps ~99 % of the pixels here) and the
# over-confidence reset signal.
SAFEGUARDS = dict(reliable=0.05, reset_signal='entropy', reset_threshold=0.6, reset_momentum=0.2)
# The papers' defaults; EATA's redundancy filter is off (the mean predictions of street scenes all
# lie within cosine 0.05 of the running mean: EATA's epsilon would drop nearly every batch).
SAR = dict(sar_rho=0.05, sar_margin=0.4, sar_reset=0.2, sar_momentum=0.9)
EATA = dict(eata_margin=0.4, eata_redundancy=None, fisher_alpha=2000.0)
COTTA = dict(cotta_momentum=0.999, cotta_restore=0.01, cotta_threshold=0.69)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        'models',
        nargs='+',
        metavar='CONFIG CHECKPOINT',
        help='pairs: a demo config and the checkpoint trained with it')
    parser.add_argument(
        '--labels',
        nargs='+',
        default=None,
        help='a name per model (default: the config file names)')
    parser.add_argument('--stream-root', default='data/demo_stream')
    parser.add_argument(
        '--frames', type=int, default=240, help='stream length (default 240 = 30 batches of 8)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument(
        '--lr',
        type=float,
        default=3e-2,
        help='Adam learning rate of TENT, SAR and EATA (default 3e-2: 30 batches at TENT\'s 1e-3 '
        'barely move)')
    parser.add_argument(
        '--cotta-lr',
        type=float,
        default=1e-3,
        help="Adam learning rate of CoTTA's student (every weight; default 1e-3)")
    parser.add_argument(
        '--fisher-root',
        default=None,
        help="EATA's Fisher data: a GTA5-layout source root (default: the first config's "
        'train_dataloader data_root)')
    parser.add_argument('--fisher-frames', type=int, default=64)
    parser.add_argument('--window', type=int, default=3, help='batches per point of the mIoU curve')
    parser.add_argument('--seed', type=int, default=0, help='stream seed')
    parser.add_argument('--out-dir', default='work_dirs/demo/stream')
    args = parser.parse_args(argv)
    if len(args.models) % 2:
        parser.error('models must be CONFIG CHECKPOINT pairs, got an odd number of paths: '
                     f'{args.models}')
    args.pairs = list(zip(args.models[::2], args.models[1::2]))
    if args.labels is None:
        args.labels = [osp.basename(c).split('_')[0] for c, _ in args.pairs]
    if len(args.labels) != len(args.pairs):
        parser.error(f'--labels needs one name per model ({len(args.pairs)}), got {args.labels}')
    for name in ('frames', 'batch_size', 'window', 'fisher_frames'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    for name in ('lr', 'cotta_lr'):
        if not getattr(args, name) > 0:
            parser.error(f'--{name.replace("_", "-")} must be > 0, got {getattr(args, name)}')
    return args


def load_model(config: str, checkpoint: str):
    """``(cfg, model)``: the config's segmentor with the checkpoint's weights, in eval mode. A bad
    mmnorm layer argument or weights that do not fit end the tool with one line (the argument
    named by its config key)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmnorm_tools.checkpoints import load_weights
    from mmnorm_tools.config import describe_argument_error
    from mmseg.registry import MODELS

    import mmnorm  # noqa: F401
    from mmnorm.runtime import user_errors
    cfg = Config.fromfile(config)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    with user_errors(TOOL, describe=lambda err: describe_argument_error(err, cfg)):
        model = MODELS.build(cfg.model)
        load_weights(model, checkpoint)  # refuses files that are unsafe or do not fit the model
    return cfg, model.eval()


def build_batches(dataset: dict, batch_size: int) -> List[dict]:
    """The batches of ``dataset`` in order (held in memory: every method sees the same data)."""
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(
        dict(
            batch_size=batch_size,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False, round_up=False),
            dataset=dataset))
    return list(loader)


def stream_batches(cfg, root: str, batch_size: int) -> List[dict]:
    return build_batches(
        dict(
            type='CityscapesDataset',
            data_root=root,
            pipeline=cfg.test_pipeline,
            data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val')), batch_size)


def fisher_batches(cfg, root: str, frames: int, batch_size: int) -> List[dict]:
    """The first ``frames`` source train frames (test pipeline; labels unused) for EATA's
    Fisher term."""
    dataset = copy.deepcopy(cfg.train_dataloader.dataset)
    dataset.update(data_root=root, pipeline=cfg.test_pipeline, indices=frames)
    return build_batches(dataset, batch_size)


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


def run_methods(model,
                batches: List[dict],
                lr: float,
                cotta_lr: float,
                fisher: List[dict],
                num_classes: int,
                label: str = '') -> Dict[str, dict]:
    """Every method on ``batches`` in order, each from the source ``model`` (left unchanged)."""
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
            if adapter is None else [r['step'] for r in adapter.history if r.get('reset')])
        print(
            f'{label} {name}: mIoU {miou(sum(mats)):.1f} over the stream '
            f'({runs[name]["seconds"]:.0f} s)',
            flush=True)

    evaluate('source', source(model))
    evaluate('bn (test-batch stats)', TestTimeAdapter(model, 'bn').adapt)
    adabn = copy.deepcopy(model)
    recalibrate_bn(adabn, batches, progress=False, logger=None)
    evaluate('AdaBN (offline)', source(adabn))
    adam = dict(type='Adam', lr=lr, betas=(0.9, 0.999))
    for name, method, extra in (
        ('tent', 'tent', {}),
        ('tent + safeguards', 'tent', SAFEGUARDS),
        ('sar', 'sar', SAR),
        ('eata', 'eata', dict(EATA, fisher_loader=fisher)),
        ('cotta', 'cotta', dict(COTTA, optimizer=dict(adam, lr=cotta_lr))),
    ):
        extra = dict(dict(optimizer=adam), **extra)
        adapter = TestTimeAdapter(model, method, logger=None, **extra)
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
    head = '| method | ' + ' | '.join(phase_names) + ' | whole stream | resets | seconds |'
    lines = [head, '|---|' + '---:|' * (len(phase_names) + 3)]
    for name, row in rows.items():
        cells = [f'{row["phases"][p]:.1f}' for p in phase_names]
        resets = '' if row['resets'] is None else str(row['resets'])
        lines.append(f'| {name} | ' + ' | '.join(cells) +
                     f' | {row["stream"]:.1f} | {resets} | {row["seconds"]:.0f} |')
    return '\n'.join(lines) + '\n'


def plot(models: Dict[str, Dict[str, dict]], phases: List[str], batch_size: int,
         out_file: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(
        1, len(models), figsize=(6.5 * len(models), 3.8), sharey=True, squeeze=False)
    frames = [(i + 1) * batch_size for i in range(len(phases))]
    for ax, (label, rows) in zip(axes[0], models.items()):
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
            line, = ax.plot(frames, row['curve'], label=name, lw=1.3)
            for b in row['reset_batches']:
                ax.plot(frames[b - 1], row['curve'][b - 1], 'v', color=line.get_color(), ms=5)
        ax.set_title(label, fontsize=9, pad=14)
        ax.set_xlabel('frame of the stream')
        ax.legend(fontsize=6.5, loc='lower left')
    axes[0][0].set_ylabel('mIoU (%)')
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    from mmnorm_tools import setup_runtime
    setup_runtime()  # Runner checkpoints load with torch's weights-only unpickler
    from mmnorm.runtime import check_checkpoint_file, user_errors
    with user_errors(TOOL):
        for _, checkpoint in args.pairs:
            check_checkpoint_file(checkpoint)
    # every model built and loaded before the stream is written: a bad config or checkpoint stops
    # the tool before any work
    loaded = [load_model(config, checkpoint) for config, checkpoint in args.pairs]
    from mmnorm.datasets.synthetic_stream import generate_drifting_stream
    t0 = time.time()
    try:
        schedule = generate_drifting_stream(args.stream_root, args.frames, seed=args.seed)
    except FileExistsError as err:  # a stream of another length / seed is there: never overwrite it
        sys.exit(f'tta_stream.py: {err}. Pass --stream-root with a new folder for --frames '
                 f'{args.frames} --seed {args.seed}.')
    models, phases = {}, None
    for label, (cfg, model) in zip(args.labels, loaded):
        batches = stream_batches(cfg, args.stream_root, args.batch_size)
        fisher_root = args.fisher_root or cfg.train_dataloader.dataset.data_root
        fisher = fisher_batches(cfg, fisher_root, args.fisher_frames, args.batch_size)
        phases = [schedule[i * args.batch_size]['phase'] for i in range(len(batches))]
        runs = run_methods(model, batches, args.lr, args.cotta_lr, fisher,
                           model.decode_head.num_classes, label)
        models[label] = summarise(runs, phases, args.window)
    phase_names = list(dict.fromkeys(phases))
    os.makedirs(args.out_dir, exist_ok=True)
    table = ''.join(f'{label}:\n\n{to_markdown(rows, phase_names)}\n'
                    for label, rows in models.items())
    with open(osp.join(args.out_dir, 'stream_results.md'), 'w') as f:
        f.write(table)
    with open(osp.join(args.out_dir, 'stream_results.json'), 'w') as f:
        json.dump(
            dict(
                models=models,
                phases=phases,
                lr=args.lr,
                cotta_lr=args.cotta_lr,
                safeguards=SAFEGUARDS,
                sar=SAR,
                eata=dict(EATA, fisher_frames=args.fisher_frames),
                cotta=COTTA,
                frames=args.frames),
            f,
            indent=1)
    plot(models, phases, args.batch_size, osp.join(args.out_dir, 'stream_miou.png'))
    print(table + f'written to {args.out_dir} in {time.time() - t0:.0f} s')


if __name__ == '__main__':
    main()
