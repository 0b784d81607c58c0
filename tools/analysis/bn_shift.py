"""Per-layer shift of BN statistics between a source and a target data set, before and after AdaBN.

    python tools/analysis/bn_shift.py CONFIG CHECKPOINT --source val --target test [--num-batches N]
        [--out-dir DIR] [--cfg-options k=v ...]

``--source`` / ``--target`` name a dataloader of the config (``train``, ``val`` or ``test``); point
them at other data with ``--cfg-options`` (e.g. ``test_dataloader.dataset.data_root=...``). Samplers
are replaced by an ordered ``DefaultSampler`` so each pass is finite and repeatable. Works on mmseg
and mmdet models and every BN-like mmnorm layer. Writes ``bn_shift.md`` (table), ``bn_shift.csv``
and ``bn_shift.png`` (distances by depth) to ``--out-dir``.

Columns: for every BN-like layer in execution order, the symmetric KL and mean shift |Δμ|/σ between
the statistics of its input on source and on target data (source-trained model), then the symmetric
KL between the statistics the layer normalises with in eval mode and those of its actual target
input, before and after ``recalibrate_bn`` on the target data. The plot has one log-scale panel per
measure, with the stage / head boundaries and the layer names on the x axis; a progress bar counts
the four passes over the data.
"""
import argparse
import copy
import csv
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import Runner
from mmnorm_tools import setup_runtime
from mmnorm_tools.checkpoints import add_strict_load_argument, load_weights
from mmnorm_tools.config import describe_argument_error, merge_cfg_options

import mmnorm  # noqa: F401
from mmnorm.analysis import compare_moments, input_moments, running_moments
from mmnorm.recalibration import find_bn_layers, recalibrate_bn
from mmnorm.runtime import check_checkpoint_file, get_toolbox, user_errors

LOADERS = ('train', 'val', 'test')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='BN statistics shift between two domains')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument(
        '--source', choices=LOADERS, default='train', help='dataloader holding source data')
    parser.add_argument(
        '--target', choices=LOADERS, default='test', help='dataloader holding target data')
    parser.add_argument(
        '--num-batches', type=int, default=None, help='batches per domain (default: all)')
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--out-dir', default='work_dirs/bn_shift')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    add_strict_load_argument(parser)
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


def analyse(cfg: Config,
            checkpoint: str,
            source: str,
            target: str,
            num_batches=None,
            batch_size=None,
            strict_load=True):
    """Returns the table rows (one dict per BN-like layer, in execution order of the first
    forward)."""
    init_default_scope(get_toolbox(cfg))
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    load_weights(model, checkpoint, strict=strict_load)  # refuses weights that do not fit
    layers, _ = find_bn_layers(model)
    src_loader = build_loader(cfg, source, batch_size)
    tgt_loader = build_loader(cfg, target, batch_size)
    from mmengine.utils import ProgressBar
    passes = ProgressBar(4)  # source, target, recalibration, target again
    src = input_moments(model, src_loader, num_batches, layers)
    passes.update()
    tgt = input_moments(model, tgt_loader, num_batches, layers)
    passes.update()
    before = compare_moments(running_moments(layers), tgt)
    src_tgt = compare_moments(src, tgt)
    recalibrate_bn(model, tgt_loader, num_iters=num_batches, progress=False)
    passes.update()
    tgt_after = input_moments(model, tgt_loader, num_batches, layers)
    passes.update()
    passes.file.write('\n')
    after = compare_moments(running_moments(layers), tgt_after)
    rows = []
    for depth, name in enumerate(n for n in layers if n in src_tgt):
        rows.append(
            dict(
                depth=depth,
                layer=name,
                channels=int(src[name][1].numel()),
                kl_source_target=src_tgt[name][0],
                shift_source_target=src_tgt[name][1],
                kl_running_target_before=before[name][0],
                kl_running_target_after=after[name][0]))
    return rows


