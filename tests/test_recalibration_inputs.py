"""recalibrate_bn on the inputs users give it: a sampler that declares its padding
(``num_real_samples``), an mmengine model whose data preprocessor maps its own keys to ``inputs``, a
model whose ``tensor`` mode cannot run (predict mode, decided from the model: a declared
``supports_tensor_mode = False``, mmseg's PointRend), and the progress bar's total.

References: float64 statistics of ``torch.cat`` of the real samples with torch's train-mode BN (the
one-pass order).
"""
import contextlib
import copy
import logging

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseDataPreprocessor, BaseModel
from test_recalibration import TinyNet, assert_buffers, make_batches, reference_stats
from torch.utils.data import DataLoader, Sampler, TensorDataset

from mmnorm import recalibrate_bn

torch.set_num_threads(1)


class Records(logging.Handler):

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def mmengine_log():
    """The messages print_log(logger='current') sends while the block runs."""
    logger, handler = MMLogger.get_current_instance(), Records()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


class PaddedSampler(Sampler):
    """Yields every index, then repeats the first ``pad`` ones; says so through
    ``num_real_samples``."""

    def __init__(self, size: int, pad: int):
        self.size, self.pad = size, pad
        self.num_real_samples = size

    def __iter__(self):
        return iter(list(range(self.size)) + list(range(self.pad)))

    def __len__(self):
        return self.size + self.pad


def test_sampler_declaring_num_real_samples_excludes_its_padding():
    data = torch.cat(make_batches((7, )))
    loader = DataLoader(
        TensorDataset(data), batch_size=3, sampler=PaddedSampler(7,
                                                                 pad=2))  # 3 + 3 + (1 real, 2 pad)
    model = TinyNet().eval()
    reference = reference_stats(model, [data], ['bn1'], bn_train=True)
    result = recalibrate_bn(model, loader, progress=False)
    assert result.samples == 7 and result.batches == 3
    assert_buffers(model.bn1, *reference['bn1'])
    padded = TinyNet().eval(
    )  # the same batches without the declaration: the 2 repeats are measured
    padded.load_state_dict(TinyNet().state_dict())
    sampler = PaddedSampler(7, pad=2)
    del sampler.num_real_samples
    assert recalibrate_bn(
        padded, DataLoader(TensorDataset(data), batch_size=3, sampler=sampler),
        progress=False).samples == 9


class ImgsPreprocessor(BaseDataPreprocessor):
    """Maps ``dict(imgs=...)`` batches to ``dict(inputs=..., data_samples=None)``, scaled."""

    def forward(self, data, training=False):
        return dict(inputs=data['imgs'] * 0.5 + 1.0, data_samples=None)


class TensorModeModel(BaseModel):
    """An mmengine model around TinyNet; ``tensor`` mode optionally unsupported (as PointRend's
    last stage), and then declared so."""

    def __init__(self, tensor_mode=True):
        super().__init__(data_preprocessor=ImgsPreprocessor())
        self.net = TinyNet()
        self.tensor_mode = tensor_mode
        self.supports_tensor_mode = tensor_mode

    def forward(self, inputs, data_samples=None, mode='tensor'):
        if mode == 'tensor' and not self.tensor_mode:
            raise NotImplementedError('tensor mode needs points')  # never called: the model says so
        if mode not in ('tensor', 'predict'):
            raise ValueError(mode)
        return self.net(inputs)


@pytest.mark.parametrize('tensor_mode', [True, False])
def test_preprocessor_keys_and_declared_predict_mode(tensor_mode):
    batches = make_batches((4, 3, 5))
    model = TensorModeModel(tensor_mode).eval()
    reference = reference_stats(
        model.net, [b * 0.5 + 1.0 for b in batches], ['bn1', 'bn2'], bn_train=True)
    for mode in ('one_pass', 'layerwise'):
        fresh = copy.deepcopy(model)
        with mmengine_log() as messages:
            result = recalibrate_bn(
                fresh, [dict(imgs=b) for b in batches], mode=mode, progress=False)
        assert result.samples == 12 and sorted(result.layers) == ['net.bn1', 'net.bn2']
        assert_buffers(fresh.net.bn1, *reference['bn1'])
        if mode == 'one_pass':
            assert_buffers(fresh.net.bn2, *reference['bn2'])
        # the fallback notice names the attribute that decided it, once per call (then predict
        # for every batch)
        fallback = [m for m in messages if 'TensorModeModel.supports_tensor_mode' in m]
        assert len(fallback) == (0 if tensor_mode else 1)


def test_progress_bar_total_follows_num_samples_and_num_iters(monkeypatch):
    import io
    import sys
    bars = []

    class Bar:
        """Stands in for mmengine's ProgressBar: its total and what the pass counted on it."""

        def __init__(self, task_num, file=None, **kwargs):
            self.task_num, self.done, self.file = task_num, 0, io.StringIO()
            bars.append(self)

        def update(self, num_tasks=1):
            self.done += num_tasks

    monkeypatch.setattr(sys.modules[recalibrate_bn.__module__], 'ProgressBar', Bar)
    batches = make_batches((4, 4, 4))
    recalibrate_bn(TinyNet().eval(), batches, num_samples=6, logger=None)  # samples: 4 + 2
    recalibrate_bn(TinyNet().eval(), batches, num_iters=2, logger=None)  # batches
    recalibrate_bn(TinyNet().eval(), batches, logger=None)
    assert [(bar.task_num, bar.done) for bar in bars] == [(6, 6), (2, 2), (3, 3)]


def test_pointrend_recalibrates_through_predict():
    """mmseg's shipped PointRend config (CascadeEncoderDecoder + PointHead): tensor mode raises,
    predict works."""
    import os.path as osp

    import mmseg
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    cfg = Config.fromfile(
        osp.join(
            osp.dirname(mmseg.__file__), '.mim', 'configs', 'point_rend',
            'pointrend_r50_4xb2-80k_cityscapes-512x1024.py'))
    model_cfg = cfg.model
    model_cfg.pretrained = None
    model_cfg.backbone.depth = 18  # smaller, same structure
    model_cfg.backbone.init_cfg = None
    model_cfg.neck.in_channels = [64, 128, 256, 512]
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(model_cfg).eval()
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        inputs = [(torch.rand(3, 64, 64, generator=g) * 255).to(torch.uint8) for _ in range(2)]
        samples = [
            SegDataSample(
                metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
            for _ in range(2)
        ]
        batches.append(dict(inputs=inputs, data_samples=samples))
    with mmengine_log() as messages:
        result = recalibrate_bn(model, batches, progress=False)
    assert result.samples == 4 and len(result.layers) > 20
    assert any('CascadeEncoderDecoder' in m for m in messages)  # the fallback names the model
