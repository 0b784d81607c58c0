"""The embedded synthetic source -> target experiment behind ``make demo``.

    python tools/demo.py [--methods BN AdaBN ...] [--seeds 0 1 2] [--iters 200] [--jobs 2] [--fast]
                         [--data-root data/demo] [--work-dir work_dirs/demo or demo-fast] [--reuse]
                         [--no-stream]

1. Writes the synthetic domains on disk (GTA5 layout source, Cityscapes layout target; skipped when
   present).
2. For every method and seed, trains the method's demo config with ``tools/train.py --test-last``:
   its final validation runs on the source val split (the source-val mIoU, no test-time adaptation),
   then the final weights are tested on the target val split in the same process (the method as
   deployed). Methods that only adapt at test time (AdaBN, the test-time adaptation rows) test the
   weights of the method they build on with ``tools/test.py`` and their own config, and share its
   source-val mIoU.
3. Prints one table — source-val mIoU, target mIoU, share of the BN source->target gap closed, each
   mean ± std over the seeds (the gap share is computed per seed against BN of the same seed) — and
   writes it to ``<work-dir>/results.md``, ``results.json`` and a bar chart ``results.png``.
4. Continual stream (``tools/analysis/tta_stream.py``): the first-seed checkpoints of BN and of a
   small SegFormer (LayerNorm backbone; trained on the first seed only) tested on a drifting target
   stream in order — source, test-batch BN statistics, offline AdaBN, and continual TENT (without
   and with the safeguards), SAR, EATA, CoTTA — tables and mIoU curves under
   ``<work-dir>/stream/``.

EFDMix and PBN + MixStyle are not run by default (``--methods`` still runs them): they told the
least in earlier runs (within one standard deviation of BN and of MixStyle) and ``make demo`` has
15 minutes on 2 cores.

Every row uses the same data, seeds, schedule and test protocol; only the config differs.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

DEMO = 'configs/demo/deeplabv3plus_r18-mini-d8-{}_1xb8-1k_demo-gta5-cityscapes-64x128.py'
SEGFORMER = 'configs/demo/segformer_mit-mini_1xb8-1k_demo-gta5-cityscapes-64x128.py'
DEFAULT_DATA_ROOT = 'data/demo'
# name -> config, and for test-time-only methods the method whose trained weights they start from.
# Not run by default (kept runnable with --methods; `make demo` has no time for them):
# EFDMix and PBN + MixStyle.
METHODS: Dict[str, dict] = {
    'BN': dict(config=DEMO.format('bn')),
    'AdaBN': dict(config=DEMO.format('adabn'), weights_from='BN'),
    'IBN-a': dict(config=DEMO.format('ibn-a')),
    'IBN-a + AdaBN': dict(config=DEMO.format('ibn-a-adabn'), weights_from='IBN-a'),
    'IBN-b': dict(config=DEMO.format('ibn-b')),
    'PBN': dict(config=DEMO.format('pbn')),
    'IW': dict(config=DEMO.format('iw')),
    'ISW': dict(config=DEMO.format('isw')),
    'RN (UDA)': dict(config=DEMO.format('rn-uda')),
    'MixStyle': dict(config=DEMO.format('mixstyle')),
    'DSU': dict(config=DEMO.format('dsu')),
    # LayerNorm transformer: the continual stream's second model, trained on the first seed only
    'SegFormer (mini MiT)': dict(config=SEGFORMER, first_seed_only=True),
    # online test-time adaptation on BN's weights (TestTimeAdaptHook on the target test stream)
    'BN + test-batch stats': dict(config=DEMO.format('bn-tta-bn'), weights_from='BN'),
    'BN + prior': dict(config=DEMO.format('bn-tta-prior'), weights_from='BN'),
    'BN + TENT (episodic)': dict(config=DEMO.format('bn-tta-tent'), weights_from='BN'),
    'EFDMix': dict(config=DEMO.format('efdmix'), default=False),
    'PBN + MixStyle': dict(config=DEMO.format('pbn-mixstyle'), default=False),
}
DEFAULT_METHODS = [n for n, m in METHODS.items() if m.get('default', True)]
# the models of the continual stream: (method whose first-seed weights it tests, label)
STREAM_MODELS = (
    ('BN', 'DeepLabV3+ BN (ResNet-18 mini)'),
    ('SegFormer (mini MiT)', 'SegFormer (mini MiT, LayerNorm)'),
)
STREAM_TOOL = 'tools/analysis/tta_stream.py'


def data_root_options(config: str, data_root: str) -> List[str]:
    """cfg-options re-pointing every ``data_root`` under ``data/demo`` in ``config`` to
    ``data_root``."""
    from mmengine.config import Config
    if osp.normpath(data_root) == DEFAULT_DATA_ROOT:
        return []
    opts = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == 'data_root' and isinstance(value,
                                                     str) and value.startswith(DEFAULT_DATA_ROOT):
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


def schedule_options(config: str, iters: int) -> List[str]:
    """cfg-options moving ``config``'s schedule to ``iters`` iterations: the poly decay's end,
    validation and checkpoint at the end, and every ``ISWStatisticsHook``'s ``after_iter`` scaled
    by the same factor (ISW selects after the same share of training)."""
    from mmengine.config import Config
    opts = [
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}', f'param_scheduler.0.end={iters}'
    ]
    cfg = Config.fromfile(osp.join(REPO, config))
    for i, hook in enumerate(cfg.get('custom_hooks') or []):
        if hook.get('type') == 'ISWStatisticsHook':
            after = round(hook['after_iter'] * iters / cfg.train_cfg.max_iters)
            opts.append(f'custom_hooks.{i}.after_iter={after}')
    return opts


def final_val_miou(work_dir: str) -> float:
    """The mIoU of the last validation ``tools/train.py`` ran (from the run's
    ``vis_data/scalars.json``)."""
    runs = sorted(
        d for d in os.listdir(work_dir)
        if osp.isfile(osp.join(work_dir, d, 'vis_data', 'scalars.json')))
    if not runs:
        raise RuntimeError(f'no vis_data/scalars.json under {work_dir}: did training validate?')
    with open(osp.join(work_dir, runs[-1], 'vis_data', 'scalars.json')) as f:
        vals = [json.loads(line) for line in f if '"mIoU"' in line]
    if not vals:
        raise RuntimeError(f'training in {work_dir} logged no validation mIoU')
    return vals[-1]['mIoU']


def read_miou(metrics_file: str) -> float:
    with open(metrics_file) as f:
        return json.load(f)['mIoU']


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def tested_after(metrics_file: str, checkpoint: str) -> bool:
    """Whether ``metrics_file`` exists and was written after ``checkpoint`` (a test of that
    checkpoint)."""
    return osp.exists(metrics_file) and osp.exists(checkpoint) and osp.getmtime(
        metrics_file) > osp.getmtime(checkpoint)


class JobFailed(RuntimeError):
    """A train/test subprocess exited non-zero; the message names its log and holds the log's
    last lines."""


def thread_count(jobs: int) -> int:
    """CPU threads per job: the user's ``OMP_NUM_THREADS`` when set, else the cores split over
    ``jobs``."""
    user = os.environ.get('OMP_NUM_THREADS', '').strip()
    if user.isdigit() and int(user) > 0:
        return int(user)
    return max(1, (os.cpu_count() or 2) // jobs)


def run(cmd: List[str], log_file: str, threads: int) -> None:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    env.setdefault('OMP_NUM_THREADS', str(threads))
    env.setdefault('MKL_NUM_THREADS', env['OMP_NUM_THREADS'])
    with open(log_file, 'w') as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log_file, errors='replace') as f:
            tail = ''.join(f.readlines()[-25:])
        raise JobFailed(
            f'{" ".join(map(str, cmd[1:3]))} failed (exit {proc.returncode}); log {log_file}, last '
            f'lines:\n{tail}')


class Progress:
    """One line per job start and end: ``[k/total] name seed s train ... 52 s``, elapsed time and
    ETA.

    The ETA assumes every remaining job of a kind (train / test) takes the mean time of the finished
    jobs of that kind (before the first one finishes: ``prior_s``), divided by the number of
    parallel jobs.
    """

    def __init__(self,
                 num_train: int,
                 num_test: int,
                 jobs: int,
                 prior_s: Dict[str, float],
                 stream=None,
                 num_stream: int = 0):
        self.total = num_train + num_test + num_stream
        self.left = dict(train=num_train, test=num_test, stream=num_stream)
        self.durations: Dict[str, List[float]] = dict(train=[], test=[], stream=[])
        self.prior_s = prior_s
        self.jobs = jobs
        self.started = 0
        self.start = time.time()
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def eta(self) -> float:

        def remaining(kind: str) -> float:
            done = self.durations[kind]
            return self.left[kind] * (
                statistics.mean(done) if done else self.prior_s.get(kind, 0.0))

        # trainings, tests and the stream experiment share the parallel jobs
        return (remaining('train') + remaining('test') + remaining('stream')) / self.jobs

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def begin(self, label: str, kind: str, log_file: str) -> Tuple[int, float]:
        with self.lock:
            self.started += 1
            index = self.started
            self._print(f'[{index}/{self.total}] {label} {kind} ... (log {display_path(log_file)})')
        return index, time.time()

    def end(self,
            ticket: Tuple[int, float],
            label: str,
            kind: str,
            result: Optional[str] = None,
            failed: bool = False) -> None:
        index, t0 = ticket
        seconds = time.time() - t0
        with self.lock:
            self.left[kind] -= 1
            if not failed:
                self.durations[kind].append(seconds)
            result = 'FAILED' if failed else (result or 'done')
            elapsed = time.time() - self.start
            self._print(
                f'[{index}/{self.total}] {label} {kind} {result} in {seconds:.0f} s | elapsed '
                f'{format_seconds(elapsed)}, about {format_seconds(self.eta())} left')


def display_path(path: str) -> str:
    """``path`` relative to the repository when it lies inside it, else absolute."""
    path = osp.abspath(path)
    return osp.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f'{seconds // 60} min {seconds % 60:02d} s' if seconds >= 60 else f'{seconds} s'


class Experiment:
    """Runs the (method, seed) grid; training jobs of independent methods run ``jobs`` at a time."""

    def __init__(self, args, progress: Optional[Progress] = None):
        self.args = args
        self.threads = thread_count(args.jobs)
        self.progress = progress

    def job(self, cmd: List[str], log_file: str, label: str, kind: str, read_result, describe=None):
        """Runs one train/test subprocess with a progress line before and after it
        (``describe(result)`` in the end line); returns ``read_result()``."""
        ticket = self.progress.begin(label, kind, log_file) if self.progress else None
        try:
            run(cmd, log_file, self.threads)
            result = read_result()
        except Exception:
            if ticket:
                self.progress.end(ticket, label, kind, failed=True)
            raise
        if ticket:
            self.progress.end(ticket, label, kind, describe(result) if describe else None)
        return result

    def options(self, config: str, seed: int) -> List[str]:
        a = self.args
        opts = data_root_options(config, a.data_root) + [f'randomness.seed={seed}']
        opts += [
            f'{loader}.{kv}' for kv in a.loader_options
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
        ]
        if a.iters is not None:
            opts += schedule_options(config, a.iters)
        return opts

    def work_dir(self, name: str, seed: int) -> str:
        slug = name.replace(' ', '').replace('+', '_').replace('(', '-').replace(')', '')
        return osp.join(self.args.work_dir, f'seed{seed}', slug)

    def train(self, name: str, seed: int) -> Tuple[str, float, float]:
        """Trains and tests on the target (unless ``--reuse`` finds them done); returns the
        checkpoint, its source-val mIoU and its target mIoU."""
        config, work_dir = METHODS[name]['config'], self.work_dir(name, seed)
        os.makedirs(work_dir, exist_ok=True)
        last, out = osp.join(work_dir, 'last_checkpoint'), osp.join(work_dir, 'metrics_target.json')
        label = f'{name} seed {seed}'
        checkpoint = read_text(last) if self.args.reuse and osp.exists(last) else None
        if checkpoint and tested_after(out, checkpoint):
            source, target = final_val_miou(work_dir), read_miou(out)
            if self.progress:  # counted as done at once
                self.progress.end(
                    self.progress.begin(label, 'train', last), label, 'train',
                    f'mIoU {source:.1f} source val, {target:.1f} target')
            return checkpoint, source, target
        cmd = [
            sys.executable, 'tools/train.py', config, '--work-dir', work_dir, '--test-last',
            '--metrics-out', out, '--cfg-options', *self.options(config, seed)
        ]
        source, target = self.job(cmd, osp.join(work_dir, 'train.log'), label, 'train', lambda:
                                  (final_val_miou(work_dir), read_miou(out)),
                                  lambda r: f'mIoU {r[0]:.1f} source val, {r[1]:.1f} target')
        return read_text(last), source, target

    def test_target(self, name: str, seed: int, checkpoint: str) -> float:
        """``tools/test.py`` of ``name``'s config on ``checkpoint`` (unless ``--reuse`` finds
        that test done)."""
        config, work_dir = METHODS[name]['config'], self.work_dir(name, seed)
        os.makedirs(work_dir, exist_ok=True)
        out = osp.join(work_dir, 'metrics_target.json')
        label = f'{name} seed {seed}'
        if self.args.reuse and tested_after(out, checkpoint):
            if self.progress:  # a test of this checkpoint already ran: counted as done at once
                self.progress.end(
                    self.progress.begin(label, 'test', out), label, 'test',
                    f'mIoU {read_miou(out):.1f}')
            return read_miou(out)
        cmd = [
            sys.executable, 'tools/test.py', config, checkpoint, '--work-dir', work_dir,
            '--metrics-out', out, '--cfg-options', *self.options(config, seed)
        ]
        return self.job(cmd, osp.join(work_dir, 'test_target.log'), label, 'test',
                        lambda: read_miou(out), lambda miou: f'mIoU {miou:.1f}')

    def run_method(self, name: str, seed: int, trained: Dict) -> Dict[str, float]:
        start = time.time()
        base = METHODS[name].get('weights_from')
        if base:
            ckpt, source = trained[(base, seed)]
            target = self.test_target(name, seed, ckpt)
        else:
            ckpt, source, target = self.train(name, seed)
            trained[(name, seed)] = (ckpt, source)
        return dict(source=source, target=target, seconds=time.time() - start, checkpoint=ckpt)

    def stream(self, checkpoints: Dict[str, str]) -> str:
        """The continual-stream experiment on the first-seed ``checkpoints`` of the stream models
        (method -> checkpoint); returns its Markdown tables."""
        out_dir = osp.join(self.args.work_dir, 'stream')
        os.makedirs(out_dir, exist_ok=True)
        frames = self.args.stream_frames or (120 if self.args.fast else 240)
        # one folder per stream length, so a --fast look and a full run do not ask for each other's
        # stream
        folder = 'demo_stream' if frames == 240 else f'demo_stream_{frames}f'
        models = [(n, label) for n, label in STREAM_MODELS if n in checkpoints]
        cmd = [sys.executable, STREAM_TOOL]
        for name, _ in models:
            cmd += [METHODS[name]['config'], checkpoints[name]]
        cmd += ['--labels', *[label for _, label in models], '--out-dir', out_dir]
        cmd += [
            '--stream-root',
            osp.join(osp.dirname(self.args.data_root.rstrip('/')) or '.', folder), '--frames',
            str(frames), '--fisher-root',
            osp.join(self.args.data_root, 'gta5')
        ]
        names = ', '.join(n for n, _ in models)
        self.job(cmd, osp.join(out_dir, 'stream.log'),
                 f'continual stream ({names}; seed {self.args.seeds[0]})', 'stream', lambda: None)
        with open(osp.join(out_dir, 'stream_results.md')) as f:
            return f.read()

    def run_all(
            self,
            with_stream: bool = False
    ) -> Tuple[Dict[str, Dict[int, Dict[str, float]]], Optional[str]]:
        """Every (method, seed) job, ``jobs`` at a time, and the stream experiment when asked.

        Trainings are queued first (methods marked ``first_seed_only`` for the first seed only); the
        stream, on the first-seed weights of the stream models, is queued after the first seed's
        trainings, and a test-time-only method's test after all of them; each waits for the
        training it reuses, so no worker idles while a job it could run is ready. Returns
        ``({method: {seed: row}}, the stream's Markdown tables or None)``.
        """
        names, seeds = self.args.methods, self.args.seeds
        trained = [n for n in names if 'weights_from' not in METHODS[n]]
        derived = [n for n in names if 'weights_from' in METHODS[n]]
        for n in derived:
            if METHODS[n]['weights_from'] not in names:
                raise ValueError(
                    f'method {n!r} reuses the weights of {METHODS[n]["weights_from"]!r}; '
                    'list that method too')
        done: Dict = {}
        pool = ThreadPoolExecutor(self.args.jobs)
        try:  # FIFO: every training has started before a job that waits for one runs (no deadlock)
            stream_bases = [(n, seeds[0]) for n, _ in STREAM_MODELS if with_stream and n in names]
            jobs, stream = {}, None

            def stream_job():
                for base in stream_bases:
                    jobs[base].result()  # re-raises the training's failure
                return self.stream({n: done[(n, s)][0] for n, s in stream_bases})

            for s in seeds:
                # the stream's models train first and the stream (the longest job) is queued right
                # after the first seed's trainings, so it runs beside the others, not at the end
                order = [n for n, _ in stream_bases if s == seeds[0]]
                order += [n for n in trained if n not in order]
                for n in order:
                    if s == seeds[0] or not METHODS[n].get('first_seed_only'):
                        jobs[(n, s)] = pool.submit(self.run_method, n, s, done)
                if stream_bases and s == seeds[0]:
                    stream = pool.submit(stream_job)

            def after(base: tuple, fn, *args):
                jobs[base].result()  # re-raises the training's failure
                return fn(*args)

            for s in seeds:
                for n in derived:
                    jobs[(n, s)] = pool.submit(after, (METHODS[n]['weights_from'], s),
                                               self.run_method, n, s, done)
            results: Dict[str, Dict[int, Dict[str, float]]] = {n: {} for n in names}
            for (name, seed), job in sorted(jobs.items(), key=lambda kv: kv[0][1]):
                results[name][seed] = job.result()
            return {n: results[n] for n in names}, stream.result() if stream else None
        finally:
            pool.shutdown(
                wait=True, cancel_futures=True)  # after a failure: queued jobs are dropped


def summarise(results: Dict[str, Dict[int, Dict[str, float]]]) -> Dict[str, dict]:
    """Mean ± std (over seeds) of source / target mIoU and of the per-seed share of BN's gap
    closed."""

    def stats(values: List[float]) -> dict:
        return dict(
            mean=statistics.mean(values),
            std=statistics.stdev(values) if len(values) > 1 else 0.0,
            values=values)

    rows = {}
    bn = results.get('BN')
    for name, per_seed in results.items():
        seeds = sorted(per_seed)
        row = dict(
            source=stats([per_seed[s]['source'] for s in seeds]),
            target=stats([per_seed[s]['target'] for s in seeds]),
            seeds=seeds)
        if bn is not None and all(s in bn for s in seeds):
            gaps = [
                100 * (per_seed[s]['target'] - bn[s]['target']) /
                max(bn[s]['source'] - bn[s]['target'], 1e-6) for s in seeds
            ]
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
    lines = [
        '| method | source-val mIoU | target mIoU | BN gap closed (%) |', '|---|---:|---:|---:|'
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {fmt(r['source'])} | {fmt(r['target'])} | {fmt(r.get('gap_closed'))} |")
    return '\n'.join(lines) + '\n'


def plot(rows: Dict[str, dict], out_file: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(rows)
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.6))
    width = 0.38
    for offset, key, label in ((-width / 2, 'source', 'source val'), (width / 2, 'target',
                                                                      'target')):
        ax.bar([x + offset for x in xs], [rows[n][key]['mean'] for n in names],
               width,
               yerr=[rows[n][key]['std'] for n in names],
               capsize=3,
               label=label)
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
    parser.add_argument(
        '--work-dir',
        default=None,
        help='default: work_dirs/demo (work_dirs/demo-fast with --fast, so a quick look never '
        'replaces a full run)')
    parser.add_argument(
        '--methods',
        nargs='+',
        default=DEFAULT_METHODS,
        choices=list(METHODS),
        help='default: every method but EFDMix and PBN + MixStyle')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument(
        '--iters',
        type=int,
        default=200,
        help='training iterations of every method (the configs alone train 1k)')
    parser.add_argument(
        '--jobs',
        type=int,
        default=min(2,
                    os.cpu_count() or 1),
        help='jobs run in parallel, the CPU threads split between them. Default: 2 (one thread '
        'each on 2 cores): the demo model is too small for two threads to help one job, and an '
        'OpenMP job with more threads than free cores slows down many times')
    parser.add_argument(
        '--fast', action='store_true', help='a quick look: one seed, 100 iterations')
    parser.add_argument(
        '--reuse',
        action='store_true',
        help='skip trainings (and their target tests) and tests already run on the checkpoint '
        'they use')
    parser.add_argument(
        '--no-stream',
        action='store_true',
        help='skip the continual-stream experiment (test-time adaptation on a drifting stream, '
        "on BN's weights of the first seed)")
    parser.add_argument(
        '--stream-frames',
        type=int,
        default=None,
        help='frames of the drifting stream (default 240; 120 with --fast)')
    parser.add_argument('--num-source-train', type=int, default=800)
    parser.add_argument('--num-source-val', type=int, default=100)
    parser.add_argument(
        '--num-target', type=int, default=200, help='frames per target split (train pool, val)')
    parser.add_argument(
        '--data-seed', type=int, default=0, help='seed of the synthetic data generator')
    parser.add_argument(
        '--loader-options',
        nargs='+',
        default=[],
        help='key=value applied to every dataloader, e.g. num_workers=0 batch_size=4')
    args = parser.parse_args(argv)
    if args.fast:
        args.seeds = args.seeds[:1]
        args.iters = 100
    if args.work_dir is None:
        args.work_dir = 'work_dirs/demo-fast' if args.fast else 'work_dirs/demo'
    if args.jobs < 1:
        parser.error(f'--jobs must be >= 1, got {args.jobs}')

    from mmnorm.datasets.synthetic import generate_demo_data
    start = time.time()
    print(f'writing the synthetic data to {args.data_root} (skipped when present) ...', flush=True)
    generate_demo_data(
        args.data_root,
        num_source_train=args.num_source_train,
        num_source_val=args.num_source_val,
        num_target_train=args.num_target,
        num_target_val=args.num_target,
        seed=args.data_seed)
    trained = [n for n in args.methods if 'weights_from' not in METHODS[n]]
    iters = args.iters or 1000
    # Until a job of a kind has finished, the ETA uses times measured on 2 CPU cores (200 iterations
    # and the target test ~ 35 s, the stream of both models ~100 s).
    with_stream = not args.no_stream and any(n in args.methods for n, _ in STREAM_MODELS)
    num_train = sum(1 if METHODS[n].get('first_seed_only') else len(args.seeds) for n in trained)
    progress = Progress(
        num_train, (len(args.methods) - len(trained)) * len(args.seeds),
        args.jobs,
        prior_s=dict(train=8 + 0.14 * iters, test=7.0, stream=100.0),
        num_stream=int(with_stream))
    print(
        f'{progress.total} jobs ({len(trained)} trainings, each tested on the target, and '
        f'{len(args.methods) - len(trained)} test-time-only tests per seed, seeds {args.seeds}, '
        f'{iters} iterations{", the continual stream" if with_stream else ""}); logs under '
        f'{args.work_dir}/seed*/<method>/',
        flush=True)
    experiment = Experiment(args, progress)
    try:
        results, stream_table = experiment.run_all(with_stream)
    except JobFailed as err:
        print(f'\nmake demo stopped: {err}', file=sys.stderr, flush=True)
        sys.exit(1)
    rows = summarise(results)
    table = to_markdown(rows)
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
    if stream_table:
        print('continual test-time adaptation on a drifting stream '
              f'({args.work_dir}/stream/stream_miou.png):\n')
        print(stream_table)
    print(f'total {time.time() - start:.0f} s; results in {args.work_dir}/results.md, results.png')
    return rows


if __name__ == '__main__':
    main()
