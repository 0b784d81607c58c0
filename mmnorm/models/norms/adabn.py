"""AdaBN layer: batch normalization with per-domain statistics and a shared affine.

Li et al., "Revisiting Batch Normalization for Practical Domain Adaptation" (arXiv 1603.04779),
§3.2: with several domains, mini-batches are domain-pure, γ and β are shared, and each domain keeps
(and at test time uses) its own statistics. The recalibration of a trained network on target data is
:func:`mmnorm.recalibrate_bn`; this layer lets one network hold the source and target statistics
side by side.

Test-time modes (when the selected domain's BN is in eval mode):

* ``'running'``: the domain's running statistics (plain BN eval);
* ``'batch'``: the current test batch's statistics (tent's "BN adapt");
* ``'blend'``: Schneider et al. 2020 (arXiv 2006.16971), prior strength ``N = prior`` and ``n``
  samples in the batch: ``mu = N/(N+n) mu_domain + n/(N+n) mu_batch``,
  ``var = N/(N+n) var_domain + n/(N+n) var_batch`` (``var_batch`` biased, as BN normalises with).

``'batch'`` and ``'blend'`` are
:func:`~mmnorm.models.norms.test_time.normalize_with_test_statistics` with ``N_0 = 0`` / ``prior``:
the code of test-time adaptation's ``'bn'`` / ``'prior'`` (:mod:`mmnorm.tta`).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from ...validation import ArgumentError, check_eps, check_momentum, check_positive_int
from .degenerate import check_batch_statistics
from .domain import DomainAwareMixin, check_domain_split
from .test_time import normalize_with_test_statistics

__all__ = [
    'AdaBN', 'DomainBatchNorm', 'set_adabn_domain', 'adabn_selection', 'restore_adabn_selection',
    'TEST_MODES'
]

TEST_MODES = ('running', 'batch', 'blend')
_STATE_KEYS = ('running_mean', 'running_var', 'num_batches_tracked')
_BATCH_MODE_FIX = (
    "test with more than one image per batch, or use test_mode='blend' (batch statistics blended "
    'with the running ones)')


class DomainBatchNorm(_BatchNorm):
    """The statistics of one domain inside :class:`AdaBN`: a torch BN for inputs of shape (N, C, *).

    A real ``_BatchNorm`` so that ``norm_eval``, optimizer norm rules and mmengine's
    ``convert_sync_batchnorm`` / ``revert_sync_batchnorm`` treat it like any BN (it may be replaced
    by ``SyncBatchNorm`` / ``_BatchNormXd``).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f'expected an input of shape (N, C, *), got {input.dim()}D')


