"""Issue 23: crafted checkpoints are refused with one line by every entry point (in a subprocess: a
crash would end it), mmnorm checkpoints hold only plain types, a kill never loses the last good
checkpoint, weights that do not fit are refused, a changed total batch size is named on resume."""
import os
import os.path as osp
import signal
import subprocess
import time

import pytest
import torch
from conftest import DEMO_CONFIG, PYTHON, REPO, free_port, tiny_seg_options, tool_env
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner
from test_checkpoint_compat import _Data, _Toy

from mmnorm.runtime import (CheckpointFileError, check_weights_fit, find_resumable_checkpoint,
                            load_checkpoint_file, setup)

setup()

ENTRY_POINTS = r"""
import io, os, sys, contextlib, json, pickle
sys.path.insert(0, os.path.join(sys.argv[1], 'tests'))
from checkpoint_payloads import write_payloads
from tool_loader import load_tool
import torch
folder, config = sys.argv[2], os.path.join(sys.argv[1], sys.argv[3])
opts = json.loads(sys.argv[4])
paths = write_payloads(folder)
paths['wrong_model'] = os.path.join(folder, 'wrong_model.pth')
torch.save({'state_dict': {'unrelated.weight': torch.ones(3)}}, paths['wrong_model'])
import mmnorm
from mmnorm.runtime import setup
tools = {
    'test': lambda p: load_tool('test').main([config, p, '--work-dir', folder + '/w',
                                              '--cfg-options', *opts]),
    'train_load_from': lambda p: load_tool('train').main(
        [config, '--work-dir', folder + '/w', '--cfg-options', f'load_from={p}', *opts]),
    'train_resume': lambda p: load_tool('train').main([config, '--work-dir', folder + '/w',
                                                       '--resume', p, '--cfg-options', *opts]),
    'bn_shift': lambda p: load_tool('analysis/bn_shift').main([config, p]),
    'fold_norms': lambda p: load_tool('model_converters/fold_norms').main(
        [config, p, '--out-dir', folder + '/f']),
    'pytorch2onnx': lambda p: load_tool('deployment/pytorch2onnx').main(
        [config, p, '--out', folder + '/m.onnx']),
}
for tool, run in tools.items():
    for name, path in paths.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                run(path)
                code = 0
            except SystemExit as exit:
                code = exit.code
        lines = [l for l in err.getvalue().splitlines() if 'error' in l]
        print(f'ROW {tool} {name} {code} {len(lines)} {os.path.basename(path) in err.getvalue()}',
              flush=True)
setup()
for name, path in paths.items():  # plain torch.load after import mmnorm and setup()
    try:
        torch.load(path)
        print(f'ROW torch.load {name} loaded')
    except (pickle.UnpicklingError, RuntimeError) as e:
        print(f'ROW torch.load {name} refused')
from mmengine.runner import load_checkpoint
from mmnorm.runtime import CheckpointFileError
for name, path in paths.items():
    try:
        load_checkpoint(torch.nn.Linear(1, 1), path)
    except CheckpointFileError as e:
        print(f'ROW mmengine {name} refused {os.path.basename(path) in str(e)}')
"""


def test_crafted_checkpoints_refused_by_every_entry_point(tiny_demo_data, tmp_path):
    import json
    opts = json.dumps(tiny_seg_options(tiny_demo_data))
    proc = subprocess.run([PYTHON, '-c', ENTRY_POINTS, REPO,
                           str(tmp_path), DEMO_CONFIG, opts],
                          cwd=str(tmp_path),
                          env=tool_env(),
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith('ROW ')]
    tool_rows = [r for r in rows if r[0] not in ('torch.load', 'mmengine')]
    assert len(tool_rows) == 6 * 10, proc.stdout  # 9 crafted files and a wrong model per tool
    for tool, name, code, lines, named in tool_rows:  # exit 2, one error line naming the file
        assert (code, lines, named) == ('2', '1', 'True'), (tool, name, proc.stderr[-3000:])
    assert [r[2] for r in rows if r[0] == 'torch.load' and r[1] != 'wrong_model'] == ['refused'] * 9
    assert [r[2:] for r in rows
            if r[0] == 'mmengine' and r[1] != 'wrong_model'] == [['refused', 'True']] * 9


