"""One case of the compatibility sweep: a shipped config with one mmnorm norm, through six steps.

1. ``build`` (pretrained off, :func:`~mmnorm_tools.compat_configs.model_config`); RN: the config's
   UDA wrapper (:func:`~mmnorm_tools.compat_configs.uda_type`), or the plain model where there is
   none;
2. ``sync_bn``: ``convert_sync_batchnorm`` + ``revert_sync_batchnorm`` keep every mmnorm layer;
3. ``load_bn``: strict load of the state dict of the same config built with BN;
4. ``train``: a loss + backward on 2 synthetic 64x64 images (UDA: 2 source + 2 target);
5. ``predict`` in eval mode on 2 images;
6. ``recalibrate``: :func:`mmnorm.recalibrate_bn` on one batch.

A case passes, or stops at its first failing step. An error raised by mmnorm with a message that
names the layer or wrapper and the fix is ``named``; any other exception (torch, toolbox) is
``FAIL``: a gap in mmnorm's contract.
"""
import importlib
import time
import traceback
from typing import Dict

import numpy as np
import torch

from .compat_configs import SIZE, model_config, uda_type

__all__ = ['NAMED_ERRORS', 'run_case', 'synthetic_batch', 'mmnorm_layers']

# Fragments of mmnorm's own error messages (each names the layer or wrapper and the fix).
NAMED_ERRORS = ('without a declared [source | target] split',
                'runs on the source part of the batch only', 'has one value per channel',
                'its rows are not the images of the batch')


def _seg_samples(num: int, num_classes: int) -> list:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(num):
        s = SegDataSample(
            metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE), pad_shape=(SIZE, SIZE)))
        label = torch.randint(0, num_classes, (1, SIZE, SIZE))
        s.gt_sem_seg = PixelData(data=label)
        s.gt_edge_map = PixelData(data=(label != label.roll(1,
                                                            -1)).long())  # PIDNet's boundary head
        samples.append(s)
    return samples


def _det_samples(num: int, num_classes: int, with_masks: bool) -> list:
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    samples = []
    for i in range(num):
        s = DetDataSample(
            metainfo=dict(
                img_shape=(SIZE, SIZE),
                ori_shape=(SIZE, SIZE),
                pad_shape=(SIZE, SIZE),
                scale_factor=(1.0, 1.0),
                img_id=i,
                batch_input_shape=(SIZE, SIZE),
                border=(0, SIZE, 0, SIZE)))  # CenterNet's test-time crop offsets
        gt = InstanceData(
            bboxes=torch.tensor([[8., 8., 40., 48.], [20., 4., 60., 30.]]),
            labels=torch.randint(0, num_classes, (2, )))
        if with_masks:
            masks = np.zeros((2, SIZE, SIZE), np.uint8)
            masks[0, 8:48, 8:40] = 1
            masks[1, 4:30, 20:60] = 1
            gt.masks = BitmapMasks(masks, SIZE, SIZE)
        s.gt_instances = gt
        samples.append(s)
    return samples


def _num_classes(model) -> int:
    head = getattr(model, 'decode_head', None) or getattr(model, 'bbox_head', None)
    if head is None and getattr(model, 'roi_head', None) is not None:
        head = model.roi_head.bbox_head
    if isinstance(head, (torch.nn.ModuleList, list)):
        head = head[-1]
    return int(getattr(head, 'num_classes', 2))


def synthetic_batch(scope: str, model, num: int = 2) -> dict:
    """An mmengine data dict of ``num`` random SIZE x SIZE uint8 images with random labels
    (boxes, masks)."""
    inputs = [torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8) for _ in range(num)]
    classes = _num_classes(model)
    if scope == 'mmseg':
        return dict(inputs=inputs, data_samples=_seg_samples(num, classes))
    with_masks = bool(getattr(getattr(model, 'roi_head', None), 'with_mask', False))
    return dict(inputs=inputs, data_samples=_det_samples(num, classes, with_masks))


def _sum_losses(losses: dict) -> torch.Tensor:
    total = 0
    for key, value in losses.items():
        if 'loss' in key:
            total = total + sum(v.sum()
                                for v in (value if isinstance(value, (list, tuple)) else [value]))
    return total


