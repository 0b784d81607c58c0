"""The embedded synthetic source -> target experiment behind ``make demo``.

    python tools/demo.py [--data-root data/demo] [--work-dir work_dirs/demo] [--methods BN ...] [--iters N]

1. Writes the synthetic domains on disk (GTA5 layout source, Cityscapes layout target; skipped when present).
2. Trains each method's config with ``tools/train.py`` and tests the checkpoint with ``tools/test.py`` on the source
   val split and on the target val split (real tools, real configs, real files).
3. Prints a table of source-val and target mIoU and writes it to ``<work-dir>/results.md`` and ``results.json``.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

# name -> (config, extra train/test options). A norm is a config switch: each entry is one demo config.
METHODS: Dict[str, str] = {
    'BN': 'configs/demo/deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py',
}


def data_options(root: str) -> List[str]:
    """cfg-options that point a demo config at the demo data under ``root``."""
    src, tgt = osp.join(root, 'gta5'), osp.join(root, 'cityscapes')
    return [f'train_dataloader.dataset.data_root={src}', f'val_dataloader.dataset.data_root={src}',
            f'test_dataloader.dataset.data_root={tgt}']


def source_test_options(root: str) -> List[str]:
    """cfg-options that make ``tools/test.py`` evaluate on the source val split instead of the target."""
    return ['test_dataloader.dataset.type=GTA5Dataset', f'test_dataloader.dataset.data_root={osp.join(root, "gta5")}',
            'test_dataloader.dataset.ann_file=val.txt', 'test_dataloader.dataset.data_prefix.img_path=images',
            'test_dataloader.dataset.data_prefix.seg_map_path=labels']


def run(cmd: List[str], log_file: str) -> None:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    with open(log_file, 'w') as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log_file) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f'{" ".join(cmd)} failed (exit {proc.returncode}); log {log_file}:\n{tail}')


def last_checkpoint(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def run_method(name: str, config: str, args) -> Dict[str, float]:
    work_dir = osp.join(args.work_dir, name)
    os.makedirs(work_dir, exist_ok=True)
    opts = data_options(args.data_root) + [f'randomness.seed={args.seed}']
    opts += [f'{loader}.{kv}' for kv in args.loader_options
             for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    if args.iters is not None:
        opts += [f'train_cfg.max_iters={args.iters}', f'train_cfg.val_interval={args.iters}',
                 f'default_hooks.checkpoint.interval={args.iters}',
                 f'param_scheduler.0.end={args.iters}']
    py = sys.executable
    start = time.time()
    run([py, 'tools/train.py', config, '--work-dir', work_dir, '--cfg-options', *opts],
        osp.join(work_dir, 'train.log'))
    ckpt = last_checkpoint(work_dir)
    results = {}
    for split, extra in (('source', source_test_options(args.data_root)), ('target', [])):
        out = osp.join(work_dir, f'metrics_{split}.json')
        run([py, 'tools/test.py', config, ckpt, '--work-dir', work_dir, '--metrics-out', out,
             '--cfg-options', *opts, *extra], osp.join(work_dir, f'test_{split}.log'))
        with open(out) as f:
            results[split] = json.load(f)['mIoU']
    results['seconds'] = time.time() - start
    return results


def to_markdown(rows: Dict[str, Dict[str, float]]) -> str:
    lines = ['| method | source-val mIoU | target mIoU | time (s) |', '|---|---:|---:|---:|']
    for name, r in rows.items():
        lines.append(f"| {name} | {r['source']:.2f} | {r['target']:.2f} | {r['seconds']:.0f} |")
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-root', default='data/demo')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--iters', type=int, default=None, help='override the configs\' 1k iterations')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-source-train', type=int, default=800)
    parser.add_argument('--num-source-val', type=int, default=100)
    parser.add_argument('--num-target', type=int, default=200, help='frames per target split (train pool, val)')
    parser.add_argument('--data-seed', type=int, default=0, help='seed of the synthetic data generator')
    parser.add_argument('--loader-options', nargs='+', default=[],
                        help='key=value applied to every dataloader, e.g. num_workers=0 batch_size=4')
    args = parser.parse_args(argv)

    from mmnorm.datasets.synthetic import generate_demo_data
    start = time.time()
    generate_demo_data(args.data_root, num_source_train=args.num_source_train, num_source_val=args.num_source_val,
                       num_target_train=args.num_target, num_target_val=args.num_target, seed=args.data_seed)
    rows = {name: run_method(name, METHODS[name], args) for name in args.methods}
    table = to_markdown(rows)
    os.makedirs(args.work_dir, exist_ok=True)
    with open(osp.join(args.work_dir, 'results.md'), 'w') as f:
        f.write(table)
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(rows, f, indent=2)
    print('\nSynthetic GTA5-like -> Cityscapes-like (mIoU over the 8 classes present):\n')
    print(table)
    print(f'total {time.time() - start:.0f} s; results in {args.work_dir}/results.md')
    return rows


if __name__ == '__main__':
    main()
