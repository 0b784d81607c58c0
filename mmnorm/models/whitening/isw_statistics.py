"""ISW's statistics pass: the variance of each covariance element between images and their
photometric twins, and the selection it drives.

RobustNet (``train.py`` ``validate_for_cov_stat``, ``network/cov_settings.py``): after its first
``cov_stat_epoch`` epochs the network, in eval mode and without gradients, sees each of 500 source
images next to its twin (``PhotometricTwin``); per image the variance over the pair of every
covariance element of every ISW position is accumulated, averaged, grouped by k-means and turned
into the mask (:meth:`~mmnorm.models.whitening.instance_whitening.ISW.select`); this repeats
``trials`` times (10) with new twins and the masks are intersected. The authors run it on each GPU
separately; here the sums and image counts are all-reduced, so every rank selects the same mask.

A batch is a dataloader's ``dict(inputs=[...], data_samples=[...])`` whose samples carry the twin
(``data_samples[i].twin_inputs``); it runs through the model's data preprocessor as
``[originals | twins]`` and through the backbone only.
"""
import math
from typing import Dict, Iterable, Iterator, Optional

import torch
import torch.nn as nn
from mmengine.dist import all_reduce, get_world_size
from mmengine.model import is_model_wrapper

from ...validation import ArgumentError, ArgumentTypeError, check_positive_int
from .instance_whitening import ISW, instance_covariance, pair_variance

__all__ = ['collect_isw_variances', 'run_isw_selection', 'isw_backbone', 'TWIN_FIELD']

#: the data-sample field PhotometricTwin stores the twin in
TWIN_FIELD = 'twin_inputs'


def isw_backbone(model: nn.Module) -> Optional[nn.Module]:
    """The backbone of ``model`` (wrapped or not) if it has ISW positions, else None."""
    model = model.module if is_model_wrapper(model) else model
    backbone = getattr(model, 'backbone', None)
    if backbone is None or not hasattr(backbone, 'isw_modules') or not backbone.isw_modules():
        return None
    return backbone


def _isw_backbone(model: nn.Module) -> nn.Module:
    backbone = isw_backbone(model)
    if backbone is None:
        raise ArgumentTypeError(
            'ISW statistics need a segmentor whose backbone has ISW positions (e.g. '
            "backbone=dict(type='WhiteningResNetV1c', whitening=dict(type='ISW'))), got "
            f'{type(model).__name__}')
    return backbone


def _paired_inputs(model: nn.Module, batch: dict) -> torch.Tensor:
    """The preprocessed ``[originals | twins]`` batch, ``(2B, 3, H, W)``."""
    samples = batch.get('data_samples') or []
    if not samples or any(TWIN_FIELD not in s for s in samples):
        raise ArgumentError(
            "ISW statistics need each sample's photometric twin: add dict(type='PhotometricTwin') "
            "after dict(type='PackSegInputs') in the pipeline of the ISW statistics dataloader")
    inputs = list(batch['inputs']) + [s.get(TWIN_FIELD) for s in samples]
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples + samples), False)
    return data['inputs']


@torch.no_grad()
def collect_isw_variances(model: nn.Module, batches: Iterator[dict],
                          num_images: int) -> Dict[ISW, torch.Tensor]:
    """Mean pair variance ``(C, C)`` (float64) of every ISW position, over ``num_images`` images
    (all ranks together; each rank takes ``ceil(num_images / world_size)`` of its batches).

    The model runs in eval mode (restored after); only the backbone runs.
    """
    num_images = check_positive_int(num_images, 'num_images')
    real = model.module if is_model_wrapper(model) else model
    backbone = _isw_backbone(real)
    modules = list(backbone.isw_modules().values())
    sums = {m: None for m in modules}
    per_rank = math.ceil(num_images / get_world_size())
    seen = 0
    was_training = real.training
    real.eval()
    try:
        while seen < per_rank:
            x = _paired_inputs(real, next(batches))
            b = x.shape[0] // 2
            handles = []
            records = []
            for m in modules:
                handles.append(
                    m.register_forward_hook(lambda mod, a, out: records.append((mod, out))))
            try:
                backbone(x)
            finally:
                for h in handles:
                    h.remove()
            for mod, out in records:
                cov = instance_covariance(out.float(), mod.eps)
                var = pair_variance(cov[:b], cov[b:]).double().sum(0)
                sums[mod] = var if sums[mod] is None else sums[mod] + var
            seen += b
    finally:
        real.train(was_training)
    # one all-reduce of every sum and the image count
    flat = torch.cat([sums[m].reshape(-1) for m in modules] + [sums[modules[0]].new_tensor([seen])])
    all_reduce(flat, op='sum')
    count = flat[-1]
    out, start = {}, 0
    for m in modules:
        n = sums[m].numel()
        out[m] = (flat[start:start + n] / count).reshape(sums[m].shape)
        start += n
    return out


def _cycle(loader: Iterable) -> Iterator[dict]:
    """The loader's batches without end (a new epoch of its sampler at each restart)."""
    epoch = 0
    while True:
        sampler = getattr(loader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ArgumentError('the ISW statistics dataloader yields no batch on this rank; '
                                'give it a non-empty dataset')
        epoch += 1


def run_isw_selection(model: nn.Module,
                      loader: Iterable,
                      num_images: int = 500,
                      trials: int = 10) -> Dict[ISW, int]:
    """Selects and freezes every ISW mask of ``model``: ``trials`` passes of
    :func:`collect_isw_variances` over ``num_images`` images, masks intersected.

    Returns:
        dict: ISW module -> number of selected elements.
    """
    trials = check_positive_int(trials, 'trials')
    backbone = _isw_backbone(model)
    for m in backbone.isw_modules().values():
        m.reset_selection()
    batches = _cycle(loader)
    for _ in range(trials):
        for m, var in collect_isw_variances(model, batches, num_images).items():
            m.select(var.to(m.selected_mask.device), intersect=True)
    return {m: int(m.selected_mask.sum()) for m in backbone.isw_modules().values()}
