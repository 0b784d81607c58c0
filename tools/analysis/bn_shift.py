"""Per-layer shift of BN statistics between a source and a target data set, before and after AdaBN.

    python tools/analysis/bn_shift.py CONFIG CHECKPOINT --source val --target test [--num-batches N]
        [--out-dir DIR] [--cfg-options k=v ...]

``--source`` / ``--target`` name a dataloader of the config (``train``, ``val`` or ``test``); point them at other
data with ``--cfg-options`` (e.g. ``test_dataloader.dataset.data_root=...``). Samplers are replaced by an ordered
``DefaultSampler`` so each pass is finite and repeatable. Works on mmseg and mmdet models and every BN-like mmnorm
layer. Writes ``bn_shift.md`` (table), ``bn_shift.csv`` and ``bn_shift.png`` (distances by depth) to ``--out-dir``.

Columns: for every BN-like layer in execution order, the symmetric KL and mean shift |Δμ|/σ between the statistics
of its input on source and on target data (source-trained model), then the symmetric KL between the statistics
the layer normalises with in eval mode and those of its actual target input, before and after
``recalibrate_bn`` on the target data.
"""
import argparse
import copy
import csv
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402
from mmengine.runner import Runner, load_checkpoint  # noqa: E402

import mmnorm  # noqa: E402,F401
from mmnorm.analysis import compare_moments, input_moments, running_moments  # noqa: E402
from mmnorm.recalibration import find_bn_layers, recalibrate_bn  # noqa: E402
from mmnorm.runtime import get_toolbox  # noqa: E402

LOADERS = ('train', 'val', 'test')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='BN statistics shift between two domains')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--source', choices=LOADERS, default='train', help='dataloader holding source data')
    parser.add_argument('--target', choices=LOADERS, default='test', help='dataloader holding target data')
    parser.add_argument('--num-batches', type=int, default=None, help='batches per domain (default: all)')
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--out-dir', default='work_dirs/bn_shift')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if args.num_batches is not None and args.num_batches <= 0:
        parser.error(f'--num-batches must be positive, got {args.num_batches}')
    return args


def build_loader(cfg: Config, which: str, batch_size=None):
    loader_cfg = copy.deepcopy(cfg[f'{which}_dataloader'])
    loader_cfg['sampler'] = dict(type='DefaultSampler', shuffle=False, round_up=False)
    loader_cfg.pop('batch_sampler', None)
    if batch_size is not None:
        loader_cfg['batch_size'] = batch_size
    return Runner.build_dataloader(loader_cfg)


def analyse(cfg: Config, checkpoint: str, source: str, target: str, num_batches=None, batch_size=None):
    """Returns the table rows (one dict per BN-like layer, in execution order of the first forward)."""
    init_default_scope(get_toolbox(cfg))
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    load_checkpoint(model, checkpoint, map_location='cpu', logger='current')
    layers, _ = find_bn_layers(model)
    src_loader = build_loader(cfg, source, batch_size)
    tgt_loader = build_loader(cfg, target, batch_size)
    src = input_moments(model, src_loader, num_batches, layers)
    tgt = input_moments(model, tgt_loader, num_batches, layers)
    before = compare_moments(running_moments(layers), tgt)
    src_tgt = compare_moments(src, tgt)
    recalibrate_bn(model, tgt_loader, num_iters=num_batches, progress=False)
    tgt_after = input_moments(model, tgt_loader, num_batches, layers)
    after = compare_moments(running_moments(layers), tgt_after)
    rows = []
    for depth, name in enumerate(n for n in layers if n in src_tgt):
        rows.append(dict(depth=depth, layer=name, channels=int(src[name][1].numel()),
                         kl_source_target=src_tgt[name][0], shift_source_target=src_tgt[name][1],
                         kl_running_target_before=before[name][0], kl_running_target_after=after[name][0]))
    return rows


def write_outputs(rows, out_dir: str, title: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, 'bn_shift.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f'# BN statistics shift: {title}', '',
             '| # | layer | C | sym. KL src↔tgt | \\|Δμ\\|/σ src↔tgt | sym. KL running↔tgt before AdaBN | after |',
             '|---:|---|---:|---:|---:|---:|---:|']
    for r in rows:
        lines.append(f"| {r['depth']} | {r['layer']} | {r['channels']} | {r['kl_source_target']:.4f} | "
                     f"{r['shift_source_target']:.4f} | {r['kl_running_target_before']:.4f} | "
                     f"{r['kl_running_target_after']:.4f} |")
    with open(osp.join(out_dir, 'bn_shift.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    depth = [r['depth'] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].plot(depth, [r['kl_source_target'] for r in rows], 'o-', label='sym. KL')
    axes[0].plot(depth, [r['shift_source_target'] for r in rows], 's-', label='|Δμ|/σ')
    axes[0].set_title('input statistics: source vs target')
    axes[1].semilogy(depth, [max(r['kl_running_target_before'], 1e-12) for r in rows], 'o-', label='before AdaBN')
    axes[1].semilogy(depth, [max(r['kl_running_target_after'], 1e-12) for r in rows], 's-', label='after AdaBN')
    axes[1].set_title('normalising stats vs target input (sym. KL)')
    for ax in axes:
        ax.set_xlabel('BN layer (execution order)')
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(osp.join(out_dir, 'bn_shift.png'), dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint!r}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    rows = analyse(cfg, args.checkpoint, args.source, args.target, args.num_batches, args.batch_size)
    title = f'{osp.basename(args.config)}: {args.source} -> {args.target}'
    write_outputs(rows, args.out_dir, title)
    with open(osp.join(args.out_dir, 'bn_shift.md')) as f:
        print(f.read())
    return rows


if __name__ == '__main__':
    main()
