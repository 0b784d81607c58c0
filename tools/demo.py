"""The embedded synthetic source -> target experiment behind ``make demo``.

    python tools/demo.py [--methods BN AdaBN ...] [--seeds 0 1 2] [--iters 400] [--jobs 1] [--fast]
                         [--data-root data/demo] [--work-dir work_dirs/demo]

1. Writes the synthetic domains on disk (GTA5 layout source, Cityscapes layout target; skipped when present).
2. For every method and seed, trains the method's demo config with ``tools/train.py``, whose final validation runs
   on the source val split (the source-val mIoU, no test-time adaptation), and tests the checkpoint with
   ``tools/test.py`` on the target val split (the method as deployed). Methods that only adapt at test time (AdaBN)
   reuse the weights, and so the source-val mIoU, of the method they build on.
3. Prints one table — source-val mIoU, target mIoU, share of the BN source->target gap closed, each mean ± std over
   the seeds (the gap share is computed per seed against BN of the same seed) — and writes it to
   ``<work-dir>/results.md``, ``results.json`` and a bar chart ``results.png``.

Every row uses the same data, seeds, schedule and test protocol; only the config differs.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

DEMO = 'configs/demo/deeplabv3plus_r18-mini-d8-{}_1xb8-1k_demo-gta5-cityscapes-64x128.py'
DEFAULT_DATA_ROOT = 'data/demo'
# name -> config, and for test-time-only methods the method whose trained weights they start from.
METHODS: Dict[str, dict] = {
    'BN': dict(config=DEMO.format('bn')),
    'AdaBN': dict(config=DEMO.format('adabn'), weights_from='BN'),
    'IBN-a': dict(config=DEMO.format('ibn-a')),
    'IBN-a + AdaBN': dict(config=DEMO.format('ibn-a-adabn'), weights_from='IBN-a'),
    'IBN-b': dict(config=DEMO.format('ibn-b')),
    'PBN': dict(config=DEMO.format('pbn')),
    'RN (UDA)': dict(config=DEMO.format('rn-uda')),
}


def data_root_options(config: str, data_root: str) -> List[str]:
    """cfg-options re-pointing every ``data_root`` under ``data/demo`` in ``config`` to ``data_root``."""
    from mmengine.config import Config
    if osp.normpath(data_root) == DEFAULT_DATA_ROOT:
        return []
    opts = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == 'data_root' and isinstance(value, str) and value.startswith(DEFAULT_DATA_ROOT):
                    opts.append(f'{path}{key}={data_root}{value[len(DEFAULT_DATA_ROOT):]}')
                else:
                    walk(value, f'{path}{key}.')
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f'{path}{i}.')

    cfg = Config.fromfile(osp.join(REPO, config))
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'custom_hooks'):
        walk(cfg.get(key), f'{key}.')
    return opts


def final_val_miou(work_dir: str) -> float:
    """The mIoU of the last validation ``tools/train.py`` ran (from the run's ``vis_data/scalars.json``)."""
    runs = sorted(d for d in os.listdir(work_dir) if osp.isfile(osp.join(work_dir, d, 'vis_data', 'scalars.json')))
    if not runs:
        raise RuntimeError(f'no vis_data/scalars.json under {work_dir}: did training validate?')
    with open(osp.join(work_dir, runs[-1], 'vis_data', 'scalars.json')) as f:
        vals = [json.loads(line) for line in f if '"mIoU"' in line]
    if not vals:
        raise RuntimeError(f'training in {work_dir} logged no validation mIoU')
    return vals[-1]['mIoU']


def run(cmd: List[str], log_file: str, threads: int) -> None:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log_file, 'w') as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log_file) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f'{" ".join(cmd)} failed (exit {proc.returncode}); log {log_file}:\n{tail}')


