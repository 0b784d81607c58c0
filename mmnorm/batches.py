"""Reading batches the way mmnorm's statistics passes do (recalibration, analysis, test-time
adaptation).

A batch is a tensor, an ``(inputs, ...)`` sequence (as ``torch.optim.swa_utils.update_bn`` takes),
or an mmengine data dict; mmengine models get it through their data preprocessor and run in the mode
:func:`forward_mode` decides once from the model: ``tensor``, or ``predict`` for the models whose
tensor mode is known not to run (mmseg's PointRend).
"""
import sys
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModel

__all__ = [
    'check_data_loader', 'forward_mode', 'tensor_mode_obstacle', 'prepare_batch', 'forward_batch',
    'real_samples_on_rank', 'batches_by_size'
]


def check_data_loader(data_loader: Any, reiterable: Optional[str] = None) -> None:
    """TypeError unless ``data_loader`` is an iterable of batches (and, when ``reiterable`` gives
    the reason, not a one-shot iterator)."""
    if (isinstance(data_loader, (str, bytes, dict, torch.Tensor, nn.Module))
            or not hasattr(data_loader, '__iter__')):
        raise TypeError('data_loader must be an iterable of batches (e.g. a torch DataLoader), got '
                        f'{type(data_loader).__name__}')
    if reiterable and iter(data_loader) is data_loader:
        raise TypeError(
            f'{reiterable}; data_loader must be re-iterable (e.g. a DataLoader or a list), got the '
            f'one-shot iterator {type(data_loader).__name__}')


def tensor_mode_obstacle(model: nn.Module) -> Optional[str]:
    """Why the mmengine model ``model`` cannot forward in ``tensor`` mode, or None if it can.

    Known cases: mmseg's ``CascadeEncoderDecoder`` (and subclasses, e.g. mmnorm's UDA cascade) with
    a ``PointHead`` stage (PointRend: the point head's ``forward`` takes the points its ``predict``
    / ``loss`` sample; mmseg's ``_forward`` does not support it), and any model whose class sets
    ``supports_tensor_mode = False``.
    """
    if getattr(model, 'supports_tensor_mode', True) is False:
        return f'{type(model).__name__}.supports_tensor_mode is False'
    if 'mmseg' not in sys.modules:  # not imported: the model is no mmseg segmentor
        return None
    from mmseg.models.decode_heads import PointHead
    from mmseg.models.segmentors import CascadeEncoderDecoder
    if isinstance(model, CascadeEncoderDecoder) and any(
            isinstance(head, PointHead) for head in model.decode_head):
        return "PointRend: mmseg's tensor mode does not run a PointHead stage"
    return None


def forward_mode(model: nn.Module) -> Optional[str]:
    """The mode the statistics passes forward ``model`` in: None for a plain module; for an mmengine
    ``BaseModel`` ``'tensor'`` (the network without post-processing), or ``'predict'`` where
    :func:`tensor_mode_obstacle` names a reason."""
    if not isinstance(model, BaseModel):
        return None
    return 'predict' if tensor_mode_obstacle(model) is not None else 'tensor'


def prepare_batch(model: nn.Module,
                  batch: Any,
                  device: torch.device,
                  mode: Optional[str] = None) -> Tuple[tuple, Dict[str, Any], int]:
    """The call ``model(*args, **kwargs)`` that forwards one batch, and the number of samples in it.

    mmengine ``BaseModel``: the data preprocessor runs first (the call gets ``mode``; None:
    :func:`forward_mode`), and the batch size is read from what it returns (``inputs``: a batched
    tensor or a list of samples), so a preprocessor mapping e.g. ``dict(imgs=...)`` to ``inputs``
    works. Plain modules: the tensor (or the first element of a tuple / list), moved to ``device``.

    Returns:
        tuple: ``(args, kwargs, batch_size)``.

    Raises:
        TypeError: The batch holds no tensor to forward or to count.
    """
    if isinstance(model, BaseModel):
        mode = mode or forward_mode(model)
        data = model.data_preprocessor(batch, False)
        if isinstance(data, dict):
            args, kwargs = (), dict(data, mode=mode)
            inputs = data.get('inputs')
        else:
            args = tuple(data) if isinstance(data, (list, tuple)) else (data, )
            kwargs, inputs = dict(mode=mode), args[0] if args else None
        if isinstance(inputs, torch.Tensor):
            return args, kwargs, inputs.shape[0]
        if isinstance(inputs, (list, tuple)):
            return args, kwargs, len(inputs)
        raise TypeError(
            f'cannot tell the batch size: the data preprocessor of {type(model).__name__} returned '
            f'{type(data).__name__} without a tensor or list "inputs"')
    x = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'a plain nn.Module needs tensor batches (or (tensor, ...) tuples), got '
                        f'{type(x).__name__}')
    return (x.to(device), ), {}, x.shape[0]