def mmnorm_layers(model) -> Dict[str, str]:
    """``{module path: class name}`` of the mmnorm norm layers of ``model``."""
    from mmnorm.models.norms.conventions import MMNORM_NORMS
    return {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, MMNORM_NORMS)}


_BN_STATE: dict = {
}  # (scope, config) -> the BN model's state dict (one entry: cases run config by config)


def _bn_state(scope: str, name: str, registry) -> dict:
    from mmengine.model import revert_sync_batchnorm
    if (scope, name) not in _BN_STATE:
        _BN_STATE.clear()
        torch.manual_seed(0)
        _BN_STATE[(scope,
                   name)] = revert_sync_batchnorm(registry.build(model_config(scope, name,
                                                                              None))).state_dict()
    return _BN_STATE[(scope, name)]


def _steps(scope: str, name: str, norm: str, state: dict) -> None:
    """Runs the six steps; ``state['step']`` names the current one, ``state['layers']`` the
    mmnorm layer count."""
    from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm

    import mmnorm
    registry = importlib.import_module(f'{scope}.registry').MODELS
    cfg = model_config(scope, name, norm)
    uda = uda_type(
        scope, cfg['type']) if norm == 'RN' else None  # None: RN must refuse the undeclared split
    if uda:
        cfg['type'] = uda
    torch.manual_seed(0)
    model = registry.build(cfg)
    model.init_weights()
    found = mmnorm_layers(model)
    state['layers'] = len(found)
    if not found and norm != 'BN':
        raise RuntimeError(f'no {norm} layer in the model after replacing its BN / SyncBN norm_cfg')
    state['step'] = 'sync_bn'
    model = revert_sync_batchnorm(convert_sync_batchnorm(model))
    if mmnorm_layers(model) != found:
        raise RuntimeError('convert/revert_sync_batchnorm changed the mmnorm layers')
    state['step'] = 'load_bn'
    model.load_state_dict(_bn_state(scope, name, registry), strict=True)
    state['step'] = 'train'
    from mmengine.logging import MessageHub
    MessageHub.get_current_instance().update_info(
        'epoch', 0)  # TOOD's head reads it (set by a hook in training)
    model.train()
    data = synthetic_batch(scope, model)
    if uda:
        data = dict(source=data, target=synthetic_batch(scope, model))
    loss = _sum_losses(model(**model.data_preprocessor(data, True), mode='loss'))
    if not torch.isfinite(loss):
        raise RuntimeError(f'training loss is {float(loss)}')
    loss.backward()
    state['step'] = 'predict'
    model.eval()
    with torch.no_grad():
        out = model(**model.data_preprocessor(synthetic_batch(scope, model), False), mode='predict')
    if len(out) != 2:
        raise RuntimeError(f'predict returned {len(out)} results for 2 images')
    state['step'] = 'recalibrate'
    mmnorm.recalibrate_bn(model, [synthetic_batch(scope, model)], progress=False, logger=None)


def run_case(scope: str, name: str, norm: str) -> dict:
    """One (config, norm) case (``norm='BN'``: the toolbox's own model, the reference).

    Returns:
        dict: ``status`` (``'pass'``, ``'named'``: an mmnorm error naming the layer and the fix, or
        ``'FAIL'``), ``step`` (the failing one, or ``''``), ``error``, ``layers`` (mmnorm layers
        built), ``seconds``.
    """
    from mmengine.registry import DefaultScope
    start = time.time()
    state = dict(step='build', layers=0)
    status, message = 'pass', ''
    try:
        with DefaultScope.overwrite_default_scope(scope):
            _steps(scope, name, norm, state)
        state['step'] = ''
    except Exception as e:  # noqa: BLE001 -- the sweep records every failure
        message = f'{type(e).__name__}: {e}'.replace('\n', ' ')
        named = isinstance(e, (ValueError, TypeError)) and any(m in str(e) for m in NAMED_ERRORS)
        status = 'named' if named else 'FAIL'
        if not named:
            message += ' | ' + traceback.format_exc(limit=-2).replace('\n', ' ')[-600:]
    return dict(
        status=status,
        step=state['step'],
        error=message[:1500],
        layers=state['layers'],
        seconds=round(time.time() - start, 1))
