"""PBN: Patch-aware Batch Normalization.

Qi et al., "Patch-aware Batch Normalization for Improving Cross-domain Robustness"
(arXiv 2304.02848). The feature map of a batch is split into non-overlapping spatial patches; each
patch is normalised with shared affine parameters and a per-channel choice between the globally
accumulated (running) statistics and the patch's own statistics pooled over the batch.

Default (``mode='random'``) is the authors' released algorithm (code Qi5Lei/PBN, see docs/pbn.md),
per training forward:

* three views of ``x``: the whole map (view 0), 2 patches (view 1; with probability 1/2 a column
  cut ``c ~ U[W//4, (W//4)*3)``, else a row cut ``r ~ U[H//4, (H//4)*3)``) and 4 patches (view 2;
  independent row and column cuts). Two distinct views ``(a, b)`` are drawn at random.
* every patch of a view is normalised by ``SN``: per channel, with probability ``p`` the patch's
  batch statistics (over ``N x h x w``), otherwise the running statistics.
* the patches of view ``a`` update the running statistics one after another (the EMA rule of
  ``F.batch_norm``, unbiased variance), view ``b`` does not; a patch normalised with running
  statistics uses them as they are when that patch is reached (view ``b`` sees the statistics after
  all updates of view ``a``).
* output: per channel, view ``b`` with probability 1/2, else view ``a``.

Eval is plain BN with the running statistics (the torch ``BatchNorm2d`` child does it).
``mode='fixed'`` is a deterministic variant: a fixed ``grid`` of patches, each normalised with
``lam * running + (1 - lam) * patch`` statistics, running statistics updated from the whole map
exactly like BN.

Formulation: the output is an affine map of ``x`` that is constant on the cells of the overlay of
both views' cuts (at most 3 x 3 cells). Per-cell moments are band sums (a matmul with 0/1 band
matrices; two passes: the mean, then the squared deviations), patch statistics are exact merges of
cell moments (:func:`mmnorm.stats.merge_moments`), and the output is ``x * scale + shift`` with
per-cell coefficients expanded by band matrices. All of it is plain differentiable tensor code:
autograd derives the backward, and ``torch.compile`` traces the same code.

Multi-process training (``sync_stats``): the per-patch counts, sums and sums of squares of both
views are added up over the ranks by one all-reduce (:func:`mmnorm.stats.all_reduce_moments`,
differentiable) and every rank draws the plan of rank 0 (one broadcast of a seed), so ``R``
processes normalise as one process with all ``R`` batches. By default PBN syncs exactly when its BN
child is a SyncBN (mmengine's ``sync_bn`` / ``convert_sync_batchnorm``), per process otherwise (the
released code, like BN). The ranks' maps must be cut into the same number of patches (an axis
shorter than 4 on some ranks only is not supported).
"""
import bisect
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.dist import broadcast
from mmengine.registry import MODELS

from ...bn_layers import MMSyncBN
from ...stats import all_reduce_moments, in_process_group, merge_moments
from ...validation import (ArgumentError, ArgumentTypeError, check_eps, check_momentum,
                           check_positive_int)
from .degenerate import check_batch_statistics

__all__ = [
    'PBN', 'PatchView', 'PBNPlan', 'sample_pbn_plan', 'view_cuts', 'grid_edges', 'patch_moments',
    'pbn_train', 'pbn_fixed', 'pbn_random_train'
]

Edges = Tuple[int, ...]  # (0, ..., L), strictly increasing: band k is [edges[k], edges[k + 1])


# -------------------------------------------------------------------------------------------------
# Random plan of one training forward
# -------------------------------------------------------------------------------------------------
@dataclass
class PatchView:
    """One view of the feature map: cut points and the per-patch, per-channel statistics choice.

    Patches are ordered row-major (released order: up/down, left/right, or lu, ru, ld, rd).

    Attributes:
        row_cuts (tuple[int]): Interior row indices where the map is cut (0 or 1 entries for the
            released views).
        col_cuts (tuple[int]): Interior column indices where the map is cut.
        patch_stats (Tensor): ``(num_patches, C)`` bool; True: the patch's own batch statistics,
            False: running.
    """
    row_cuts: Tuple[int, ...]
    col_cuts: Tuple[int, ...]
    patch_stats: torch.Tensor

    @property
    def num_patches(self) -> int:
        return (len(self.row_cuts) + 1) * (len(self.col_cuts) + 1)


