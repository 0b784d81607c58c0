"""`make demo`'s pipeline at a tiny size: every method through the real tools/train.py +
tools/test.py."""
import json
import os.path as osp

import pytest
from conftest import REPO, run_tool, tiny_seg_options
from tool_loader import METHODS, load_tool


def tiny_demo_args(data_root, work_dir, methods=None) -> list:
    """The demo at a tiny size: 2 iterations, 8 source frames, 4 target frames, a 16-frame
    stream."""
    args = [
        '--data-root', data_root, '--work-dir', work_dir, '--iters', 2, '--seeds', 0,
        '--num-source-train', 8, '--num-source-val', 4, '--num-target', 4, '--data-seed', 1,
        '--stream-frames', 16, '--loader-options', 'num_workers=0', 'persistent_workers=False',
        'batch_size=2'
    ]
    return [str(a) for a in args + (['--methods', *methods] if methods else [])]


def run_tiny_demo(data_root, work_dir, methods=None, extra=()):
    return run_tool(['tools/demo.py'] + tiny_demo_args(data_root, work_dir, methods) + list(extra))


# one method of each kind: trained (BN, DSU), recalibrated on BN's weights (AdaBN), adapted online
# (TENT)
KINDS = ['BN', 'AdaBN', 'DSU', 'BN + TENT (episodic)']


def job_lines(stdout: str, name: str) -> list:
    """The progress lines (``[k/total] ...``) of ``name``'s seed-0 job."""
    return [line for line in stdout.splitlines() if f'] {name} seed 0 ' in line]


def check_demo_outputs(proc, work_dir, methods):
    results = json.loads((work_dir / 'results.json').read_text())
    per_seed = results['per_seed']
    assert list(results['summary']) == methods
    bn = per_seed['BN']['0']
    for name, row in results['summary'].items():
        seed0 = per_seed[name]['0']
        # one seed: the summary is that seed's numbers
        assert (row['source']['mean'], row['target']['mean']) == (seed0['source'], seed0['target'])
        gap = 100 * (seed0['target'] - bn['target']) / max(bn['source'] - bn['target'], 1e-6)
        assert row['gap_closed']['mean'] == pytest.approx(gap) and row['seeds'] == [0]
    # the target numbers are what each job's test wrote
    written = sorted(
        json.loads(f.read_text())['mIoU'] for f in work_dir.glob('seed0/*/metrics_target.json'))
    assert written == sorted(per_seed[name]['0']['target'] for name in methods)
    assert per_seed['BN']['0']['source'] == per_seed['AdaBN']['0'][
        'source']  # same weights, no test-time change
    assert results['summary']['BN']['gap_closed']['mean'] == 0.0
    table = (work_dir / 'results.md').read_text()  # the table is the demo's output
    assert '| method | source-val mIoU | target mIoU | BN gap closed (%) |' in table
    for name, row in results['summary'].items():
        line = f"| {name} | {row['source']['mean']:.1f} | {row['target']['mean']:.1f} |"
        assert line in table and line in proc.stdout
    assert (work_dir / 'results.png').stat().st_size > 5000
    # progress: a start and an end line per job (trainings, tests, the stream) numbered k/total,
    # the start line with the job's log, the end line with the job's target mIoU
    total = len(methods) + 1  # a training tests its weights on the target in the same job
    for k in range(1, total + 1):
        assert proc.stdout.count(f'[{k}/{total}] ') == 2, (k, proc.stdout)
    assert 'seed0/BN/train.log' in job_lines(proc.stdout, 'BN')[0]
    for name in methods:
        lines = job_lines(proc.stdout, name)
        assert len(lines) == 2 and f"{per_seed[name]['0']['target']:.1f}" in lines[1], lines
    # the AdaBN row ran its recalibration hook before testing, the BN row did not (the hook's name
    # in the subprocess log is the trace it leaves)
    log = (work_dir / 'seed0' / 'AdaBN' / 'test_target.log').read_text()
    assert 'AdaBNHook' in log
    assert 'AdaBNHook' not in (work_dir / 'seed0' / 'BN' / 'train.log').read_text()
    # the continual stream: its table is written with the plot, and printed
    stream_table = (work_dir / 'stream' / 'stream_results.md').read_text()
    assert stream_table.strip() in proc.stdout and (work_dir / 'stream' /
                                                    'stream_miou.png').exists()


