"""Reading batches the way mmnorm's statistics passes do (recalibration, analysis, test-time adaptation).

A batch is a tensor, an ``(inputs, ...)`` sequence (as ``torch.optim.swa_utils.update_bn`` takes), or an mmengine
data dict; mmengine models get it through their data preprocessor and run in ``tensor`` mode (``predict`` where
``tensor`` fails).
"""
import logging
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModel

__all__ = ['check_data_loader', 'prepare_batch', 'forward_prepared', 'forward_batch', 'real_samples_on_rank']


def check_data_loader(data_loader: Any, reiterable: Optional[str] = None) -> None:
    """TypeError unless ``data_loader`` is an iterable of batches (and, when ``reiterable`` gives the reason, not a
    one-shot iterator)."""
    if (isinstance(data_loader, (str, bytes, dict, torch.Tensor, nn.Module)) or not hasattr(data_loader, '__iter__')):
        raise TypeError('data_loader must be an iterable of batches (e.g. a torch DataLoader), got '
                        f'{type(data_loader).__name__}')
    if reiterable and iter(data_loader) is data_loader:
        raise TypeError(f'{reiterable}; data_loader must be re-iterable (e.g. a DataLoader or a list), got the '
                        f'one-shot iterator {type(data_loader).__name__}')


def prepare_batch(model: nn.Module, batch: Any, device: torch.device,
                  mode: str = 'tensor') -> Tuple[tuple, Dict[str, Any], int]:
    """The call ``model(*args, **kwargs)`` that forwards one batch, and the number of samples in it.

    mmengine ``BaseModel``: the data preprocessor runs first (the call gets ``mode``, ``'tensor'`` unless the model
    needs ``'predict'``), and the batch size is read from what it returns
    (``inputs``: a batched tensor or a list of samples), so a preprocessor mapping e.g. ``dict(imgs=...)`` to
    ``inputs`` works. Plain modules: the tensor (or the first element of a tuple / list), moved to ``device``.

    Returns:
        tuple: ``(args, kwargs, batch_size)``.

    Raises:
        TypeError: The batch holds no tensor to forward or to count.
    """
    if isinstance(model, BaseModel):
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
        raise TypeError(f'cannot tell the batch size: the data preprocessor of {type(model).__name__} returned '
                        f'{type(data).__name__} without a tensor or list "inputs"')
    x = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'a plain nn.Module needs tensor batches (or (tensor, ...) tuples), got '
                        f'{type(x).__name__}')
    return (x.to(device), ), {}, x.shape[0]


def forward_prepared(model: nn.Module, args: tuple, kwargs: Dict[str, Any],
                     on_retry: Optional[Callable[[], None]] = None) -> Tuple[Any, Optional[str]]:
    """``model(*args, **kwargs)``; an mmengine model whose ``tensor`` mode fails (e.g. mmseg's
    ``CascadeEncoderDecoder`` with a PointRend head, whose last stage needs points) is forwarded again in
    ``predict`` mode, after ``on_retry()`` (e.g. to drop what the failed forward measured), and a warning is logged.

    Returns:
        tuple: ``(output, mode used)``; the mode is None for plain modules.
    """
    mode = kwargs.get('mode')
    try:
        return model(*args, **kwargs), mode
    except (TypeError, NotImplementedError, AttributeError) as err:
        if mode != 'tensor':
            raise
        if on_retry is not None:
            on_retry()
        print_log(
            f'{type(model).__name__} cannot forward in tensor mode ({type(err).__name__}: {err}); '
            'forwarding in predict mode instead', logger='current', level=logging.WARNING)
        return model(*args, **dict(kwargs, mode='predict')), 'predict'


def forward_batch(model: nn.Module, batch: Any, device: torch.device, mode: str = 'tensor') -> Any:
    """Forwards one batch (see :func:`prepare_batch`, :func:`forward_prepared`) and returns the model's output."""
    args, kwargs, _ = prepare_batch(model, batch, device, mode)
    return forward_prepared(model, args, kwargs)[0]


def real_samples_on_rank(data_loader: Any) -> Optional[int]:
    """How many of this rank's samples are real (not padding repeats), or None if nothing says so.

    Sources, in order: ``data_loader.sampler.num_real_samples`` (a custom sampler's own statement); mmengine
    ``DefaultSampler(round_up=True)`` and torch ``DistributedSampler(drop_last=False)``, which deal the global order
    ``rank, rank + W, ...`` and pad it at the end, so rank ``r`` holds ``len(range(r, len(dataset), W))`` real
    samples followed by its padding.
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
