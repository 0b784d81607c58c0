"""Runner checkpoints load under torch >= 2.6 weights-only unpickling, and nothing beyond them is allowed."""
import io
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import Dataset

import mmnorm  # noqa: F401
from mmnorm.runtime import restricted_getattr


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
        model=_Toy(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=_Data(), sampler=dict(type='DefaultSampler', shuffle=False), batch_size=4,
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)), train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)))
    runner.train()
    return str(work_dir / 'iter_2.pth')


def test_runner_checkpoint_loads_weights_only(runner_checkpoint):
    ckpt = torch.load(runner_checkpoint, weights_only=True)
    assert ckpt['meta']['iter'] == 2
    buffers = ckpt['message_hub']['log_scalars']
    assert isinstance(buffers['train/loss'], HistoryBuffer)
    assert len(buffers['train/loss'].data[0]) == 2  # both iterations' losses survived
    model = _Toy()
    load_checkpoint(model, runner_checkpoint, strict=True)  # mmengine's own loader (plain torch.load inside)
    assert torch.equal(model.fc.weight, ckpt['state_dict']['fc.weight'])


def test_without_mmnorm_torch_refuses_runner_checkpoints(runner_checkpoint):
    # The failure mmnorm fixes: a fresh interpreter that did not import mmnorm cannot load the file.
    code = f'import torch; torch.load({runner_checkpoint!r})'
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert 'Weights only load failed' in proc.stderr


class _Evil:

    def __init__(self, target, name):
        self.target, self.name = target, name

    def __reduce__(self):
        return getattr, (self.target, self.name)


@pytest.mark.parametrize('target,name', [(HistoryBuffer, '_statistics_methods'), (HistoryBuffer, '__init__'),
                                         (torch.Tensor, 'add_')])
def test_getattr_is_restricted(target, name):
    buf = io.BytesIO()
    torch.save({'x': _Evil(target, name)}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match=f'refusing getattr.*{name}'):
        torch.load(buf, weights_only=True)


def test_restricted_getattr_allows_history_buffer_methods():
    assert restricted_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    with pytest.raises(pickle.UnpicklingError, match="refusing getattr\\(int, 'real'\\)"):
        restricted_getattr(int, 'real')


def test_arbitrary_globals_still_refused():
    buf = io.BytesIO()
    torch.save({'f': subprocess.check_output}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match='Unsupported global.*check_output'):
        torch.load(buf, weights_only=True)