class Experiment:
    """Runs the (method, seed) grid; training jobs of independent methods run ``jobs`` at a time."""

    def __init__(self, args):
        self.args = args
        self.threads = max(1, (os.cpu_count() or 2) // args.jobs)

    def options(self, config: str, seed: int) -> List[str]:
        a = self.args
        opts = data_root_options(config, a.data_root) + [f'randomness.seed={seed}']
        opts += [f'{loader}.{kv}' for kv in a.loader_options
                 for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
        if a.iters is not None:
            opts += [f'train_cfg.max_iters={a.iters}', f'train_cfg.val_interval={a.iters}',
                     f'default_hooks.checkpoint.interval={a.iters}', f'param_scheduler.0.end={a.iters}']
        return opts

    def work_dir(self, name: str, seed: int) -> str:
        slug = name.replace(' ', '').replace('+', '_').replace('(', '-').replace(')', '')
        return osp.join(self.args.work_dir, f'seed{seed}', slug)

    def train(self, name: str, seed: int) -> Tuple[str, float]:
        """Trains (unless ``--reuse`` finds a checkpoint); returns the checkpoint and its source-val mIoU."""
        config, work_dir = METHODS[name]['config'], self.work_dir(name, seed)
        os.makedirs(work_dir, exist_ok=True)
        last = osp.join(work_dir, 'last_checkpoint')
        if not (self.args.reuse and osp.exists(last)):
            run([sys.executable, 'tools/train.py', config, '--work-dir', work_dir, '--cfg-options',
                 *self.options(config, seed)], osp.join(work_dir, 'train.log'), self.threads)
        with open(last) as f:
            return f.read().strip(), final_val_miou(work_dir)

    def test_target(self, name: str, seed: int, checkpoint: str) -> float:
        config, work_dir = METHODS[name]['config'], self.work_dir(name, seed)
        os.makedirs(work_dir, exist_ok=True)
        out = osp.join(work_dir, 'metrics_target.json')
        run([sys.executable, 'tools/test.py', config, checkpoint, '--work-dir', work_dir, '--metrics-out', out,
             '--cfg-options', *self.options(config, seed)], osp.join(work_dir, 'test_target.log'), self.threads)
        with open(out) as f:
            return json.load(f)['mIoU']

    def run_method(self, name: str, seed: int, trained: Dict) -> Dict[str, float]:
        start = time.time()
        base = METHODS[name].get('weights_from')
        ckpt, source = trained[(base, seed)] if base else self.train(name, seed)
        trained[(name, seed)] = (ckpt, source)
        return dict(source=source, target=self.test_target(name, seed, ckpt), seconds=time.time() - start)

    def run_all(self) -> Dict[str, Dict[int, Dict[str, float]]]:
        names, seeds = self.args.methods, self.args.seeds
        trained = [n for n in names if 'weights_from' not in METHODS[n]]
        derived = [n for n in names if 'weights_from' in METHODS[n]]
        for n in derived:
            if METHODS[n]['weights_from'] not in names:
                raise ValueError(f'method {n!r} reuses the weights of {METHODS[n]["weights_from"]!r}; '
                                 'list that method too')
        done: Dict = {}
        results: Dict[str, Dict[int, Dict[str, float]]] = {n: {} for n in names}
        with ThreadPoolExecutor(self.args.jobs) as pool:
            jobs = {(n, s): pool.submit(self.run_method, n, s, done) for s in seeds for n in trained}
            for key, job in jobs.items():
                results[key[0]][key[1]] = job.result()
            jobs = {(n, s): pool.submit(self.run_method, n, s, done) for s in seeds for n in derived}
            for key, job in jobs.items():
                results[key[0]][key[1]] = job.result()
        return {n: results[n] for n in names}


def summarise(results: Dict[str, Dict[int, Dict[str, float]]]) -> Dict[str, dict]:
    """Mean ± std (over seeds) of source / target mIoU and of the per-seed share of BN's gap closed."""

    def stats(values: List[float]) -> dict:
        return dict(mean=statistics.mean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
                    values=values)

    rows = {}
    bn = results.get('BN')
    for name, per_seed in results.items():
        seeds = sorted(per_seed)
        row = dict(source=stats([per_seed[s]['source'] for s in seeds]),
                   target=stats([per_seed[s]['target'] for s in seeds]), seeds=seeds)
        if bn is not None and all(s in bn for s in seeds):
            gaps = [100 * (per_seed[s]['target'] - bn[s]['target']) / max(bn[s]['source'] - bn[s]['target'], 1e-6)
                    for s in seeds]
            row['gap_closed'] = stats(gaps)
        rows[name] = row
    return rows


def fmt(stat: Optional[dict], digits: int = 1) -> str:
    if stat is None:
        return '–'
    if len(stat['values']) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def to_markdown(rows: Dict[str, dict]) -> str:
    lines = ['| method | source-val mIoU | target mIoU | BN gap closed (%) |', '|---|---:|---:|---:|']
    for name, r in rows.items():
        lines.append(f"| {name} | {fmt(r['source'])} | {fmt(r['target'])} | {fmt(r.get('gap_closed'))} |")
    return '\n'.join(lines) + '\n'


def plot(rows: Dict[str, dict], out_file: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(rows)
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.6))
    width = 0.38
    for offset, key, label in ((-width / 2, 'source', 'source val'), (width / 2, 'target', 'target')):
        ax.bar([x + offset for x in xs], [rows[n][key]['mean'] for n in names], width,
               yerr=[rows[n][key]['std'] for n in names], capsize=3, label=label)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=20, ha='right')
    ax.set_ylabel('mIoU')
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_file, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-root', default=DEFAULT_DATA_ROOT)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--iters', type=int, default=400,
                        help='training iterations of every method (the configs alone train 1k)')
    parser.add_argument('--jobs', type=int, default=1,
                        help='trainings run in parallel (CPU threads are split; on 2 cores 1 is fastest)')
    parser.add_argument('--fast', action='store_true', help='a quick look: one seed, 200 iterations')
    parser.add_argument('--reuse', action='store_true', help='skip trainings whose checkpoint exists')
    parser.add_argument('--num-source-train', type=int, default=800)
    parser.add_argument('--num-source-val', type=int, default=100)
    parser.add_argument('--num-target', type=int, default=200, help='frames per target split (train pool, val)')
    parser.add_argument('--data-seed', type=int, default=0, help='seed of the synthetic data generator')
    parser.add_argument('--loader-options', nargs='+', default=[],
                        help='key=value applied to every dataloader, e.g. num_workers=0 batch_size=4')
    args = parser.parse_args(argv)
    if args.fast:
        args.seeds = args.seeds[:1]
        args.iters = 200
    if args.jobs < 1:
        parser.error(f'--jobs must be >= 1, got {args.jobs}')

    from mmnorm.datasets.synthetic import generate_demo_data
    start = time.time()
    generate_demo_data(args.data_root, num_source_train=args.num_source_train, num_source_val=args.num_source_val,
                       num_target_train=args.num_target, num_target_val=args.num_target, seed=args.data_seed)
    results = Experiment(args).run_all()
    rows = summarise(results)
    table = to_markdown(rows)
    iters = args.iters or 1000
    title = (f'synthetic GTA5-like -> Cityscapes-like, {iters} iterations, seeds {args.seeds} '
             '(mIoU over the 8 classes present)')
    os.makedirs(args.work_dir, exist_ok=True)
    with open(osp.join(args.work_dir, 'results.md'), 'w') as f:
        f.write(f'{title}\n\n{table}')
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(dict(per_seed=results, summary=rows, iters=iters, seeds=args.seeds), f, indent=2)
    plot(rows, osp.join(args.work_dir, 'results.png'), title)
    print(f'\n{title}\n')
    print(table)
    print(f'total {time.time() - start:.0f} s; results in {args.work_dir}/results.md, results.png')
    return rows


if __name__ == '__main__':
    main()