def test_demo_pipeline_tiny_one_method_of_each_kind(tiny_demo_data, tmp_path, capsys):
    proc = run_tiny_demo(tiny_demo_data, tmp_path / 'demo', KINDS)
    check_demo_outputs(proc, tmp_path / 'demo', KINDS)
    # train.py --test-last (the trainings' target test) gives what tools/test.py gives on the last
    # checkpoint
    bn_dir = tmp_path / 'demo' / 'seed0' / 'BN'
    checkpoint = (bn_dir / 'last_checkpoint').read_text().strip()
    load_tool('test').main([  # in-process: the demo above ran tools/test.py as a subprocess
        osp.join(REPO, METHODS['BN']['config']), checkpoint, '--work-dir',
        str(tmp_path / 'retest'), '--metrics-out',
        str(tmp_path / 'retest.json'), '--cfg-options', *tiny_seg_options(tiny_demo_data)
    ])
    in_training = json.loads((bn_dir / 'metrics_target.json').read_text())
    assert json.loads((tmp_path / 'retest.json').read_text()) == in_training
    # --reuse: no training or test runs again (their logs are untouched), the same table comes back
    logs = sorted((tmp_path / 'demo').glob('seed0/*/*.log'))
    stamps = [log.stat().st_mtime_ns for log in logs]
    summary = json.loads((tmp_path / 'demo' / 'results.json').read_text())['summary']
    capsys.readouterr()
    load_tool('demo').main(tiny_demo_args(tiny_demo_data, tmp_path / 'demo', KINDS) + ['--reuse'])
    assert [log.stat().st_mtime_ns for log in logs] == stamps and len(logs) == len(KINDS)
    assert json.loads((tmp_path / 'demo' / 'results.json').read_text())['summary'] == summary
    out = capsys.readouterr().out  # the reused jobs report their stored target mIoU
    for name in ('BN', 'AdaBN'):
        assert f"{summary[name]['target']['mean']:.1f}" in job_lines(out, name)[-1]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 17 trainings / tests and the two-model stream (332 s under load)
def test_demo_pipeline_tiny_every_method(tiny_demo_data, tmp_path):
    # every method, also those the default run leaves out (EFDMix, PBN + MixStyle)
    proc = run_tiny_demo(tiny_demo_data, tmp_path / 'demo', list(METHODS))
    check_demo_outputs(proc, tmp_path / 'demo', list(METHODS))


def test_demo_failed_job_names_its_log(tiny_demo_data, tmp_path, capsys):
    """A job that fails stops the demo with exit 1 and the path of its log and the log's last
    lines. The jobs waiting for the failed training (AdaBN's test, the stream) do not run.
    (In-process: the other test of this file runs tools/demo.py as a subprocess.)"""
    work_dir = tmp_path / 'demo'
    args = [
        '--data-root', tiny_demo_data, '--work-dir', work_dir, '--iters', 2, '--seeds', 0,
        '--methods', 'BN', 'AdaBN', '--num-source-train', 8, '--num-source-val', 4, '--num-target',
        4, '--data-seed', 1, '--loader-options', 'num_workers=0', 'persistent_workers=False',
        'batch_size=2', 'no_such_option=1', '--stream-frames', 16, '--jobs', 1
    ]
    with pytest.raises(SystemExit) as exc:
        load_tool('demo').main([str(a) for a in args])
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    log = work_dir / 'seed0' / 'BN' / 'train.log'
    assert str(log) in err and 'no_such_option' in err  # the failed job's log and its own error
    assert len(job_lines(out, 'BN')) == 2 and not job_lines(out, 'AdaBN')  # began, ended
    assert not (work_dir / 'seed0' / 'AdaBN').exists() and not (work_dir / 'stream').exists()


def test_progress_eta_from_priors_then_from_finished_jobs():
    import io
    demo = load_tool('demo')
    stream = io.StringIO()
    progress = demo.Progress(2, 1, jobs=2, prior_s=dict(train=10.0, test=4.0), stream=stream)
    assert progress.total == 3 and progress.eta() == (2 * 10.0 + 4.0) / 2
    index, start = progress.begin('BN seed 0', 'train', 'train.log')
    progress.end((index, start - 30.0), 'BN seed 0', 'train')  # a 30 s training
    assert progress.eta() == pytest.approx((30.0 + 4.0) / 2, abs=0.5)
    progress.end(progress.begin('DSU seed 0', 'train', 'x.log'), 'DSU seed 0', 'train', failed=True)
    progress.end(progress.begin('AdaBN seed 0', 'test', 'y.log'), 'AdaBN seed 0', 'test')
    assert progress.eta() == 0.0 and progress.durations['train'] == [pytest.approx(30.0, abs=0.5)]
    assert [line.split()[0] for line in stream.getvalue().splitlines()
            ] == ['[1/3]'] * 2 + ['[2/3]'] * 2 + ['[3/3]'] * 2


def test_demo_keeps_user_omp_num_threads(monkeypatch):
    demo = load_tool('demo')
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert demo.thread_count(jobs=2) == 3
    monkeypatch.delenv('OMP_NUM_THREADS')
    import os
    assert demo.thread_count(jobs=1) == max(1, os.cpu_count() or 2)


def test_demo_rows_and_isw_schedule_scaling():
    """The default rows (EFDMix and PBN + MixStyle only on request), the SegFormer trained on the
    first seed only for the stream, and ISW's statistics phase moved with --iters."""
    demo = load_tool('demo')
    assert 'IW' in demo.DEFAULT_METHODS and 'ISW' in demo.DEFAULT_METHODS
    assert 'EFDMix' not in demo.DEFAULT_METHODS and 'PBN + MixStyle' not in demo.DEFAULT_METHODS
    assert [n for n, _ in demo.STREAM_MODELS] == ['BN', 'SegFormer (mini MiT)']
    assert demo.METHODS['SegFormer (mini MiT)']['first_seed_only']
    isw = demo.METHODS['ISW']['config']
    for iters, after in ((200, 23), (100, 12), (1000, 116), (2, 0)):
        opts = demo.schedule_options(isw, iters)
        assert f'custom_hooks.0.after_iter={after}' in opts and f'train_cfg.max_iters={iters}' in opts
    assert not any('after_iter' in o for o in demo.schedule_options(METHODS['IW']['config'], 200))
