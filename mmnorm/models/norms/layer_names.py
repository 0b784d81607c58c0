"""Module paths for the error messages of mmnorm layers.

A layer does not know where it sits in a model; :func:`name_layers` stores each mmnorm layer's path
(e.g. ``backbone.layer1.0.bn1``) in its ``layer_path`` attribute, and :func:`layer_label` puts it
into messages. The UDA wrappers and :func:`mmnorm.recalibrate_bn` name the layers of their model;
call :func:`name_layers` yourself for other models.
"""
import torch.nn as nn

__all__ = ['layer_label', 'name_layers']


def layer_label(module: nn.Module) -> str:
    """``'IBN(64) at backbone.layer1.0.bn1'``, or ``'IBN(64)'`` when the path is unknown."""
    label = f'{type(module).__name__}({getattr(module, "num_features", "?")})'
    path = getattr(module, 'layer_path', None)
    return f'{label} at {path}' if path else label


def name_layers(model: nn.Module) -> int:
    """Sets ``layer_path`` on every module whose class declares it (the mmnorm norm layers);
    returns how many."""
    count = 0
    for name, module in model.named_modules():
        if 'layer_path' in dir(type(module)):
            module.layer_path = name or None
            count += 1
    return count
