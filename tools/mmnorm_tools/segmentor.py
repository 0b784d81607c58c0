"""The segmentor the model-level benchmarks time: DeepLabV3+ R50 of the GTA5 -> Cityscapes baseline
config (random weights, train mode), a random labelled batch, and one training iteration.

Each benchmark changes the model through ``model_updates`` (merged into the config's ``model``
dict): the norm of the backbone, a perturbation or whitening backbone, the output stride.
"""
import contextlib
import os.path as osp
from typing import Callable, ContextManager, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ['MODEL_CONFIG', 'build_segmentor', 'random_batch', 'training_step']

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MODEL_CONFIG = 'configs/baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py'
Shape = Tuple[int, int, int, int]


def build_segmentor(input_shape: Shape,
                    device: str,
                    model_updates: Optional[dict] = None) -> nn.Module:
    """DeepLabV3+ R50-D8 from ``MODEL_CONFIG`` with BN everywhere (not SyncBN), no pretrained
    weights and ``model_updates`` merged into its ``model`` dict; seeded, on ``device``, in train
    mode, its data preprocessor padding to ``input_shape`` (N, C, H, W)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = Config.fromfile(osp.join(REPO, MODEL_CONFIG))
    bn = dict(type='BN', requires_grad=True)
    cfg.merge_from_dict(
        dict(
            model=dict(
                pretrained=None,
                backbone=dict(init_cfg=None, norm_cfg=bn),
                decode_head=dict(norm_cfg=bn),
                auxiliary_head=dict(norm_cfg=bn),
                data_preprocessor=dict(size=input_shape[2:]))))
    if model_updates:
        cfg.merge_from_dict(dict(model=model_updates))
    torch.manual_seed(0)
    return MODELS.build(cfg.model).to(device).train()


def random_batch(input_shape: Shape, device: str, classes: int = 19) -> Tuple[torch.Tensor, List]:
    """Random images of ``input_shape`` (N, C, H, W) and N SegDataSamples with random labels of
    shape (1, H, W) in [0, classes)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    n, _, h, w = input_shape
    inputs = torch.randn(*input_shape, device=device)
    samples = []
    for _ in range(n):
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, h, w), device=device))
        samples.append(sample)
    return inputs, samples


def training_step(
        model: nn.Module,
        inputs: torch.Tensor,
        samples: List,
        lr: float = 1e-4,
        context: Callable[[], ContextManager] = contextlib.nullcontext) -> Callable[[], None]:
    """One training iteration as a function: forward with losses (inside ``context()``), the sum of
    the ``loss`` terms, backward, an SGD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def step():
        with context():
            losses = model(inputs, samples, mode='loss')
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step