def forward_batch(model: nn.Module,
                  batch: Any,
                  device: torch.device,
                  mode: Optional[str] = None) -> Any:
    """Forwards one batch (see :func:`prepare_batch`) and returns the model's output."""
    args, kwargs, _ = prepare_batch(model, batch, device, mode)
    return model(*args, **kwargs)


def real_samples_on_rank(data_loader: Any) -> Optional[int]:
    """How many of this rank's samples are real (not padding repeats), or None if nothing says so.

    Sources, in order: ``data_loader.sampler.num_real_samples`` (a custom sampler's own statement);
    mmengine ``DefaultSampler(round_up=True)`` and torch ``DistributedSampler(drop_last=False)``,
    which deal the global order ``rank, rank + W, ...`` and pad it at the end, so rank ``r`` holds
    ``len(range(r, len(dataset), W))`` real samples followed by its padding.
    """
    sampler = getattr(data_loader, 'sampler', None)
    if sampler is None:
        return None
    declared = getattr(sampler, 'num_real_samples', None)
    if declared is not None:
        return int(declared)
    dataset = getattr(sampler, 'dataset', None)
    if dataset is None:
        return None
    from mmengine.dataset import DefaultSampler
    from torch.utils.data import DistributedSampler
    if isinstance(sampler, DefaultSampler) and sampler.round_up:
        return len(range(sampler.rank, len(dataset), sampler.world_size))
    if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
        return len(range(sampler.rank, len(dataset), sampler.num_replicas))
    return None


def _sample_shapes(batch: Any) -> Optional[List[tuple]]:
    """The shapes of the samples of an mmengine data dict whose ``inputs`` is a list of tensors
    (``pseudo_collate``), or None for any other batch (a stacked tensor, a tuple, ...)."""
    if not isinstance(batch, dict) or not isinstance(batch.get('inputs'), (list, tuple)):
        return None
    inputs = batch['inputs']
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        return None
    return [tuple(x.shape) for x in inputs]


def _split(batch: dict) -> List[dict]:
    """The samples of the data dict ``batch``: every per-sample list indexed, other entries
    shared."""
    num = len(batch['inputs'])
    per_sample = [k for k, v in batch.items() if isinstance(v, (list, tuple)) and len(v) == num]
    return [{k: v[i] if k in per_sample else v for k, v in batch.items()} for i in range(num)]


def _collate(samples: List[dict], like: dict) -> dict:
    """The data dict of ``samples``, with the per-sample lists of the loader batch ``like``."""
    num = len(like['inputs'])
    return {
        k: [s[k] for s in samples] if isinstance(v, (list, tuple)) and len(v) == num else v
        for k, v in like.items()
    }


def batches_by_size(data_loader: Iterable, limit: Optional[int] = None) -> Iterator[Any]:
    """``data_loader``'s batches regrouped so that every batch holds samples of one input size.

    mmengine data dicts with a list of ``inputs`` (``pseudo_collate``) are split into samples,
    which wait in one bucket per input shape (C, H, W); a bucket goes out when it holds as many
    samples as the largest loader batch so far, the partly filled buckets at the end, in the order
    their first sample came. So no data preprocessor pads one image to another's size (mmseg's
    refuses mixed sizes in eval mode; mmdet's pads to the largest image of the batch): padded
    pixels never reach a statistic, and a batch of one size is what a loader of that size alone
    would give. Loaders of one image size give their own batches, unchanged. Samples wait in the
    buckets: at most ``sizes x (batch size - 1)`` of them.

    ``limit`` (real samples on this rank, see :func:`real_samples_on_rank`) cuts the stream of
    samples before the regrouping, so the padding repeats after them are never forwarded. Other
    batches (tensors, tuples, stacked inputs) pass through whole, without the cut.

    Args:
        data_loader (Iterable): Batches.
        limit (int, optional): Samples of data dicts to yield at most. None: all.

    Yields:
        The regrouped data dicts (same keys, per-sample lists of one input size) and the other
        batches as they are.
    """
    buckets: Dict[tuple, List[dict]] = {}  # input shape -> samples waiting
    like: Dict[tuple, dict] = {}  # input shape -> a loader batch it came in
    size = seen = 0
    for batch in data_loader:
        shapes = _sample_shapes(batch)
        if shapes is None:
            yield batch
            continue
        samples = _split(batch)
        if limit is not None:
            samples = samples[:max(limit - seen, 0)]
        seen += len(samples)
        size = max(size, len(shapes))
        for shape, sample in zip(shapes, samples):
            buckets.setdefault(shape, []).append(sample)
            like.setdefault(shape, batch)
            if len(buckets[shape]) == size:
                yield _collate(buckets.pop(shape), like.pop(shape))
        if limit is not None and seen >= limit:
            break
    for shape, samples in buckets.items():
        yield _collate(samples, like[shape])