def toy_runner(work_dir, iters, hook='SafeCheckpointHook', batch_size=4, **kwargs):
    return Runner(
        model=_Toy(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_Data(),
            batch_size=batch_size,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=iters),
        **kwargs,
        default_hooks=dict(
            checkpoint=dict(type=hook, interval=1, by_epoch=False, max_keep_ckpts=1)))


def test_mmengine_checkpoint_loads_without_numpy_globals(tmp_path):
    """A stock CheckpointHook checkpoint (HistoryBuffers, numpy arrays): the numbers come back as
    HistoryBuffers; torch's allow-list holds no numpy name."""
    toy_runner(tmp_path, 2, hook='CheckpointHook').train()
    checkpoint = load_checkpoint_file(str(tmp_path / 'iter_2.pth'))
    buffer = checkpoint['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and len(buffer.data[0]) == 2
    names = [
        g[1] if isinstance(g, tuple) else getattr(g, '__module__', '')
        for g in torch.serialization.get_safe_globals()
    ]
    assert not any('numpy' in str(n) for n in names)


def test_mmnorm_checkpoints_are_plain_and_resume(tmp_path):
    """SafeCheckpointHook: plain torch.load (no allow-list) reads the file; resume rebuilds the
    message hub; max_keep_ckpts=1 keeps the newest only; last_checkpoint names it; the mode
    follows the umask; a resume with another total batch size warns once."""
    old = os.umask(0o027)
    try:
        toy_runner(tmp_path, 2).train()
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path / '..' / tmp_path.name)).count('iter_2.pth') == 1
    assert not (tmp_path / 'iter_1.pth').exists()
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_2.pth')
    assert (tmp_path / 'iter_2.pth').stat().st_mode & 0o777 == 0o640
    plain = torch.load(tmp_path / 'iter_2.pth')  # torch's default weights-only loading
    assert plain['meta']['world_size'] == 1 and plain['meta']['batch_size_per_process'] == 4
    from unittest import mock
    runner = toy_runner(tmp_path, 3, batch_size=2, resume=True)
    with mock.patch('mmnorm.runtime.checkpoint_hook.print_log') as print_log:
        runner.train()
    assert len(runner.message_hub.get_scalar('train/loss').data[0]) >= 3  # 2 resumed + 1
    log = '\n'.join(str(call.args[0]) for call in print_log.call_args_list)
    assert log.count('total batch size of 4 (1 processes x 4)') == 1, log
    assert 'with a total batch size of 2 (1 processes x 2)' in log


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    from unittest import mock
    runner = toy_runner(tmp_path, 1)
    runner.train()
    hook = [h for h in runner.hooks if type(h).__name__ == 'SafeCheckpointHook'][0]
    with mock.patch.object(runner, 'save_checkpoint', side_effect=OSError(28, 'full')):
        with pytest.raises(OSError):
            hook._save_checkpoint_with_step(runner, 2, meta=dict(iter=2))
    assert load_checkpoint_file(str(tmp_path / 'iter_1.pth'))['meta']['iter'] == 1
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_1.pth')


SLOW_SAVE = r"""
import os, sys, time
sys.path.insert(0, os.path.join(sys.argv[1], 'tests'))
from mmnorm.runtime import setup
setup()
from test_checkpoint_safety import toy_runner
real_fsync = os.fsync
def slow_fsync(fd):
    real_fsync(fd)
    if os.environ.get('SLOW') and any('.iter_2.pth.tmp' in n for n in os.listdir(sys.argv[2])):
        print('SAVING', flush=True)
        time.sleep(60)
os.fsync = slow_fsync  # this script only: the second save hangs with its temporary file written
os.environ['SLOW'] = '1'
toy_runner(sys.argv[2], 3).train()
"""


