"""PBN's cell machinery (private to :mod:`mmnorm.models.norms.pbn`).

Whatever PBN's views, every channel's output is an affine map of ``x`` that is constant on the cells of a grid
(the overlay of the views' cuts). Per-cell moments come from one vectorised pass (a band-summing matmul), and the
output is one ``x * scale + shift`` with per-cell coefficients computed from those moments by a small function
(:func:`cell_norm`). Both big-tensor steps have hand-written backward passes (BN calculus restricted to each cell);
the small per-cell algebra is differentiated by autograd, re-run in the backward (no graph is kept between the
passes).
"""
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn

Edges = Tuple[int, ...]
# (mean, m2, weight, bias) -> (scale, shift, new_running_mean, new_running_var); see cell_norm
Coefficients = Callable[..., Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def _sizes(edges: Edges) -> List[int]:
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


def _band_index(edges: Edges, device) -> torch.Tensor:
    """``(L,)`` long: the band ``k`` of each position, bands being ``[edges[k], edges[k+1])``."""
    return torch.tensor([k for k, size in enumerate(_sizes(edges)) for _ in range(size)], device=device)


def _band_matrix(edges: Edges, dtype, device) -> torch.Tensor:
    """``(L, K)`` 0/1 matrix whose column k selects the positions of band ``k``."""
    return nn.functional.one_hot(_band_index(edges, device), len(edges) - 1).to(dtype)


def band_sum(t: torch.Tensor, row_edges: Edges, col_edges: Edges) -> torch.Tensor:
    """Sums ``t`` ``(N, C, H, W)`` over the batch and each cell: ``(C, R, K)`` in float64."""
    n, c, h, w = t.shape
    by_col = (t.reshape(-1, w) @ _band_matrix(col_edges, t.dtype, t.device)).view(n, c, h, -1)
    by_col = by_col.sum(0, dtype=torch.float64)  # (C, H, K)
    return torch.einsum('chk,hr->crk', by_col, _band_matrix(row_edges, torch.float64, t.device))


def expand(v: torch.Tensor, row_edges: Edges, col_edges: Edges, dtype) -> torch.Tensor:
    """Per-cell values ``(C, R, K)`` -> per-position map ``(C, H, W)`` of ``dtype``."""
    if torch.compiler.is_compiling():  # band-matrix products: inductor aborts on index_select's index_add backward
        v = v.to(dtype)
        return torch.einsum('crk,hr,wk->chw', v, _band_matrix(row_edges, dtype, v.device),
                            _band_matrix(col_edges, dtype, v.device))
    v = v.to(dtype).index_select(2, _band_index(col_edges, v.device))  # (C, R, W), small
    return v.index_select(1, _band_index(row_edges, v.device))  # whole-row copies


def cell_counts(n: int, row_edges: Edges, col_edges: Edges, device) -> torch.Tensor:
    """Elements per cell ``(R, K)`` (float64): ``N * h_i * w_j``."""
    rows = torch.tensor(_sizes(row_edges), dtype=torch.float64, device=device)
    cols = torch.tensor(_sizes(col_edges), dtype=torch.float64, device=device)
    return n * rows[:, None] * cols[None, :]


def _col_bands(col_edges: Edges) -> List[slice]:
    return [slice(a, b) for a, b in zip(col_edges[:-1], col_edges[1:])]


def _row_band_sum(t: torch.Tensor, row_edges: Edges) -> torch.Tensor:
    """Per-row values ``(N, C, H, K)`` summed over the batch and each row band: ``(C, R, K)`` float64."""
    return torch.einsum('chk,hr->crk', t.sum(0, dtype=torch.float64), _band_matrix(row_edges, torch.float64, t.device))


def band_dot(a: torch.Tensor, b: torch.Tensor, row_edges: Edges, col_edges: Edges) -> torch.Tensor:
    """``band_sum(a * b)`` without the ``a * b`` map: row dot products per column band, ``(C, R, K)`` float64."""
    dots = [torch.linalg.vecdot(a[..., band], b[..., band]) for band in _col_bands(col_edges)]
    return _row_band_sum(torch.stack(dots, -1), row_edges)


def band_sum_of_squares(t: torch.Tensor, row_edges: Edges, col_edges: Edges) -> torch.Tensor:
    """``band_sum(t * t)`` without the ``t * t`` map (row norms per column band), ``(C, R, K)`` float64."""
    norms = [torch.linalg.vector_norm(t[..., band], dim=-1) for band in _col_bands(col_edges)]
    return _row_band_sum(torch.stack(norms, -1).square_(), row_edges)


# The one-pass sum of squared deviations ``sum(x^2) - n mean^2`` loses about log10(sum(x^2) / m2) digits; above this
# ratio the moments are recomputed in two passes.
_ONE_PASS_MAX_RATIO = 100.0


def _cell_moments(x: torch.Tensor, row_edges: Edges, col_edges: Edges, counts: torch.Tensor):
    """Per-cell mean and sum of squared deviations ``(C, R, K)`` float64.

    One pass (cell sums and sums of squares, accumulated in float64); two passes like torch's CPU BN where the
    one-pass value would lose digits (a large mean, a constant cell), and under ``torch.compile`` (no data-dependent
    branch in the graph).
    """
    mean = band_sum(x, row_edges, col_edges) / counts
    if not torch.compiler.is_compiling():
        sum_sq = band_sum_of_squares(x, row_edges, col_edges)
        m2 = sum_sq - counts * mean.square()
        if bool((m2 * _ONE_PASS_MAX_RATIO >= sum_sq).all()):
            return mean, m2
    deviation = x - expand(mean, row_edges, col_edges, x.dtype)
    return mean, band_sum(deviation.square(), row_edges, col_edges)


class _CellNorm(torch.autograd.Function):
    """``y = x * scale[cell] + shift[cell]`` with ``(scale, shift, new_mean, new_var) = coefficients(mean, m2,
    weight, bias)`` from the per-cell moments of ``x``; ``new_mean`` / ``new_var`` (C,) are non-differentiable
    outputs (the running statistics the caller writes).

    Backward: ``dscale, dshift`` are cell sums of ``dy * x`` and ``dy``; autograd through ``coefficients`` (re-run
    on the saved moments) turns them into ``dmean, dm2, dweight, dbias``; then, in one fused expression,
    ``dx = dy * scale + x * 2 dm2 + (dmean / n - 2 dm2 * mean)`` (``d mean/dx = 1/n``, ``d m2/dx = 2 (x - mean)``).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, coefficients, row_edges, col_edges):
        counts = cell_counts(x.shape[0], row_edges, col_edges, x.device)
        mean, m2 = _cell_moments(x, row_edges, col_edges, counts)
        scale, shift, new_mean, new_var = coefficients(mean, m2, weight, bias)
        ctx.save_for_backward(x, mean, m2, counts, weight, bias)
        ctx.coefficients, ctx.edges = coefficients, (row_edges, col_edges)
        ctx.mark_non_differentiable(new_mean, new_var)
        # in place on one new map: an out-of-place addcmul with broadcast operands is slower
        y = (x * expand(scale, row_edges, col_edges, x.dtype)).add_(expand(shift, row_edges, col_edges, x.dtype))
        return y, new_mean, new_var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, _grad_new_mean, _grad_new_var):
        x, mean, m2, counts, weight, bias = ctx.saved_tensors
        edges = ctx.edges
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() if t is not None else None for t in (mean, m2, weight, bias)]
            scale, shift, _, _ = ctx.coefficients(*leaves)
        wanted = [t for t in leaves if t is not None]
        grads = torch.autograd.grad(
            (scale, shift), wanted,
            (band_dot(grad_y, x, *edges).to(scale.dtype), band_sum(grad_y, *edges).to(shift.dtype)), allow_unused=True)
        grads = iter([torch.zeros_like(t) if g is None else g for t, g in zip(wanted, grads)])
        grad_mean, grad_m2, grad_weight, grad_bias = [next(grads) if t is not None else None for t in leaves]
        slope = 2 * grad_m2
        offset = grad_mean / counts - slope * mean
        grad_x = (grad_y * expand(scale.detach(), *edges, x.dtype)).addcmul_(x, expand(slope, *edges, x.dtype))
        grad_x.add_(expand(offset, *edges, x.dtype))
        return grad_x, grad_weight, grad_bias, None, None, None


def cell_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], coefficients: Coefficients,
              row_edges: Edges, col_edges: Edges) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalises ``x`` with per-(channel, cell) coefficients computed from the cells' own moments.

    Args:
        x (Tensor): ``(N, C, H, W)``.
        weight, bias (Tensor | None): ``(C,)``, passed to ``coefficients`` (their gradients flow back).
        coefficients (callable): ``(mean, m2, weight, bias) -> (scale, shift, new_mean, new_var)``, a pure
            differentiable function (called again in the backward); ``mean``/``m2`` are the float64 per-cell mean
            and sum of squared deviations ``(C, R, K)`` pooled over the batch; ``scale``/``shift`` ``(C, R, K)``;
            ``new_mean``/``new_var`` ``(C,)`` the updated running statistics.
        row_edges (tuple[int]): ``(0, ..., H)``, strictly increasing; cell rows are ``[e_i, e_{i+1})``.
        col_edges (tuple[int]): ``(0, ..., W)``, likewise for columns.

    Returns:
        tuple: ``y = x * scale + shift`` per cell ``(N, C, H, W)``, and ``new_mean``, ``new_var`` (detached).
    """
    if torch.compiler.is_compiling():  # dynamo does not trace the backward's autograd.grad: plain autograd
        counts = cell_counts(x.shape[0], row_edges, col_edges, x.device)
        scale, shift, new_mean, new_var = coefficients(*_cell_moments(x, row_edges, col_edges, counts), weight, bias)
        y = x * expand(scale, row_edges, col_edges, x.dtype) + expand(shift, row_edges, col_edges, x.dtype)
        return y, new_mean.detach(), new_var.detach()
    return _CellNorm.apply(x, weight, bias, coefficients, tuple(row_edges), tuple(col_edges))


def merge_cells(counts: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor, group: torch.Tensor, num_groups: int):
    """Chan merge of cell moments into groups.

    Args:
        counts (Tensor): ``(K,)`` elements per cell. mean, m2: ``(C, K)``. group: ``(K,)`` long, cell -> group.

    Returns:
        tuple: ``counts (G,)``, ``mean (C, G)``, biased ``var (C, G)``.
    """
    # sums over each group's cells as a (K, G) one-hot matmul (inductor miscompiles index_add on 1-cell axes)
    members = nn.functional.one_hot(group, num_groups).to(mean.dtype)
    g_counts = counts.to(mean.dtype) @ members
    g_mean = (mean * counts) @ members / g_counts
    spread = m2 + counts * (mean - g_mean[:, group]).square()
    return g_counts, g_mean, spread @ members / g_counts
