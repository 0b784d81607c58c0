"""Source+target training for mmseg: ``UDAEncoderDecoder``, ``UDACascadeEncoderDecoder``.

A decode or auxiliary head that holds RN / a split AdaBN runs on the joint [source | target]
features inside the domain split, so those layers work in the head as in the backbone; its losses
read the source rows only. A head with plain BN (or GN, or no norm) runs the toolbox's own ``loss``
on the source features: on the joint batch its BN would normalise mixtures of the two domains. A
head whose ``loss`` is not the plain "forward, then ``loss_by_feat``" of mmseg's base heads (e.g.
PointRend's ``PointHead``, which samples points per image against the labels) runs on the source
features too, and the later stages of a cascade follow the first source-only stage onto the source
part.
"""
from typing import Dict, List

import torch.nn as nn
from mmseg.models.decode_heads.cascade_decode_head import BaseCascadeDecodeHead
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.segmentors import CascadeEncoderDecoder, EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import add_prefix

from .base import DomainAdaptiveMixin, holds_domain_aware_norm, slice_rows

__all__ = ['UDAEncoderDecoder', 'UDACascadeEncoderDecoder', 'head_runs_jointly']


def head_runs_jointly(head: nn.Module) -> bool:
    """True if the UDA wrappers run ``head`` on the joint [source | target] features.

    Both must hold: ``head.loss`` is mmseg's own "forward on the features, then ``loss_by_feat``"
    (so its forward can run on the joint batch and the loss on the source rows of the output), and
    the head holds a domain-aware norm (RN, split AdaBN:
    :func:`~mmnorm.models.uda.base.holds_domain_aware_norm`).
    """
    plain_loss = type(head).loss in (BaseDecodeHead.loss, BaseCascadeDecodeHead.loss)
    return plain_loss and holds_domain_aware_norm(head)


class _JointHeadsMixin(DomainAdaptiveMixin):
    """Decode + auxiliary heads of an mmseg ``EncoderDecoder`` (or cascade) on the joint batch."""

    def _decode_stages(self) -> List[nn.Module]:
        return list(self.decode_head) if isinstance(self.decode_head,
                                                    nn.ModuleList) else [self.decode_head]

    def _aux_heads(self) -> List[nn.Module]:
        if not getattr(self, 'with_auxiliary_head', False):
            return []
        aux = self.auxiliary_head
        return list(aux) if isinstance(aux, nn.ModuleList) else [aux]

    def _first_source_only_stage(self) -> int:
        stages = self._decode_stages()
        return next((i for i, head in enumerate(stages) if not head_runs_jointly(head)),
                    len(stages))

    def source_only_heads(self) -> Dict[str, nn.Module]:
        heads = {}
        stages = self._decode_stages()
        cascade = isinstance(self.decode_head, nn.ModuleList)
        for i in range(self._first_source_only_stage(), len(stages)):
            heads[f'decode_head.{i}' if cascade else 'decode_head'] = stages[i]
        many = isinstance(getattr(self, 'auxiliary_head', None), nn.ModuleList)
        for i, head in enumerate(self._aux_heads()):
            if not head_runs_jointly(head):
                heads[f'auxiliary_head.{i}' if many else 'auxiliary_head'] = head
        return heads

    def joint_head_losses(self, feats, data_samples: List, num_source: int) -> Dict:
        batch = feats[0].shape[0] if isinstance(feats, (list, tuple)) else feats.shape[0]
        source = slice(0, num_source)
        source_feats = slice_rows(feats, source, batch)
        losses = {}
        stages = self._decode_stages()
        cascade = isinstance(self.decode_head, nn.ModuleList)
        first_source_only = self._first_source_only_stage()
        # joint output of the previous stage (source rows only from first_source_only on)
        prev = None
        for i, head in enumerate(stages):
            prefix = f'decode_{i}' if cascade else 'decode'
            args = (feats, ) if i == 0 else (feats, prev)
            if i < first_source_only:
                prev = head.forward(*args)
                loss = head.loss_by_feat(slice_rows(prev, source, batch), data_samples)
            else:
                if i == first_source_only and i > 0:
                    prev = slice_rows(prev, source, batch)
                source_args = (source_feats, ) if i == 0 else (source_feats, prev)
                loss = head.loss(*source_args, data_samples, self.train_cfg)
                if i + 1 < len(stages):
                    prev = head.forward(*source_args)
            losses.update(add_prefix(loss, prefix))
        many = isinstance(getattr(self, 'auxiliary_head', None), nn.ModuleList)
        for i, head in enumerate(self._aux_heads()):
            if head_runs_jointly(head):
                loss = head.loss_by_feat(
                    slice_rows(head.forward(feats), source, batch), data_samples)
            else:
                loss = head.loss(source_feats, data_samples, self.train_cfg)
            losses.update(add_prefix(loss, f'aux_{i}' if many else 'aux'))
        return losses


@MODELS.register_module()
class UDAEncoderDecoder(_JointHeadsMixin, EncoderDecoder):
    """mmseg ``EncoderDecoder`` trained on [source | target] batches (see
    :mod:`mmnorm.models.uda.base`).

    Same arguments and checkpoint keys as ``EncoderDecoder``; a BN baseline config becomes a UDA
    config with ``model=dict(type='UDAEncoderDecoder')`` and a ``DomainPairDataset`` train set.
    Backbone and neck run on the joint batch inside the domain split; decode and auxiliary heads
    with RN / split AdaBN too (losses from the source rows), heads with plain BN on the source
    features only. ``predict`` / ``tensor`` modes are unchanged (test on the target dataset).
    """


@MODELS.register_module()
class UDACascadeEncoderDecoder(_JointHeadsMixin, CascadeEncoderDecoder):
    """mmseg ``CascadeEncoderDecoder`` (OCRNet, PointRend) trained on [source | target] batches.

    Leading stages whose loss is mmseg's plain forward + ``loss_by_feat`` (FCN / OCR heads) and that
    hold RN / split AdaBN run jointly; the first other stage (a BN head, PointRend's point head) and
    every stage after it run on the source part only.
    """