def test_sigterm_during_save_keeps_last_checkpoint_and_removes_temp(tmp_path):
    proc = subprocess.Popen(
        [PYTHON, '-c', SLOW_SAVE, REPO, str(tmp_path)],
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True)
    try:
        for line in proc.stdout:
            if 'SAVING' in line:
                break
        assert any('.tmp' in n for n in os.listdir(tmp_path))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM
    finally:
        proc.kill()
    names = sorted(
        n for n in os.listdir(tmp_path) if not n.endswith('.py') and not osp.isdir(tmp_path / n))
    assert names == ['iter_1.pth', 'last_checkpoint'], names
    assert find_resumable_checkpoint(str(tmp_path)) == (str(tmp_path / 'iter_1.pth'), None)


def test_resume_falls_back_to_the_newest_loadable_checkpoint(tmp_path):
    torch.save(dict(meta=dict(iter=1), state_dict={}), tmp_path / 'iter_1.pth')
    torch.save(dict(meta=dict(iter=2), state_dict={}), tmp_path / 'iter_2.pth')
    (tmp_path / 'iter_3.pth').write_bytes(b'PK\x03\x04 cut')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    path, notice = find_resumable_checkpoint(str(tmp_path))
    assert path == str(tmp_path / 'iter_2.pth')
    assert 'iter_4.pth' in notice and 'newest loadable' in notice and '\n' not in notice
    (tmp_path / 'last_checkpoint').write_text('')
    assert 'last_checkpoint is empty' in find_resumable_checkpoint(str(tmp_path))[1]
    assert find_resumable_checkpoint(str(tmp_path / 'none')) == (None, None)


def test_weights_that_do_not_fit_are_refused():
    model = _Toy()
    good = {k: v.clone() for k, v in model.state_dict().items()}
    check_weights_fit(model, {'state_dict': good}, 'good.pth')
    old_bn = {k: v for k, v in good.items() if not k.endswith('num_batches_tracked')}
    check_weights_fit(model, old_bn, 'old.pth')  # the documented allowance
    with pytest.raises(
            CheckpointFileError,
            match=r"'one.pth' does not fit the model: 6 missing "
            r'\(fc.weight, fc.bias, bn.weight, ...\); 1 unexpected \(unrelated\)'):
        check_weights_fit(model, {'unrelated': torch.ones(1)}, 'one.pth')
    wide = dict(good, **{'fc.weight': torch.ones(2, 3)})
    with pytest.raises(
            CheckpointFileError,
            match=r'1 with another shape \(fc.weight: checkpoint '
            r'\(2, 3\) vs model \(1, 3\)\).*--strict-load false'):
        check_weights_fit(model, wide, 'wide.pth')
    check_weights_fit(model, wide, 'wide.pth', strict=False)  # warns, loads what fits


def _kill_trial(tmp_path, data_root, sig, delay, port):
    work_dir = tmp_path / f'{sig.name}_{delay:.1f}'
    opts = tiny_seg_options(data_root, iters=40)
    opts = [o for o in opts if not o.startswith('default_hooks.checkpoint.interval')]
    opts += [
        'default_hooks.checkpoint.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=1',
        'train_cfg.val_interval=1000'
    ]
    cmd = [
        PYTHON, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
        osp.join(REPO, 'tools/train.py'),
        osp.join(REPO, DEMO_CONFIG), '--launcher', 'pytorch', '--work-dir',
        str(work_dir), '--cfg-options', *opts
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=str(tmp_path),
        env=tool_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (work_dir / 'last_checkpoint').exists():
        time.sleep(0.2)
    time.sleep(delay)
    os.killpg(proc.pid, sig)  # the whole job: torchrun and both ranks
    proc.wait(60)
    leftovers = [n for n in os.listdir(work_dir) if '.tmp' in n]
    path, notice = find_resumable_checkpoint(str(work_dir))
    return path, notice, leftovers


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGKILL])
def test_killed_two_process_runs_keep_a_checkpoint(tiny_demo_data, tmp_path, sig):
    """2-process gloo runs (max_keep_ckpts=1, a save every iteration) killed at random moments after
    the first save: a loadable checkpoint always remains, SIGTERM leaves no temporary file."""
    import random
    rng = random.Random(int(sig))
    for delay in [rng.uniform(0, 3) for _ in range(2)]:
        path, notice, leftovers = _kill_trial(tmp_path, tiny_demo_data, sig, delay, free_port())
        assert path is not None, (delay, notice)
        if sig == signal.SIGTERM:
            assert leftovers == [], (delay, leftovers)