@MODELS.register_module()
class AdaBN(DomainAwareMixin, nn.Module):
    """Batch normalization with one set of running statistics per domain and a shared affine
    (AdaBN).

    Public API (stable; used by the UDA wrappers and :class:`mmnorm.engine.hooks.AdaBNHook`):

    * training, no declared split: the whole batch is normalised with its statistics and updates
      ``train_domain``'s running statistics — exactly ``nn.BatchNorm2d``;
    * training inside :func:`mmnorm.domain_split` ``(n_s, n_t)``: the first ``n_s`` samples are
      normalised with their own statistics and update ``split_domains[0]``, the last ``n_t``
      likewise for ``split_domains[1]`` (domain-pure statistics, shared γ, β); an empty part is
      skipped. In eval the split is ignored;
    * eval: ``eval_domain``'s statistics in ``test_mode``; select with :meth:`set_eval_domain` or
      :func:`set_adabn_domain` (or ``eval_domain=`` in the config);
    * :meth:`recalibration_buffers` names ``eval_domain``'s buffers: :func:`mmnorm.recalibrate_bn`
      writes the target statistics there;
    * state dict: ``<domain>.running_mean`` / ``running_var`` / ``num_batches_tracked`` per domain
      and the shared ``<domains[0]>.weight`` / ``bias`` (stored once, in the first domain's BN). A
      plain BN state dict (``weight, bias, running_mean, running_var``) loads: every domain starts
      from its statistics.

    Each domain is a :class:`DomainBatchNorm` child, so mmengine's sync-BN conversion (and its
    revert in single-process runs) replaces the children and keeps the domains, and
    ``norm_eval=True`` freezes them.

    Args:
        num_features (int): Channels ``C``.
        eps (float): Added to the variance, > 0. Defaults to 1e-5.
        momentum (float | None): Running-statistics momentum in [0, 1] (None: cumulative average).
            Defaults to 0.1.
        affine (bool): Learn the shared γ, β. Defaults to True.
        track_running_stats (bool): Keep running statistics. Defaults to True.
        domains (Sequence[str]): Domain names (Python identifiers). Defaults to
            ``('source', 'target')``.
        eval_domain (str, optional): Domain used in eval. Defaults to ``domains[0]`` (drop-in BN).
        train_domain (str, optional): Domain of an undeclared training batch. Defaults to
            ``domains[0]``.
        split_domains (Sequence[str], optional): The domains of the (source, target) parts of a
            declared split. Defaults to ``domains[:2]`` (one domain: that domain for both parts).
        test_mode (str): ``'running'``, ``'batch'`` or ``'blend'``. Defaults to ``'running'``.
        prior (float): ``N`` of the ``'blend'`` mode, in samples. Defaults to 16.
        device, dtype: Factory arguments of the parameters and buffers.

    Shape:
        - Input: (N, C, *)
        - Output: (N, C, *) (same shape as input)
    """
    _abbr_ = 'bn'
    layer_path = None  # module path for messages (layer_names.name_layers)

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 affine: bool = True,
                 track_running_stats: bool = True,
                 *,
                 domains: Sequence[str] = ('source', 'target'),
                 eval_domain: Optional[str] = None,
                 train_domain: Optional[str] = None,
                 split_domains: Optional[Sequence[str]] = None,
                 test_mode: str = 'running',
                 prior: float = 16.0,
                 device=None,
                 dtype=None) -> None:
        super().__init__()
        if isinstance(domains, str) or not isinstance(domains, (list, tuple)) or not domains:
            raise ArgumentError(f'domains must be a non-empty list of names, got {domains!r}')
        if len(set(domains)) != len(domains):
            raise ArgumentError(f'domains must be unique, got {tuple(domains)!r}')
        reserved = {
            'num_features', 'eps', 'momentum', 'affine', 'track_running_stats', 'domains',
            'eval_domain', 'train_domain', 'split_domains', 'test_mode', 'prior'
        }
        for name in domains:
            if (not isinstance(name, str) or not name.isidentifier() or name.startswith('_')
                    or name in reserved or hasattr(type(self), name) or name in self.__dict__):
                raise ArgumentError(
                    'domain names must be identifiers that do not start with "_" and are not '
                    f'module attributes, got {name!r}')
        check_positive_int(num_features, 'AdaBN num_features')
        self.num_features = num_features
        self.eps = eps = check_eps(eps, 'AdaBN')
        momentum = check_momentum(momentum, 'AdaBN')
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.domains = tuple(domains)
        for i, name in enumerate(self.domains):  # the first domain's BN holds the shared affine
            self.add_module(
                name,
                DomainBatchNorm(
                    num_features,
                    eps,
                    momentum,
                    affine and i == 0,
                    track_running_stats,
                    device=device,
                    dtype=dtype))
        self.eval_domain = self.check_domain(eval_domain or self.domains[0], 'eval_domain')
        self.train_domain = self.check_domain(train_domain or self.domains[0], 'train_domain')
        if split_domains is None:
            split_domains = (self.domains +
                             self.domains)[:2] if len(self.domains) == 1 else self.domains[:2]
        if isinstance(split_domains, str) or len(split_domains) != 2:
            raise ArgumentError(
                f'split_domains must name the (source, target) domains, got {split_domains!r}')
        self.split_domains = tuple(self.check_domain(d, 'split_domains') for d in split_domains)
        self.test_mode = test_mode
        self.prior = prior
        self.set_test_mode(test_mode, prior)

    # -- selection ---------------------------------------------------------------------------------
    def check_domain(self, domain: str, arg: str = 'domain') -> str:
        """Returns ``domain`` if this layer has it; otherwise ValueError naming ``arg``, the value
        and the domains."""
        if domain not in self.domains:
            raise ArgumentError(
                f'{arg}: unknown domain {domain!r}; this AdaBN layer has domains {self.domains}')
        return domain

    def set_eval_domain(self, domain: str) -> None:
        """Selects the domain whose statistics normalise in eval (and receive a recalibration)."""
        self.eval_domain = self.check_domain(domain, 'eval_domain')

    def set_test_mode(self, test_mode: str, prior: Optional[float] = None) -> None:
        """Sets the eval-mode statistics: ``'running'``, ``'batch'`` or ``'blend'`` (with ``prior``
        N)."""
        if test_mode not in TEST_MODES:
            raise ArgumentError(f'test_mode must be one of {TEST_MODES}, got {test_mode!r}')
        if prior is not None:
            if isinstance(prior, bool) or not isinstance(prior, (int, float)) or prior < 0:
                raise ArgumentError(
                    f'AdaBN prior must be a number >= 0 (pseudo-samples), got {prior!r}')
            self.prior = float(prior)
        self.test_mode = test_mode

    def domain_bn(self, domain: str) -> nn.Module:
        """The BN child holding ``domain``'s statistics."""
        return self._modules[self.check_domain(domain, 'domain')]

    @property
    def weight(self) -> Optional[torch.Tensor]:
        """Shared γ (C,), or None without affine."""
        return self._modules[self.domains[0]].weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        """Shared β (C,), or None without affine."""
        return self._modules[self.domains[0]].bias

    def recalibration_buffers(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """AdaBN recalibration target (docs/design.md): ``eval_domain``'s running mean and
        variance."""
        bn = self._modules[self.eval_domain]
        return bn.running_mean, bn.running_var

    # -- forward -----------------------------------------------------------------------------------
    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        """The shared affine on a domain BN's output, in the output's dtype (as torch BN under
        autocast: a bf16 map stays bf16)."""
        if self.weight is None:
            return y
        shape = (1, -1) + (1, ) * (y.dim() - 2)
        return (y * self.weight.view(shape) + self.bias.view(shape)).to(y.dtype)

    def _normalise(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """Normalises ``x`` with ``domain``'s BN (its own train/eval mode) and the shared affine."""
        bn = self._modules[domain]
        batch_stats = bn.training or not self.track_running_stats or self.test_mode == 'batch'
        if batch_stats:
            split = self.training and self.domain_split is not None
            check_batch_statistics(
                self,
                x,
                part=f'the {domain!r} domain part' if split else None,
                bn=bn,
                fix=None if bn.training else _BATCH_MODE_FIX)
        if bn.training or self.test_mode == 'running' or not self.track_running_stats:
            y = bn(x)  # the child's forward: EMA update in training, SyncBN after conversion
            return y if domain == self.domains[0] else self._affine(y)
        prior = self.prior if self.test_mode == 'blend' else 0.0
        return normalize_with_test_statistics(x, self.weight, self.bias, self.eps, bn.running_mean,
                                              bn.running_var, prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f'AdaBN({self.num_features}) expects an input of shape '
                             f'(N, {self.num_features}, *), got {tuple(x.shape)}')
        if not self.training:
            return self._normalise(x, self.eval_domain)
        split = self.domain_split
        if split is None:
            return self._normalise(x, self.train_domain)
        check_domain_split(split, x.shape[0], self)
        parts = [
            self._normalise(part, domain)
            for part, domain in zip(torch.split(x, list(split)), self.split_domains)
            if part.shape[0] > 0
        ]
        if not parts:  # an empty batch: the first part's BN returns an empty output, as BN does
            return self._normalise(x, self.split_domains[0])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    # -- checkpoints -------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A plain BN state dict: the affine goes to the first domain, the statistics to every domain
        # (explicit per-domain keys win).
        for key in ('weight', 'bias') + _STATE_KEYS:
            if prefix + key not in state_dict:
                continue
            value = state_dict.pop(prefix + key)
            targets = self.domains[:1] if key in ('weight', 'bias') else self.domains
            for domain in targets:
                state_dict.setdefault(f'{prefix}{domain}.{key}', value)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        bn = self._modules[self.domains[0]]
        return (
            f'{self.num_features}, eps={self.eps}, momentum={bn.momentum}, affine={self.affine}, '
            f'track_running_stats={self.track_running_stats}, domains={self.domains}, '
            f'eval_domain={self.eval_domain!r}, train_domain={self.train_domain!r}, '
            f'split_domains={self.split_domains}, test_mode={self.test_mode!r}, prior={self.prior}')


def set_adabn_domain(model: nn.Module,
                     domain: Optional[str] = None,
                     test_mode: Optional[str] = None,
                     prior: Optional[float] = None) -> int:
    """Selects ``domain`` and/or the test mode in every :class:`AdaBN` layer of ``model``.

    Args:
        model (nn.Module): Any module (wrappers included).
        domain (str, optional): A domain every AdaBN layer has; None keeps each layer's
            ``eval_domain``.
        test_mode (str, optional): ``'running'``, ``'batch'`` or ``'blend'``; None keeps each
            layer's.
        prior (float, optional): ``N`` of ``'blend'``; None keeps each layer's.

    Returns:
        int: Number of AdaBN layers in ``model``.

    Raises:
        ValueError: ``domain`` unknown to a layer, or a bad ``test_mode`` / ``prior`` (checked for
        all layers before any is changed).
    """
    layers = [m for m in model.modules() if isinstance(m, AdaBN)]
    if test_mode is not None and test_mode not in TEST_MODES:
        raise ArgumentError(f'test_mode must be one of {TEST_MODES}, got {test_mode!r}')
    for layer in layers:
        if domain is not None:
            layer.check_domain(domain, 'domain')
    for layer in layers:
        if domain is not None:
            layer.set_eval_domain(domain)
        if test_mode is not None or prior is not None:
            layer.set_test_mode(test_mode or layer.test_mode, prior)
    return len(layers)


def adabn_selection(model: nn.Module) -> List[Tuple[AdaBN, str, str, float]]:
    """A snapshot of every AdaBN layer's selection ``(layer, eval_domain, test_mode, prior)``, for
    :func:`restore_adabn_selection`."""
    return [(m, m.eval_domain, m.test_mode, m.prior) for m in model.modules()
            if isinstance(m, AdaBN)]


def restore_adabn_selection(snapshot: List[Tuple[AdaBN, str, str, float]]) -> None:
    """Restores the selections recorded by :func:`adabn_selection`."""
    for layer, domain, test_mode, prior in snapshot:
        layer.set_eval_domain(domain)
        layer.set_test_mode(test_mode, prior)
