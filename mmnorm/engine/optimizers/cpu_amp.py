"""Mixed-precision training on CPU: ``tools/train.py --amp`` without a GPU.

mmengine's ``AmpOptimWrapper`` needs a GPU (its ``GradScaler`` is CUDA's). On CPU, autocast runs the
forward in bfloat16, whose exponent range is float32's: no loss scaling is needed, so the wrapper
only adds the autocast region.
"""
from contextlib import contextmanager
from typing import Union

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

__all__ = ['CPUAmpOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward (``optim_context``) runs under ``torch.autocast('cpu',
    dtype)``.

    Args:
        dtype (str | torch.dtype): The autocast dtype, ``'bfloat16'`` (no loss scaling needed).
            Defaults to ``'bfloat16'``.
        **kwargs: ``OptimWrapper`` arguments (``optimizer``, ``accumulative_counts``,
        ``clip_grad``).
    """

    def __init__(self, dtype: Union[str, torch.dtype] = 'bfloat16', **kwargs):
        if dtype not in ('bfloat16', torch.bfloat16):
            raise ValueError(
                f"CPUAmpOptimWrapper dtype must be 'bfloat16' (float16 would need loss scaling), "
                f'got dtype={dtype!r}')
        super().__init__(**kwargs)
        self.cast_dtype = torch.bfloat16

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), torch.autocast(device_type='cpu', dtype=self.cast_dtype):
            yield