def write_outputs(rows, out_dir: str, title: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, 'bn_shift.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f'# BN statistics shift: {title}', '',
        '| # | layer | C | sym. KL src↔tgt | \\|Δμ\\|/σ src↔tgt | sym. KL running↔tgt before '
        'AdaBN | after |', '|---:|---|---:|---:|---:|---:|---:|'
    ]
    for r in rows:
        lines.append(
            f"| {r['depth']} | {r['layer']} | {r['channels']} | {r['kl_source_target']:.4f} | "
            f"{r['shift_source_target']:.4f} | {r['kl_running_target_before']:.4f} | "
            f"{r['kl_running_target_after']:.4f} |")
    with open(osp.join(out_dir, 'bn_shift.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    plot(rows, osp.join(out_dir, 'bn_shift.png'), title)


def layer_group(name: str) -> str:
    """The stage / head a layer belongs to: ``backbone.layer2.0.bn1`` -> ``backbone.layer2``,
    ``decode_head``."""
    parts = name.split('.')
    if parts[0] == 'backbone' and len(parts) > 2 and parts[1].startswith(('layer', 'stage', 'res')):
        return '.'.join(parts[:2])
    if parts[0] == 'backbone':
        return 'backbone.stem'
    return parts[0]


def plot(rows, out_file: str, title: str) -> None:
    """One panel per measure, log scale, stage / head boundaries and layer names on the x axis.

    Exact zeros (log scale cannot show them) are not drawn; each panel's legend says how many there
    are.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    depth = np.array([r['depth'] for r in rows])
    names = [r['layer'] for r in rows]
    panels = [('sym. KL, input statistics: source vs target', [('kl_source_target',
                                                                'source vs target', 'o-')]),
              ('|Δμ|/σ, input statistics: source vs target', [('shift_source_target',
                                                               'source vs target', 's-')]),
              ('sym. KL, eval statistics vs target input',
               [('kl_running_target_before', 'before AdaBN', 'o-'),
                ('kl_running_target_after', 'after AdaBN', 's-')])]
    width = max(8.0, 0.16 * len(rows) + 2)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.0 * len(panels) + 1.5), sharex=True)
    groups = [layer_group(n) for n in names]
    bounds = [i for i in range(1, len(groups)) if groups[i] != groups[i - 1]]
    for ax, (panel_title, series) in zip(axes, panels):
        for key, label, style in series:
            values = np.array([r[key] for r in rows], dtype=float)
            zeros = int((values <= 0).sum())
            shown = np.where(values > 0, values, np.nan)
            note = f' ({zeros} exact zeros not shown)' if zeros else ''
            ax.semilogy(depth, shown, style, markersize=3, label=label + note)
        for b in bounds:
            ax.axvline(b - 0.5, color='grey', linestyle='--', linewidth=0.7)
        ax.set_title(panel_title, fontsize=9)
        ax.grid(True, which='major', axis='y', alpha=0.3)
        ax.legend(fontsize=7)
    starts = [0] + bounds
    ends = bounds + [len(groups)]
    for start, end in zip(starts, ends):
        axes[0].annotate(
            groups[start],
            xy=((start + end - 1) / 2, 1.0),
            xycoords=('data', 'axes fraction'),
            ha='center',
            va='bottom',
            fontsize=7,
            color='dimgrey')
    axes[-1].set_xticks(depth)
    axes[-1].set_xticklabels(names, rotation=90, fontsize=5 if len(rows) > 40 else 7)
    axes[-1].set_xlabel('BN-like layer, in execution order')
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_file, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    setup_runtime()  # Runner checkpoints load with torch's weights-only unpickler
    with user_errors('tools/analysis/bn_shift.py', (FileNotFoundError, ValueError)):
        check_checkpoint_file(args.checkpoint)
        if not osp.isfile(args.config):
            raise FileNotFoundError(f'config file not found: {args.config!r}')
        cfg = Config.fromfile(args.config)
        merge_cfg_options(cfg, args.cfg_options)  # data_roots.<dataset>=PATH moves that dataset
        get_toolbox(cfg)
    # a bad mmnorm layer argument (named by its config key), weights that do not fit
    with user_errors(
            'tools/analysis/bn_shift.py', describe=lambda err: describe_argument_error(err, cfg)):
        rows = analyse(cfg, args.checkpoint, args.source, args.target, args.num_batches,
                       args.batch_size, args.strict_load)
    title = f'{osp.basename(args.config)}: {args.source} -> {args.target}'
    with user_errors('tools/analysis/bn_shift.py'):
        write_outputs(rows, args.out_dir, title)
    with open(osp.join(args.out_dir, 'bn_shift.md')) as f:
        print(f.read())
    return rows


if __name__ == '__main__':
    main()
