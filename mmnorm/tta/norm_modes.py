"""Test-time statistics modes of every BN-like layer, without touching a buffer.

Two statistics modes, per BN-like layer (:func:`mmnorm.bn_layers.find_bn_layers`), computed by
:func:`~mmnorm.models.norms.test_time.normalize_with_test_statistics` (the code of AdaBN's test
modes ``'batch'`` / ``'blend'``). With ``mu_s, var_s`` the layer's source statistics (the buffers it
normalises with in eval, :func:`mmnorm.bn_layers.norm_buffers`), ``mu_b, var_b`` the test batch's
per-channel mean and biased variance over ``N x *`` (N samples) and ``N_0`` the prior strength:

* ``'bn'`` ("BN adapt", Schneider et al. 2020 / TENT): ``y = w (x - mu_b) / sqrt(var_b + eps) + b``;
* ``'prior'`` (Schneider et al., arXiv 2006.16971): ``mu = a mu_s + (1 - a) mu_b``,
  ``var = a var_s + (1 - a) var_b``, ``a = N_0 / (N_0 + N)``.

A call with one value per channel (e.g. a 1x1 image-pool branch on one image) has no batch
statistics: it uses the source statistics (as in eval). Distributed, each rank normalises with its
own batch (no collective; SyncBN layers do not synchronise).

How each layer kind takes part (the layer's own forward still runs around its statistics leaf):

* torch ``_BatchNorm`` (BN, SyncBN, ``_BatchNormXd``) and mmcv ``MMSyncBN``: the layer is the leaf;
* composite layers holding a torch BN child that owns their
  :func:`~mmnorm.bn_layers.norm_buffers` — AdaBN (the selected ``eval_domain``'s BN; the layer's
  test mode is held at ``'running'`` meanwhile, so AdaBN applies its shared affine itself), PBN (its
  ``bn`` child): the child is the leaf;
* IBN: its BN half is a torch BN (a leaf); the IN half already normalises with instance statistics;
* RN and other composites with ``weight``, ``bias``, ``eps`` and their own buffers: the layer is the
  leaf, its ``norm_buffers`` (RN: the target statistics) are the source prior.

Mechanism (:func:`statistics_mode`): a forward hook on every leaf (torch's
``register_forward_hook``: a hook that returns a value replaces the module's output) returns the
test-statistics normalisation of the leaf's input. The leaves (and their submodules) are held in
eval mode meanwhile, so their own forward reads the buffers and writes nothing (``norm_eval`` /
``frozen_stages`` locks do not matter); modes, hooks and AdaBN selections are restored on exit. The
cost of this choice: every leaf call still runs the leaf's own eval-mode normalisation, whose output
is discarded (one elementwise pass over the leaf's input).
"""
from contextlib import contextmanager
from functools import partial
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn

from ..bn_layers import find_bn_layers, is_torch_bn, norm_buffers
from ..models.norms.adabn import adabn_selection, restore_adabn_selection
from ..models.norms.test_time import normalize_with_test_statistics

__all__ = ['STAT_MODES', 'statistics_leaves', 'statistics_mode']

STAT_MODES = ('bn', 'prior')


def _leaf_of(name: str, layer: nn.Module) -> nn.Module:
    """The module whose forward computes ``layer``'s statistics (see the module docstring)."""
    if is_torch_bn(layer):
        return layer
    mean_buf = norm_buffers(layer)[0]
    owners = [
        m for m in layer.modules()
        if m is not layer and is_torch_bn(m) and m.running_mean is mean_buf
    ]
    if owners:
        return owners[0]
    if all(hasattr(layer, a) for a in ('weight', 'bias', 'eps')):
        return layer
    raise TypeError(
        f'test-time adaptation: the BN-like layer {name or "(root)"} ({type(layer).__name__}) '
        'holds no torch BN child owning its recalibration_buffers() and has no weight/bias/eps to '
        'normalise with; give it a BN child or those attributes')


def statistics_leaves(
        model: nn.Module) -> Tuple[Dict[str, nn.Module], Dict[str, nn.Module], Dict[str, str]]:
    """``({name: BN-like layer}, {name: statistics leaf}, {name: reason left alone})`` of ``model``.

    Names are those of :func:`mmnorm.bn_layers.find_bn_layers`; a leaf is the layer or its BN child
    (module docstring).
    """
    layers, left_alone = find_bn_layers(model)
    return layers, {name: _leaf_of(name, layer) for name, layer in layers.items()}, left_alone


def _test_statistics_output(module: nn.Module, args: tuple, output: torch.Tensor, *,
                            source: Tuple[Optional[torch.Tensor],
                                          Optional[torch.Tensor]], prior: float) -> torch.Tensor:
    """Forward hook of a statistics leaf: its output, recomputed from its input with test
    statistics (bound with ``functools.partial``)."""
    return normalize_with_test_statistics(args[0], module.weight, module.bias, module.eps, *source,
                                          prior)


@contextmanager
def statistics_mode(model: nn.Module,
                    leaves: Dict[str, nn.Module],
                    mode: str = 'bn',
                    prior: float = 16.0) -> Iterator[None]:
    """Context manager: every statistics leaf of ``leaves`` normalises in ``mode`` (``'bn'`` /
    ``'prior'`` with strength ``prior``) through a forward hook (module docstring).

    On exit the hooks go and the leaves' modes and the AdaBN layers' selections are restored.
    Buffers are never written.

    Args:
        model (nn.Module): The model holding ``leaves`` (its AdaBN layers are held in
            ``'running'`` test mode).
        leaves (dict): ``{name: leaf}`` of :func:`statistics_leaves`.
        mode (str): ``'bn'`` or ``'prior'``. Defaults to ``'bn'``.
        prior (float): ``N_0`` of ``'prior'``, in samples. Defaults to 16.
    """
    if mode not in STAT_MODES:
        raise ValueError(f'mode must be one of {STAT_MODES}, got {mode!r}')
    strength = float(prior) if mode == 'prior' else 0.0
    selection = adabn_selection(model)
    modes = [(m, m.training) for leaf in leaves.values() for m in leaf.modules()]
    handles = []
    try:
        for layer, _, _, _ in selection:  # AdaBN applies its shared affine around its domain's BN
            layer.set_test_mode('running')
        for module, _ in modes:
            module.training = False
        for leaf in leaves.values():
            hook = partial(_test_statistics_output, source=norm_buffers(leaf), prior=strength)
            handles.append(leaf.register_forward_hook(hook, prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in modes:
            module.training = flag
        restore_adabn_selection(selection)
