"""Toolbox-independent part of the source+target training wrappers.

A UDA model is the toolbox's own model class with :class:`DomainAdaptiveMixin` in front of it
(``class UDAEncoderDecoder(DomainAdaptiveMixin, EncoderDecoder)``), so configs only change
``model.type`` and checkpoints keep the toolbox's keys. One training step:

1. :class:`DomainPairPreprocessor` runs the model's own data preprocessor on the concatenated
   ``[source | target]`` list (one normalised, padded batch) and returns the source and target data
   samples apart;
2. inside ``domain_split(model, (num_source, num_target))`` -- every domain-aware layer (RN, AdaBN)
   sees the split -- the backbone and neck run once on the whole batch, and so do the *joint heads*
   (:meth:`DomainAdaptiveMixin.joint_head_losses`): heads whose output rows are images (mmseg decode
   and auxiliary heads, mmdet dense heads) **and** that hold a domain-aware norm layer
   (:func:`holds_domain_aware_norm`: RN, split AdaBN), which normalises each domain part with its
   own statistics. Their losses read only the source rows and source labels;
3. every other head runs the toolbox's own ``loss`` on the source features only: heads with plain BN
   (a BN on the joint batch would normalise [source | target] mixtures, statistics the deployed
   model never sees) and heads whose rows are not images (mmdet RPN + RoI heads, point heads). Heads
   of the second kind must not hold a domain-aware layer: the model refuses to build otherwise
   (:meth:`DomainAdaptiveMixin.source_only_heads`);
4. :meth:`DomainAdaptiveMixin.uda_loss` -- the hook point for UDA losses -- receives the source and
   target features.

Target labels, if any, are never read. Validation and testing use the target dataset through the
normal loops (``predict`` mode is the toolbox's own).
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..norms.conventions import apply_norm_eval, is_norm
from ..norms.domain import DomainAwareMixin, domain_split
from ..norms.layer_names import name_layers

__all__ = ['DomainPairPreprocessor', 'DomainAdaptiveMixin', 'slice_rows', 'holds_domain_aware_norm']

Features = Union[torch.Tensor, Sequence[torch.Tensor]]

# Children of a toolbox model that are not heads: they run on the joint batch (or hold no layers).
NON_HEAD_CHILDREN = ('backbone', 'neck', 'data_preprocessor')


class DomainPairPreprocessor(nn.Module):
    """Applies a toolbox data preprocessor to ``dict(source=..., target=...)`` batches.

    Any other batch (validation / test) goes to the wrapped preprocessor unchanged.

    Args:
        preprocessor (nn.Module): The model's ``SegDataPreProcessor`` / ``DetDataPreProcessor``.
    """

    def __init__(self, preprocessor: nn.Module):
        super().__init__()
        self.preprocessor = preprocessor

    @staticmethod
    def _concat(a, b):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return torch.cat([a, b])
        return list(a) + list(b)

    def forward(self, data: dict, training: bool = False) -> dict:
        """Returns ``dict(inputs, data_samples, target_data_samples)`` for a paired batch.

        ``inputs`` is (N_s + N_t, 3, H, W); ``data_samples`` the N_s source samples,
        ``target_data_samples`` the N_t target samples (their metainfo, e.g. ``batch_input_shape``,
        set by the wrapped preprocessor).
        """
        if not (isinstance(data, dict) and 'source' in data):
            return self.preprocessor(data, training)
        if data.get('target') is None:
            raise ValueError(
                'a [source | target] batch needs a "target" part; build the train dataset with '
                'DomainPairDataset(source=..., target=...)')
        source, target = data['source'], data['target']
        num_source = len(source['inputs'])
        merged = dict(
            inputs=self._concat(source['inputs'], target['inputs']),
            data_samples=self._concat(source['data_samples'], target['data_samples']))
        out = self.preprocessor(merged, training)
        samples = out['data_samples']
        return dict(
            inputs=out['inputs'],
            data_samples=samples[:num_source],
            target_data_samples=samples[num_source:])


def slice_rows(out, part: slice, batch_size: int):
    """``out`` with every tensor whose first dimension is the batch (``batch_size``) cut to
    ``part``.

    Walks tensors, lists and tuples (head outputs: a logits tensor, per-level lists, tuples of
    lists); anything else is returned unchanged.
    """
    if isinstance(out, torch.Tensor):
        return out[part] if out.dim() > 0 and out.shape[0] == batch_size else out
    if isinstance(out, (list, tuple)):
        return type(out)(slice_rows(o, part, batch_size) for o in out)
    return out


def holds_domain_aware_norm(module: nn.Module) -> bool:
    """True if ``module`` holds a norm layer that normalises each declared domain part on its own
    (RN, the AdaBN layer: :class:`~mmnorm.models.norms.domain.DomainAwareMixin` norms).

    The UDA wrappers run a head on the joint [source | target] batch only then; a head with plain BN
    (or no norm) runs on the source part, so its BN never normalises a mixture of the two domains.
    """
    return any(isinstance(m, DomainAwareMixin) and is_norm(m) for m in module.modules())


def _slice_features(feats: Features, part: slice) -> Features:
    if isinstance(feats, torch.Tensor):
        return feats[part]
    return type(feats)(f[part] for f in feats)


class DomainAdaptiveMixin:
    """Source+target training on top of a toolbox model (mmseg segmentors, mmdet detectors).

    Requirements on the toolbox class: ``forward(inputs, data_samples, mode)``,
    ``extract_feat(inputs)`` (backbone + neck) and a ``loss(inputs, data_samples)`` that gets its
    features from ``self.extract_feat``.

    Subclasses choose which heads run on the joint batch by overriding :meth:`joint_head_losses` and
    :meth:`source_only_heads` (the defaults: every head source-only, through the toolbox's own
    ``loss``).

    Hook point for UDA losses: override :meth:`uda_loss` in a subclass (and register it), e.g.::

        @MODELS.register_module()
        class EntropyUDAEncoderDecoder(UDAEncoderDecoder):
            def uda_loss(self, source_feats, target_feats, source_data_samples,
                         target_data_samples):
                logits = self.decode_head(target_feats)
                p = logits.softmax(1)
                return dict(loss_target_entropy=-(p * p.clamp_min(1e-8).log()).sum(1).mean())

    The returned losses are added to the supervised source losses (keys must start with ``loss`` to
    be back-propagated and must not clash with them). ``uda_loss`` runs outside the split: a head
    with RN layers needs ``with mmnorm.domain_split(self, (0, n_t))`` and
    ``allow_single_domain=True`` there.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_preprocessor = DomainPairPreprocessor(self.data_preprocessor)
        self._source_feats: Optional[Features] = None
        self.check_source_only_heads()
        name_layers(self)  # error messages of mmnorm layers name their module path

    def train(self, mode: bool = True):
        """``nn.Module.train`` (the toolbox backbones apply ``norm_eval`` / ``frozen_stages`` to
        their torch BNs), then ``norm_eval`` for the mmnorm layers that hold their own statistics
        (RN): :func:`~mmnorm.models.norms.conventions.apply_norm_eval`."""
        super().train(mode)
        if mode:
            apply_norm_eval(self)
        return self

    # -- which heads see what
    # ----------------------------------------------------------------------------------
    def source_only_heads(self) -> Dict[str, nn.Module]:
        """Heads that run on the source rows only, by attribute name. Default: every child except
        backbone, neck and data preprocessor."""
        return {
            name: child
            for name, child in self.named_children() if name not in NON_HEAD_CHILDREN
        }

    def check_source_only_heads(self) -> None:
        """Raises ValueError if a source-only head holds a domain-aware layer (RN, AdaBN).

        Such a layer never sees target rows (and no split), so its target statistics could not be
        trained.
        """
        for head_name, head in self.source_only_heads().items():
            layers = [
                f'{head_name}.{name}' for name, m in head.named_modules()
                if isinstance(m, DomainAwareMixin)
            ]
            if layers:
                kinds = sorted(
                    {type(m).__name__
                     for m in head.modules() if isinstance(m, DomainAwareMixin)})
                raise ValueError(
                    f'{type(self).__name__}: {head_name} ({type(head).__name__}) runs on the '
                    f'source part of the batch only, but holds {"/".join(kinds)} layers that need '
                    f'the [source | target] split: {", ".join(layers[:3])}'
                    f'{" ..." if len(layers) > 3 else ""}. Use BN or GN there (e.g. '
                    f'norm_cfg=dict(type="BN") in model.{head_name}) and keep RN / AdaBN in the '
                    'backbone, neck and the heads that run on whole images (mmseg decode / '
                    'auxiliary heads, dense heads of single-stage detectors such as UDARetinaNet, '
                    'UDAFCOS)')

    def joint_head_losses(self, feats: Features, data_samples: List,
                          num_source: int) -> Optional[Dict]:
        """Supervised losses from heads run on the joint features, or None to use the toolbox's
        ``loss`` on the source features instead (the default).

        Called inside the domain split. Implementations forward the heads on ``feats`` (N_s + N_t
        rows) and compute the losses from the first ``num_source`` rows of their outputs and
        ``data_samples``.
        """
        return None

    # -- forward
    # ----------------------------------------------------------------------------------------------
    def forward(self, inputs, data_samples=None, mode: str = 'tensor', target_data_samples=None):
        if target_data_samples is not None:
            if mode != 'loss':
                raise ValueError(
                    f'{type(self).__name__}: a [source | target] batch is for mode="loss", '
                    f'got mode={mode!r}')
            return self.loss_domain_adaptive(inputs, data_samples, target_data_samples)
        if mode == 'loss':
            raise ValueError(
                f'{type(self).__name__} trains on [source | target] batches, but the training '
                'batch has no target part; wrap the train dataset in DomainPairDataset(source=..., '
                'target=...)')
        return super().forward(inputs, data_samples, mode)

    def loss_domain_adaptive(self, inputs: torch.Tensor, data_samples: List,
                             target_data_samples: List) -> Dict[str, torch.Tensor]:
        """Supervised loss on the source part plus :meth:`uda_loss`.

        Args:
            inputs (Tensor): (N_s + N_t, 3, H, W), source samples first.
            data_samples (list): The N_s source data samples (with labels).
            target_data_samples (list): The N_t target data samples (labels ignored).
        """
        split = (len(data_samples), len(target_data_samples))
        if split[0] == 0 or split[1] == 0:
            raise ValueError(
                f'{type(self).__name__}: every training batch needs source and target samples, got '
                f'{split[0]} source and {split[1]} target')
        if inputs.shape[0] != sum(split):
            raise ValueError(f'{type(self).__name__}: the batch holds {inputs.shape[0]} images but '
                             f'{split[0]} source + {split[1]} target data samples')
        with domain_split(self, split):
            feats = self.extract_feat(inputs)
            losses = self.joint_head_losses(feats, data_samples, split[0])
        source_feats = _slice_features(feats, slice(0, split[0]))
        target_feats = _slice_features(feats, slice(split[0], None))
        if losses is None:
            self._source_feats = source_feats  # the toolbox loss below asks extract_feat for them
            try:
                losses = self.loss(inputs[:split[0]], data_samples)
            finally:
                self._source_feats = None
        extra = self.uda_loss(source_feats, target_feats, data_samples, target_data_samples)
        clash = sorted(set(extra) & set(losses))
        if clash:
            raise ValueError(f'{type(self).__name__}.uda_loss returned keys {clash} that the '
                             'supervised loss uses')
        losses.update(extra)
        return losses

    def extract_feat(self, inputs: torch.Tensor) -> Features:
        # inside loss_domain_adaptive: the source part of the joint forward
        if self._source_feats is not None:
            return self._source_feats
        return super().extract_feat(inputs)

    def uda_loss(self, source_feats: Features, target_feats: Features, source_data_samples: List,
                 target_data_samples: List) -> Dict[str, torch.Tensor]:
        """Hook point for UDA losses on target features; returns no loss here.

        Args:
            source_feats: Backbone(+neck) features of the source part (as ``extract_feat`` returns
                them, N_s samples), computed in the joint [source | target] forward.
            target_feats: The same for the target part (N_t samples).
            source_data_samples (list): Source data samples (with labels).
            target_data_samples (list): Target data samples (metainfo; labels must not be used).

        Returns:
            dict[str, Tensor]: Extra losses, added to the supervised ones.
        """
        return {}
