"""Runner checkpoints load under torch >= 2.6 weights-only unpickling through mmengine's loader once
:func:`mmnorm.runtime.setup` ran (mmnorm's tools, or ``mmnorm.runtime.enable`` in a config's
custom_imports), without any numpy global on torch's allow-list; ``import mmnorm`` alone changes
nothing of torch or mmengine."""
import io
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from conftest import DEMO_CONFIG, REPO, tiny_seg_options, tool_env
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import Dataset

import mmnorm  # noqa: F401
from mmnorm.runtime import CheckpointFileError, load_checkpoint_file, setup

setup()  # as the tools do (conftest does it too)


class _Toy(BaseModel):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1)
        self.bn = nn.BatchNorm1d(1)

    def forward(self, x, mode='tensor'):
        out = self.bn(self.fc(torch.stack(x) if isinstance(x, list) else x))
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


class _Data(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(x=torch.full((3, ), float(i)))


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('ckpt')
    runner = Runner(
        model=_Toy(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_Data(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=4,
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)))
    runner.train()
    return str(work_dir / 'iter_2.pth')


def test_runner_checkpoint_loads_weights_only(runner_checkpoint):
    ckpt = load_checkpoint_file(runner_checkpoint)  # weights-only, numpy rebuilt from plain bytes
    assert ckpt['meta']['iter'] == 2
    buffers = ckpt['message_hub']['log_scalars']
    assert isinstance(buffers['train/loss'], HistoryBuffer)
    assert len(buffers['train/loss'].data[0]) == 2  # both iterations' losses survived
    model = _Toy()
    load_checkpoint(
        model, runner_checkpoint, strict=True)  # mmengine's own loader (plain torch.load inside)
    assert torch.equal(model.fc.weight, ckpt['state_dict']['fc.weight'])


class _Evil:

    def __init__(self, target, name):
        self.target, self.name = target, name

    def __reduce__(self):
        return getattr, (self.target, self.name)


@pytest.mark.parametrize('target,name', [(HistoryBuffer, '_statistics_methods'),
                                         (HistoryBuffer, '__init__'), (torch.Tensor, 'add_')])
def test_getattr_is_never_resolved(tmp_path, target, name):
    path = tmp_path / 'getattr.pth'
    torch.save({'x': _Evil(target, name)}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # torch's allow-list has no getattr
    with pytest.raises(CheckpointFileError, match='refused'):
        load_checkpoint_file(str(path))  # mmnorm records it and refuses it outside a HistoryBuffer


def test_arbitrary_globals_still_refused():
    buf = io.BytesIO()
    torch.save({'f': subprocess.check_output}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match='Unsupported global.*check_output'):
        torch.load(buf, weights_only=True)


FRESH_INTERPRETER = """
import pickle
import sys

import torch
from mmengine.fileio import backends, io
from mmengine.logging import HistoryBuffer


def state():
    safe = torch.serialization.get_safe_globals()
    return ([g for g in safe if not (getattr(g, '__module__', '') or '').startswith('torch')],
            dict(backends.backends), dict(backends.prefix_to_backends), dict(io.backend_instances))


def refused():
    try:
        torch.load(sys.argv[1])
    except pickle.UnpicklingError:
        return True
    return False


assert refused()  # the failure mmnorm fixes: torch >= 2.6 refuses a Runner checkpoint
before = state()
import mmnorm
import torch.distributed.tensor  # torch allow-lists its own DTensor classes when they are imported
assert state() == before, (before, state())
assert refused() and 'mmnorm.datasets.synthetic' not in sys.modules
from mmnorm.runtime import AtomicLocalBackend, setup
setup()
assert state()[0] == before[0] and refused()  # still no numpy global for plain torch.load
from mmengine.runner.checkpoint import _load_checkpoint
assert _load_checkpoint(sys.argv[1])['meta']['iter'] == 2
assert backends.backends['local'] is AtomicLocalBackend
print('ok')
"""


def test_import_mmnorm_changes_nothing_setup_fixes_loading(runner_checkpoint):
    """A fresh interpreter: torch refuses the Runner checkpoint; ``import mmnorm`` leaves torch's
    weights-only allow-list and mmengine's file backends as they were (only torch's own entries
    may appear) and does not import the demo generator; ``mmnorm.runtime.setup()`` then makes the
    checkpoint load."""
    proc = subprocess.run([sys.executable, '-c', FRESH_INTERPRETER, runner_checkpoint],
                          env=tool_env(),
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]


def test_toolbox_train_py_resumes_with_the_config_opt_in(tiny_demo_data, tmp_path):
    """The plugin path: mmseg's own tools/train.py, the config opting in with
    ``mmnorm.runtime.enable`` in custom_imports, resumes the checkpoint its Runner wrote (torch
    >= 2.6 refuses it without the allow-list); then mmnorm's tools/train.py (in-process) resumes
    that run's checkpoint."""
    import mmseg
    toolbox_train = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'train.py')
    config = tmp_path / 'plugin.py'
    config.write_text(f"_base_ = [{osp.join(REPO, DEMO_CONFIG)!r}]\n"
                      "custom_imports = dict(imports=['mmnorm', 'mmnorm.runtime.enable'], "
                      "allow_failed_imports=False)\n")
    work_dir = tmp_path / 'work'
    logs = []
    for iters, resume in ((1, []), (2, ['--resume'])):
        cmd = [
            sys.executable, toolbox_train,
            str(config), '--work-dir',
            str(work_dir), *resume, '--cfg-options', *tiny_seg_options(tiny_demo_data, iters=iters)
        ]
        proc = subprocess.run(
            cmd, cwd=str(tmp_path), env=tool_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-5000:]
        logs.append(proc.stdout + proc.stderr)
    assert 'resumed epoch: 0, iter: 1' in logs[1]
    assert load_checkpoint_file(str(work_dir / 'iter_2.pth'))['meta']['iter'] == 2
    from tool_loader import load_tool
    load_tool('train').main([
        osp.join(REPO, DEMO_CONFIG), '--work-dir',
        str(tmp_path / 'tools'), '--resume',
        str(work_dir / 'iter_2.pth'), '--cfg-options', *tiny_seg_options(tiny_demo_data, iters=3)
    ])
    assert torch.load(tmp_path / 'tools' / 'iter_3.pth', weights_only=True)['meta']['iter'] == 3
