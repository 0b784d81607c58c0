"""How far the statistics of every BN-like layer move between two domains (the AdaBN paper's
analysis).

For each BN-like layer (the layers :func:`mmnorm.recalibration.find_bn_layers` recalibrates) the
per-channel mean / variance of its *input* are measured over a data set, exactly (float64 Chan
merges), with the model in eval mode. Two Gaussians per channel are compared with

* the symmetric KL divergence  KL(p‖q) + KL(q‖p) = ½(σp²/σq² + σq²/σp² − 2) + ½(μp − μq)²(1/σp² +
  1/σq²), averaged over channels (the AdaBN paper's measure), and
* the mean shift |μp − μq| / σp, averaged over channels.
"""
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn

from ..batches import batches_by_size, forward_batch
from ..bn_layers import norm_buffers
from ..recalibration import find_bn_layers
from ..stats import MomentAccumulator

__all__ = [
    'Moments', 'input_moments', 'running_moments', 'symmetric_kl', 'mean_shift', 'compare_moments'
]

# (count, mean (C,), biased var (C,)) in float64
Moments = Tuple[float, torch.Tensor, torch.Tensor]


@torch.no_grad()
def input_moments(model: nn.Module,
                  data: Iterable,
                  num_batches: Optional[int] = None,
                  layers: Optional[Dict[str, nn.Module]] = None) -> Dict[str, Moments]:
    """Exact per-channel moments of every BN-like layer's input over ``data`` (eval-mode forward).

    Args:
        model (nn.Module): An mmengine model (fed data dicts through its preprocessor) or a plain
            module (fed tensors). Its train/eval modes are restored afterwards.
        data (Iterable): Batches; data dicts of mixed image sizes are regrouped into batches of one
            size (:func:`~mmnorm.batches.batches_by_size`: nothing padded enters a moment).
        num_batches (int, optional): Stop after this many (regrouped) batches. Defaults to all.
        layers (dict, optional): ``{name: module}``; defaults to :func:`find_bn_layers`.

    Returns:
        dict: ``{layer name: (count, mean (C,), biased var (C,))}``, float64.
    """
    layers = layers if layers is not None else find_bn_layers(model)[0]
    device = next(model.parameters()).device
    accs = {
        name: MomentAccumulator(norm_buffers(module)[0].numel(), device)
        for name, module in layers.items()
    }
    modes = {m: m.training for m in model.modules()}
    handles = [
        module.register_forward_pre_hook(lambda mod, args, acc=accs[name]: acc.add_input(args[0]))
        for name, module in layers.items()
    ]
    try:
        model.eval()
        for i, batch in enumerate(batches_by_size(data)):
            if num_batches is not None and i >= num_batches:
                break
            forward_batch(model, batch, device)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
    summaries = {name: acc.summary() for name, acc in accs.items()}
    if all(count == 0 for count, _, _ in summaries.values()):
        raise ValueError('input_moments saw no batch (empty data or num_batches=0)')
    return {
        name: (count, mean, m2 / count)
        for name, (count, mean, m2) in summaries.items() if count > 0
    }


def running_moments(layers: Dict[str, nn.Module]) -> Dict[str, Moments]:
    """The statistics each layer normalises with in eval mode (its running / selected-domain
    buffers)."""
    out = {}
    for name, module in layers.items():
        mean, var = norm_buffers(module)
        out[name] = (float('nan'), mean.detach().double().cpu(), var.detach().double().cpu())
    return out


def symmetric_kl(mean_p: torch.Tensor,
                 var_p: torch.Tensor,
                 mean_q: torch.Tensor,
                 var_q: torch.Tensor,
                 eps: float = 1e-5) -> float:
    """Channel-averaged symmetric KL divergence of two diagonal Gaussians (shapes (C,)); ``eps``
    as in BN."""
    var_p, var_q = var_p.double() + eps, var_q.double() + eps
    diff2 = (mean_p.double() - mean_q.double()).square()
    kl = 0.5 * (var_p / var_q + var_q / var_p - 2) + 0.5 * diff2 * (1 / var_p + 1 / var_q)
    return float(kl.mean())


def mean_shift(mean_p: torch.Tensor,
               var_p: torch.Tensor,
               mean_q: torch.Tensor,
               eps: float = 1e-5) -> float:
    """Channel-averaged |μp − μq| / σp."""
    return float(((mean_p.double() - mean_q.double()).abs() / (var_p.double() + eps).sqrt()).mean())


def compare_moments(p: Dict[str, Moments], q: Dict[str, Moments]) -> Dict[str, Tuple[float, float]]:
    """``{layer: (symmetric KL, mean shift)}`` for the layers present in both."""
    return {
        name: (symmetric_kl(p[name][1], p[name][2], q[name][1].to(p[name][1]),
                            q[name][2].to(p[name][1])),
               mean_shift(p[name][1], p[name][2], q[name][1].to(p[name][1])))
        for name in p if name in q
    }
