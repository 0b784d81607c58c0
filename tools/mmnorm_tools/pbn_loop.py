"""The ``PBN-loop`` case of ``tools/benchmark_norms.py``: PBN's training forward as the released
code computes it, patch by patch (the tests use it as their oracle too)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['pbn_patch_loop']


def pbn_patch_loop(x: torch.Tensor, layer: nn.Module, plan) -> torch.Tensor:
    """Straightforward PBN training forward: a Python loop over the patches of both views, two
    ``F.batch_norm`` calls per patch (running and patch statistics), ``torch.cat`` to re-assemble
    (the released code's structure).

    ``layer`` provides weight, bias, running stats (updated in place), eps and momentum; ``plan`` is
    a ``PBNPlan``.
    """
    w, b, rm, rv = layer.weight, layer.bias, layer.running_mean, layer.running_var
    height, width = x.shape[2:]
    outputs = []
    for i, view in enumerate(plan.views):
        row_edges = (0, *view.row_cuts, height)
        col_edges = (0, *view.col_cuts, width)
        rows, k = [], 0
        for r0, r1 in zip(row_edges[:-1], row_edges[1:]):
            cols = []
            for c0, c1 in zip(col_edges[:-1], col_edges[1:]):
                patch = x[:, :, r0:r1, c0:c1]
                # clones: the running buffers change in place below, autograd must see the values
                # used here
                z_running = F.batch_norm(patch, rm.clone(), rv.clone(), w, b, False, 0.0, layer.eps)
                z_patch = F.batch_norm(patch, rm if i == 0 else None, rv if i == 0 else None, w, b,
                                       True, layer.momentum, layer.eps)
                cols.append(
                    torch.where(view.patch_stats[k].to(x.device).view(1, -1, 1, 1), z_patch,
                                z_running))
                k += 1
            rows.append(torch.cat(cols, dim=3))
        outputs.append(torch.cat(rows, dim=2))
    return torch.where(plan.use_b.to(x.device).view(1, -1, 1, 1), outputs[1], outputs[0])