@dataclass
class PBNPlan:
    """All random choices of one ``mode='random'`` training forward.

    Attributes:
        views (tuple[PatchView, PatchView]): ``(a, b)``; view ``a`` updates the running statistics.
        use_b (Tensor): ``(C,)`` bool; True where the output channel comes from view ``b``.
    """
    views: Tuple[PatchView, PatchView]
    use_b: torch.Tensor


def _cut(length: int, low: int, high: int, generator: Optional[torch.Generator]) -> Tuple[int, ...]:
    """One random cut in ``[low, high)``, or none when the axis is too short to split
    (``length < 4``)."""
    if length < 4 or high <= low:
        return ()
    return (int(torch.randint(low, high, (1, ), generator=generator).item()), )


def view_cuts(view_id: int,
              height: int,
              width: int,
              generator: Optional[torch.Generator] = None) -> Tuple[Edges, Edges]:
    """Draws the cut points of view ``view_id`` (0 whole map, 1 two patches, 2 four patches).

    Cuts follow the released code: ``U[L//4, (L//4)*3)`` on an axis of length ``L``. An axis
    shorter than 4 is never cut (small-map fallback): the view then has fewer patches, down to the
    whole map.

    Returns:
        tuple: ``(row_cuts, col_cuts)``.
    """
    rows = lambda: _cut(height, height // 4, height // 4 * 3, generator)  # noqa: E731
    cols = lambda: _cut(width, width // 4, width // 4 * 3, generator)  # noqa: E731
    if view_id == 0:
        return (), ()
    if view_id == 1:
        split_columns = int(torch.randint(2, (1, ), generator=generator).item()) == 0
        return ((), cols()) if split_columns else (rows(), ())
    if view_id == 2:
        row_cuts = rows()
        return row_cuts, cols()
    raise ValueError(f'view_id must be 0, 1 or 2, got {view_id!r}')


def sample_pbn_plan(num_channels: int,
                    height: int,
                    width: int,
                    p: float = 0.5,
                    generator: Optional[torch.Generator] = None) -> PBNPlan:
    """Draws the random choices of one training forward from ``generator`` (torch's default CPU RNG
    if None).

    All draws happen on the CPU, so the same seed gives the same plan on CPU and GPU.

    Args:
        num_channels (int): ``C``.
        height (int): ``H`` of the input.
        width (int): ``W`` of the input.
        p (float): Probability that a patch channel uses the patch statistics. Defaults to 0.5
            (released).
        generator (torch.Generator, optional): CPU generator. Defaults to None (global RNG, honours
            ``torch.manual_seed``).
    """
    view_ids = tuple(int(v) for v in torch.randperm(3, generator=generator)[:2])
    views = []
    for view_id in view_ids:
        row_cuts, col_cuts = view_cuts(view_id, height, width, generator)
        num_patches = (len(row_cuts) + 1) * (len(col_cuts) + 1)
        patch_stats = torch.rand(num_patches, num_channels, generator=generator) < p
        views.append(PatchView(row_cuts, col_cuts, patch_stats))
    use_b = torch.rand(num_channels, generator=generator) < 0.5
    return PBNPlan(views=(views[0], views[1]), use_b=use_b)


# -------------------------------------------------------------------------------------------------
# Cells: per-cell moments and the per-cell affine map
# -------------------------------------------------------------------------------------------------
def _sizes(edges: Edges) -> List[int]:
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


def _band_matrix(edges: Edges, dtype: torch.dtype, device) -> torch.Tensor:
    """``(L, K)`` 0/1 matrix whose column ``k`` selects the positions of band ``k``."""
    index = [k for k, size in enumerate(_sizes(edges)) for _ in range(size)]
    return F.one_hot(torch.tensor(index, device=device), len(edges) - 1).to(dtype)


def band_sum(t: torch.Tensor, row_edges: Edges, col_edges: Edges) -> torch.Tensor:
    """Sums ``t`` ``(N, C, H, W)`` over the batch and each cell: ``(C, R, K)`` in float64."""
    n, c, h, w = t.shape
    by_col = (t.reshape(-1, w) @ _band_matrix(col_edges, t.dtype, t.device)).view(n, c, h, -1)
    by_col = by_col.sum(0, dtype=torch.float64)  # (C, H, K)
    return torch.einsum('chk,hr->crk', by_col, _band_matrix(row_edges, torch.float64, t.device))


def expand(v: torch.Tensor, row_edges: Edges, col_edges: Edges, dtype: torch.dtype) -> torch.Tensor:
    """Per-cell values ``(C, R, K)`` -> per-position map ``(C, H, W)`` of ``dtype``."""
    return torch.einsum('crk,hr,wk->chw', v.to(dtype), _band_matrix(row_edges, dtype, v.device),
                        _band_matrix(col_edges, dtype, v.device))


def cell_counts(n: int, row_edges: Edges, col_edges: Edges, device) -> torch.Tensor:
    """Elements per cell ``(R, K)`` (float64): ``N * h_i * w_j``."""
    rows = torch.tensor(_sizes(row_edges), dtype=torch.float64, device=device)
    cols = torch.tensor(_sizes(col_edges), dtype=torch.float64, device=device)
    return n * rows[:, None] * cols[None, :]


def cell_moments(x: torch.Tensor, row_edges: Edges,
                 col_edges: Edges) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-cell element counts, means and sums of squared deviations of ``x`` ``(N, C, H, W)``
    pooled over the batch, in two passes (the mean, then the squared deviations from it).

    The squares are summed in float64: a float32 square overflows from ``|x - mean| > 1.8e19``
    (e.g. a 1e30 activation) where torch's BN keeps a finite output, and an Inf square times the
    band matrices' zeros would spread NaN to every cell of the channel.

    Returns:
        tuple: ``counts (R * K,)``, ``mean (C, R * K)``, ``M2 (C, R * K)``, float64, cells
        row-major.
    """
    counts = cell_counts(x.shape[0], row_edges, col_edges, x.device)
    mean = band_sum(x, row_edges, col_edges) / counts
    deviation = x - expand(mean, row_edges, col_edges, x.dtype)
    m2 = band_sum(deviation.to(torch.float64).square(), row_edges, col_edges)
    return counts.flatten(), mean.flatten(1), m2.flatten(1)


def cell_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, row_edges: Edges,
                col_edges: Edges) -> torch.Tensor:
    """``x * scale + shift`` with per-(channel, cell) coefficients ``(C, R * K)`` (cells
    row-major)."""
    shape = (x.shape[1], len(row_edges) - 1, len(col_edges) - 1)
    return (x * expand(scale.view(shape), row_edges, col_edges, x.dtype) +
            expand(shift.view(shape), row_edges, col_edges, x.dtype))


def patch_moments(counts: torch.Tensor,
                  mean: torch.Tensor,
                  m2: torch.Tensor,
                  groupings: Sequence[Tuple[torch.Tensor, int]],
                  sync: bool = False) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Cell moments merged into the patches of each grouping (a view), optionally pooled over the
    ranks with ONE all-reduce for all of them.

    Args:
        counts, mean, m2: Cell moments from :func:`cell_moments`: ``(cells,)``, ``(C, cells)``.
        groupings (list[tuple[Tensor, int]]): Per view ``(index, P)``: ``index`` ``(cells,)`` long,
            the patch of each cell, and the number of patches ``P``.
        sync (bool): Add every rank's patch sums (:func:`mmnorm.stats.all_reduce_moments`).

    Returns:
        list[tuple]: Per view ``counts (P,)``, ``mean (C, P)``, biased ``var (C, P)``.
    """
    merged = [merge_moments(counts, mean, m2, F.one_hot(index, size)) for index, size in groupings]
    sizes = [size for _, size in groupings]
    p_counts, p_mean, p_m2 = (torch.cat(parts, -1) for parts in zip(*merged))
    if sync:
        p_counts, p_mean, p_m2 = all_reduce_moments(p_counts, p_mean, p_m2)
    return [
        (c, mu, m / c)
        for c, mu, m in zip(p_counts.split(sizes), p_mean.split(sizes, -1), p_m2.split(sizes, -1))
    ]


def _patch_index(view: PatchView, row_edges: Edges, col_edges: Edges, device) -> torch.Tensor:
    """``(R * K,)`` long: the patch of ``view`` (row-major) that contains each overlay cell."""
    cols_per_row = len(view.col_cuts) + 1
    index = [
        bisect.bisect_right(view.row_cuts, r0) * cols_per_row +
        bisect.bisect_right(view.col_cuts, c0) for r0 in row_edges[:-1] for c0 in col_edges[:-1]
    ]
    return torch.tensor(index, dtype=torch.long, device=device)


def _edges(length: int, *cut_lists: Sequence[int]) -> Edges:
    return tuple(sorted({0, length}.union(*[set(c) for c in cut_lists])))


def _affine_coefficients(mean, var, weight, bias, eps):
    """Per-(channel, group) ``scale = w / sqrt(var + eps)`` and ``shift = b - mean * scale``;
    mean, var ``(C, G)``."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.to(scale.dtype)[:, None]
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.to(scale.dtype)[:, None]
    return scale, shift


def _ema(old: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    return old * (1 - momentum) + new * momentum


# -------------------------------------------------------------------------------------------------
# Training forwards
# -------------------------------------------------------------------------------------------------
def pbn_train(x: torch.Tensor,
              weight: Optional[torch.Tensor],
              bias: Optional[torch.Tensor],
              running_mean: torch.Tensor,
              running_var: torch.Tensor,
              plan: PBNPlan,
              momentum: float,
              eps: float,
              sync: bool = False) -> torch.Tensor:
    """The released PBN training forward for a given plan; updates ``running_mean/var`` in place.

    Args:
        x (Tensor): ``(N, C, H, W)``, float32 or float64.
        weight, bias (Tensor | None): ``(C,)`` affine parameters.
        running_mean, running_var (Tensor): ``(C,)`` buffers; updated by view ``a``'s patches in
            order.
        plan (PBNPlan): The random choices (:func:`sample_pbn_plan`).
        momentum (float): EMA factor of each patch update.
        eps (float): Added to the variance.
        sync (bool): Patch statistics over the ranks of the process group (the plan must be the
            same on every rank). Defaults to False.

    Returns:
        Tensor: ``(N, C, H, W)``.
    """
    h, w = x.shape[2:]
    view_a, view_b = plan.views
    row_edges = _edges(h, view_a.row_cuts, view_b.row_cuts)  # overlay of both views' cuts
    col_edges = _edges(w, view_a.col_cuts, view_b.col_cuts)
    index_a = _patch_index(view_a, row_edges, col_edges, x.device)  # overlay cell -> patch
    index_b = _patch_index(view_b, row_edges, col_edges, x.device)
    counts, mean, m2 = cell_moments(x, row_edges, col_edges)
    groupings = [(index_a, view_a.num_patches), (index_b, view_b.num_patches)]
    (n_a, mean_a, var_a), (_, mean_b, var_b) = patch_moments(counts, mean, m2, groupings, sync)
    # Running statistics as each patch of view a is reached (released sequential EMA, <= 4 small
    # updates); view b sees them after all updates.
    rm = running_mean.detach().clone().to(mean.dtype)  # the buffers are written at the end
    rv = running_var.detach().clone().to(mean.dtype)
    seen_mean, seen_var = [], []
    for k in range(view_a.num_patches):
        seen_mean.append(rm)
        seen_var.append(rv)
        unbiased = var_a[:, k].detach() * (n_a[k] / (n_a[k] - 1).clamp(min=1))
        rm, rv = _ema(rm, mean_a[:, k].detach(), momentum), _ema(rv, unbiased, momentum)
    views = ((view_a, index_a, mean_a, var_a, torch.stack(seen_mean, 1), torch.stack(seen_var, 1)),
             (view_b, index_b, mean_b, var_b, rm[:, None], rv[:, None]))
    scales, shifts = [], []
    for view, index, p_mean, p_var, r_mean, r_var in views:
        use_patch = view.patch_stats.to(x.device).t()  # (C, P)
        scale, shift = _affine_coefficients(
            torch.where(use_patch, p_mean, r_mean), torch.where(use_patch, p_var, r_var), weight,
            bias, eps)
        scales.append(scale[:, index])  # (C, cells)
        shifts.append(shift[:, index])
    use_b = plan.use_b.to(x.device)[:, None]
    y = cell_affine(x, torch.where(use_b, scales[1], scales[0]),
                    torch.where(use_b, shifts[1], shifts[0]), row_edges, col_edges)
    with torch.no_grad():
        running_mean.copy_(rm)
        running_var.copy_(rv)
    return y


@torch.compiler.disable
def pbn_random_train(x: torch.Tensor,
                     weight: Optional[torch.Tensor],
                     bias: Optional[torch.Tensor],
                     running_mean: torch.Tensor,
                     running_var: torch.Tensor,
                     p: float,
                     momentum: float,
                     eps: float,
                     sync: bool = False) -> torch.Tensor:
    """Draws a plan (:func:`sample_pbn_plan`, patch-statistics probability ``p``) and runs
    :func:`pbn_train`.

    With ``sync`` every rank draws its plan from a generator seeded by rank 0 (a seed drawn from
    rank 0's default generator, one broadcast), so the patches agree across the ranks.

    The plan's cut positions are drawn on the host every forward and shape the computation, so
    ``torch.compile`` runs this eagerly: one graph break at the layer instead of a recompilation per
    plan.
    """
    _, c, h, w = x.shape
    generator = None
    if sync:
        seed = torch.randint(2**62, (1, ))  # every rank draws one, rank 0's is used
        broadcast(seed, src=0)
        generator = torch.Generator().manual_seed(int(seed))
    plan = sample_pbn_plan(c, h, w, p, generator)
    return pbn_train(x, weight, bias, running_mean, running_var, plan, momentum, eps, sync)


def grid_edges(length: int, parts: int) -> Edges:
    """Edges of ``parts`` near-equal bands (``i * L // parts``); an axis shorter than 4 stays
    whole."""
    if length < 4 or parts <= 1:
        return (0, length)
    return tuple(sorted({i * length // parts for i in range(min(parts, length) + 1)}))


def pbn_fixed(x: torch.Tensor,
              weight: Optional[torch.Tensor],
              bias: Optional[torch.Tensor],
              running_mean: torch.Tensor,
              running_var: torch.Tensor,
              grid: Tuple[int, int],
              lam: float,
              momentum: float,
              eps: float,
              sync: bool = False) -> torch.Tensor:
    """Deterministic PBN: every patch of a fixed grid is normalised with
    ``lam * running + (1 - lam) * patch`` mean and variance; the running statistics get BN's update
    from the whole-map batch statistics.

    Args:
        x (Tensor): ``(N, C, H, W)``.
        grid (tuple[int, int]): ``(rows, cols)`` of patches.
        lam (float): Weight of the running statistics.
        Others as in :func:`pbn_train`.
    """
    h, w = x.shape[2:]
    row_edges, col_edges = grid_edges(h, grid[0]), grid_edges(w, grid[1])
    counts, mean, m2 = cell_moments(x, row_edges, col_edges)
    if sync:  # the patches are the cells
        counts, mean, m2 = all_reduce_moments(counts, mean, m2)
    rm = running_mean.detach().clone().to(mean.dtype)  # the buffers are written at the end
    rv = running_var.detach().clone().to(mean.dtype)
    total, whole_mean, whole_m2 = merge_moments(counts, mean.detach(), m2.detach())
    scale, shift = _affine_coefficients(lam * rm[:, None] + (1 - lam) * mean,
                                        lam * rv[:, None] + (1 - lam) * m2 / counts, weight, bias,
                                        eps)
    y = cell_affine(x, scale, shift, row_edges, col_edges)
    with torch.no_grad():
        running_mean.copy_(_ema(rm, whole_mean[:, 0], momentum))
        running_var.copy_(_ema(rv, whole_m2[:, 0] / (total[0] - 1).clamp(min=1), momentum))
    return y


# -------------------------------------------------------------------------------------------------
# The layer
# -------------------------------------------------------------------------------------------------
_BN_KEYS = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def _flatten_bn_keys(module, state_dict, prefix, local_metadata):
    """State-dict post hook: ``<prefix>bn.<name>`` -> ``<prefix><name>``, so a PBN state dict is a
    BN state dict."""
    inner = prefix + 'bn.'
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _check_probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ArgumentError(f'PBN {name} must be a number in [0, 1], got {name}={value!r}')
    return float(value)


@MODELS.register_module()
class PBN(nn.Module):
    """Patch-aware Batch Normalization for ``(N, C, H, W)`` inputs, a drop-in for ``BatchNorm2d``.

    Train mode runs PBN (module docstring; ``mode='random'`` is the released algorithm,
    ``mode='fixed'`` the deterministic grid/``lam`` variant). Eval mode, and train mode while the
    inner BN is in eval mode (``norm_eval=True``), is the plain BN child. The parameters and buffers
    are those of a ``BatchNorm2d`` child ``bn``; ``state_dict()`` stores them under BN's own keys
    (``weight``, ``bias``, ``running_mean``, ...), so BN checkpoints load strictly and PBN
    checkpoints load into BN models. Holding a torch BN child lets the layer survive
    ``convert_sync_batchnorm`` (the child becomes SyncBN, PBN stays PBN) and
    ``revert_sync_batchnorm``.

    Randomness comes from torch's default CPU generator, so ``torch.manual_seed`` and mmengine's
    ``randomness`` config control it, on CPU and GPU alike.

    Args:
        num_features (int): Number of channels ``C``.
        eps (float): Added to the variance, > 0. Defaults to 1e-5.
        momentum (float): EMA factor of each running-statistics update, in [0, 1] (None, a
            cumulative average, is refused). Defaults to 0.1.
        affine (bool): Learnable ``weight``/``bias``. Defaults to True.
        track_running_stats (bool): Must be True (PBN mixes in running statistics).
            Defaults to True.
        mode (str): ``'random'`` (released algorithm) or ``'fixed'`` (deterministic).
            Defaults to ``'random'``.
        p (float): ``'random'``: probability that a patch channel uses the patch statistics.
            Defaults to 0.5.
        grid (tuple[int, int]): ``'fixed'``: patch rows and columns. Defaults to (2, 2).
        lam (float): ``'fixed'``: weight of the running statistics. Defaults to 0.5.
        sync_stats (bool, optional): In a process group of several ranks, pool the patch
            statistics over the ranks (one all-reduce per forward, plus a seed broadcast in
            ``'random'`` mode) so that the ranks normalise as one batch; a no-op in one process.
            Defaults to None: sync exactly when the BN child is a SyncBN (the config's
            ``sync_bn``), per process otherwise (the released code).
        device, dtype: Factory arguments of the parameters and buffers.

    Shape:
        - Input: ``(N, C, H, W)``; ``(N, C)`` and ``(N, C, L)`` are normalised as ``(N, C, L, 1)``
          maps
        - Output: same shape as the input
    """

    _abbr_ = 'bn'  # backbones name it bn1, bn2, ... like BN, so BN checkpoints keep their keys
    layer_path = None  # module path for messages (layer_names.name_layers)
    _version = 2  # state-dict metadata version of torch BN (num_batches_tracked present)

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: float = 0.1,
                 affine: bool = True,
                 track_running_stats: bool = True,
                 *,
                 mode: str = 'random',
                 p: float = 0.5,
                 grid: Tuple[int, int] = (2, 2),
                 lam: float = 0.5,
                 sync_stats: Optional[bool] = None,
                 device=None,
                 dtype=None):
        super().__init__()
        check_positive_int(num_features, 'PBN num_features')
        if mode not in ('random', 'fixed'):
            raise ArgumentError(f"PBN mode must be 'random' or 'fixed', got mode={mode!r}")
        eps = check_eps(eps, 'PBN')
        momentum = check_momentum(momentum, 'PBN', allow_none=False)  # its EMA needs a number
        if not track_running_stats:
            raise ArgumentError('PBN needs running statistics, got track_running_stats=False')
        if not isinstance(grid, (tuple, list)) or len(grid) != 2:
            raise ArgumentError('PBN grid must be a pair of positive ints (rows, cols), '
                                f'got grid={grid!r}')
        check_positive_int(grid[0], f'PBN grid rows (grid={grid!r})')
        check_positive_int(grid[1], f'PBN grid cols (grid={grid!r})')
        self.mode = mode
        self.p = _check_probability('p', p)
        self.grid = (int(grid[0]), int(grid[1]))
        self.lam = _check_probability('lam', lam)
        if sync_stats is not None and not isinstance(sync_stats, bool):
            raise ArgumentTypeError(
                f'PBN sync_stats must be True, False or None (follow the BN child), got '
                f'{sync_stats!r}')
        self.sync_stats = sync_stats
        self.bn = nn.BatchNorm2d(
            num_features, eps=eps, momentum=momentum, affine=affine, device=device, dtype=dtype)
        self.register_state_dict_post_hook(_flatten_bn_keys)

    # BN attributes, read from the child so they follow sync_bn conversion and momentum changes.
    num_features = property(lambda self: self.bn.num_features)
    eps = property(lambda self: self.bn.eps)
    momentum = property(lambda self: self.bn.momentum)
    affine = property(lambda self: self.bn.affine)
    weight = property(lambda self: self.bn.weight)
    bias = property(lambda self: self.bn.bias)
    running_mean = property(lambda self: self.bn.running_mean)
    running_var = property(lambda self: self.bn.running_var)
    num_batches_tracked = property(lambda self: self.bn.num_batches_tracked)

    def recalibration_buffers(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The buffers AdaBN recalibration writes the target statistics of this layer's input
        into."""
        return self.bn.running_mean, self.bn.running_var

    def synchronises(self) -> bool:
        """Whether a training forward pools the patch statistics over the ranks now
        (``sync_stats``, or by default a SyncBN child, in a process group of several ranks)."""
        if self.sync_stats is None:
            wanted = isinstance(self.bn, nn.SyncBatchNorm) or (MMSyncBN is not None
                                                               and isinstance(self.bn, MMSyncBN))
        else:
            wanted = self.sync_stats
        return wanted and in_process_group()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() in (2, 3):  # (N, C) / (N, C, L), BN1d positions (EncNet's encoding): (L, 1) maps
            return self.forward(x.reshape(*x.shape, *(1, ) * (4 - x.dim()))).reshape(x.shape)
        if x.dim() != 4:
            raise ValueError('PBN expects an (N, C, H, W), (N, C, L) or (N, C) input, '
                             f'got shape {tuple(x.shape)}')
        if not (self.training and self.bn.training):
            return self.bn(x)
        n, c, h, w = x.shape
        if c != self.num_features:
            raise ValueError(f'PBN over {self.num_features} channels got an input with {c}: '
                             f'shape {tuple(x.shape)}')
        sync = self.synchronises()
        if not sync:  # one value per channel: mmnorm's message (degenerate.py)
            check_batch_statistics(self, x)
        if n * h * w == 0:
            return self.bn(x)  # an empty batch: torch BN's empty output
        momentum = self.momentum
        if momentum is None:
            raise ValueError('PBN needs a float momentum in train mode, got momentum=None')
        compute = x if x.dtype in (torch.float32, torch.float64) else x.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.mode == 'random':
                y = pbn_random_train(compute, self.weight, self.bias, self.running_mean,
                                     self.running_var, self.p, momentum, self.eps, sync)
            else:
                y = pbn_fixed(compute, self.weight, self.bias, self.running_mean, self.running_var,
                              self.grid, self.lam, momentum, self.eps, sync)
        self.bn.num_batches_tracked.add_(1)
        return y.to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A plain BN entry (``<prefix>weight`` ...) goes to the child (``<prefix>bn.weight`` ...).
        for name in _BN_KEYS:
            if prefix + name in state_dict:
                state_dict[prefix + 'bn.' + name] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        common = (f'{self.num_features}, eps={self.eps}, momentum={self.momentum}, '
                  f'affine={self.affine}, sync_stats={self.sync_stats}')
        if self.mode == 'random':
            return f'{common}, mode=random, p={self.p}'
        return f'{common}, mode=fixed, grid={self.grid}, lam={self.lam}'
