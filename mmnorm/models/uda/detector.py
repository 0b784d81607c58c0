"""Source+target training for mmdet detectors.

* Single-stage detectors (``UDARetinaNet``, ``UDAFCOS``, ``UDAATSS``, ``UDAGFL``, ``UDATOOD``,
  ``UDAYOLOX``, ``UDARTMDet``, or ``UDASingleStageDetector`` for any other ``SingleStageDetector``
  config): a dense head with RN / a split AdaBN runs on the joint [source | target] features inside
  the domain split; its loss reads the source rows only. A dense head with plain BN / GN (on the
  joint batch its BN would normalise mixtures of the two domains), or whose ``loss`` is not mmdet's
  plain "forward, then ``loss_by_feat``", runs the toolbox's own loss on the source features
  instead.
* Two-stage detectors (``UDAFasterRCNN``, ``UDAMaskRCNN``, ``UDACascadeRCNN``): backbone and neck on
  the joint batch; RPN and RoI heads on the source part only (RoI rows are regions, not images), so
  they must not hold domain-aware layers -- the model refuses to build with a message naming the
  head.
* DETR-style detectors (``UDADETR``, ``UDADeformableDETR``): backbone and neck on the joint batch;
  transformer and head (rows are queries) on the source part only, with the same build-time check.

Other mmdet detectors whose ``loss`` starts with ``self.extract_feat`` get the two-stage behaviour
with ``class UDAX(DomainAdaptiveMixin, X)``.
"""
from typing import Dict, List, Optional

import torch.nn as nn
from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from mmdet.models.detectors import (ATSS, DETR, FCOS, GFL, TOOD, YOLOX, CascadeRCNN, DeformableDETR,
                                    FasterRCNN, MaskRCNN, RetinaNet, RTMDet, SingleStageDetector)
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS

from .base import DomainAdaptiveMixin, holds_domain_aware_norm, slice_rows

__all__ = [
    'dense_head_runs_jointly', 'UDASingleStageDetector', 'UDARetinaNet', 'UDAFCOS', 'UDAATSS',
    'UDAGFL', 'UDATOOD', 'UDAYOLOX', 'UDARTMDet', 'UDAFasterRCNN', 'UDAMaskRCNN', 'UDACascadeRCNN',
    'UDADETR', 'UDADeformableDETR'
]


def dense_head_runs_jointly(head: nn.Module) -> bool:
    """True if the UDA wrappers run ``head`` on the joint [source | target] features: its ``loss``
    is mmdet's ``BaseDenseHead.loss`` (forward on the features, then ``loss_by_feat``) and it holds
    a domain-aware norm (RN, split AdaBN:
    :func:`~mmnorm.models.uda.base.holds_domain_aware_norm`)."""
    plain_loss = isinstance(head, BaseDenseHead) and type(head).loss is BaseDenseHead.loss
    return plain_loss and holds_domain_aware_norm(head)


class _JointDenseHeadMixin(DomainAdaptiveMixin):
    """The ``bbox_head`` of a single-stage detector on the joint batch when it holds RN / split
    AdaBN."""

    def source_only_heads(self) -> Dict[str, nn.Module]:
        heads = super().source_only_heads()
        if dense_head_runs_jointly(self.bbox_head):
            heads.pop('bbox_head')
        return heads

    def joint_head_losses(self, feats, data_samples: List, num_source: int) -> Optional[Dict]:
        head = self.bbox_head
        if not dense_head_runs_jointly(head):
            return None  # the toolbox's loss on the source features
        outs = slice_rows(head(feats), slice(0, num_source), feats[0].shape[0])
        gt_instances, gt_instances_ignore, img_metas = unpack_gt_instances(data_samples)
        return head.loss_by_feat(*outs, gt_instances, img_metas, gt_instances_ignore)


@MODELS.register_module()
class UDASingleStageDetector(_JointDenseHeadMixin, SingleStageDetector):
    """Any mmdet ``SingleStageDetector`` config trained on [source | target] batches (an RN / AdaBN
    dense head in the split)."""


@MODELS.register_module()
class UDARetinaNet(_JointDenseHeadMixin, RetinaNet):
    """mmdet ``RetinaNet`` trained on [source | target] batches (an RN / AdaBN dense head in the
    split)."""


@MODELS.register_module()
class UDAFCOS(_JointDenseHeadMixin, FCOS):
    """mmdet ``FCOS`` trained on [source | target] batches (an RN / AdaBN dense head in the
    split)."""


@MODELS.register_module()
class UDAATSS(_JointDenseHeadMixin, ATSS):
    """mmdet ``ATSS`` trained on [source | target] batches (an RN / AdaBN dense head in the
    split)."""


@MODELS.register_module()
class UDAGFL(_JointDenseHeadMixin, GFL):
    """mmdet ``GFL`` trained on [source | target] batches (an RN / AdaBN dense head in the
    split)."""


@MODELS.register_module()
class UDATOOD(_JointDenseHeadMixin, TOOD):
    """mmdet ``TOOD`` trained on [source | target] batches (an RN / AdaBN dense head in the
    split)."""


@MODELS.register_module()
class UDAYOLOX(_JointDenseHeadMixin, YOLOX):
    """mmdet ``YOLOX`` trained on [source | target] batches (an RN / AdaBN dense head in the
    split)."""


@MODELS.register_module()
class UDARTMDet(_JointDenseHeadMixin, RTMDet):
    """mmdet ``RTMDet`` trained on [source | target] batches (an RN / AdaBN dense head in the
    split)."""


@MODELS.register_module()
class UDAFasterRCNN(DomainAdaptiveMixin, FasterRCNN):
    """mmdet ``FasterRCNN`` trained on [source | target] batches: backbone + FPN on the joint batch,
    RPN and RoI heads on the source part (same arguments and checkpoint keys as ``FasterRCNN``)."""


@MODELS.register_module()
class UDAMaskRCNN(DomainAdaptiveMixin, MaskRCNN):
    """mmdet ``MaskRCNN`` trained on [source | target] batches (RPN and RoI heads on the source
    part)."""


@MODELS.register_module()
class UDACascadeRCNN(DomainAdaptiveMixin, CascadeRCNN):
    """mmdet ``CascadeRCNN`` trained on [source | target] batches (RPN and RoI heads on the source
    part)."""


@MODELS.register_module()
class UDADETR(DomainAdaptiveMixin, DETR):
    """mmdet ``DETR`` trained on [source | target] batches (transformer and head on the source
    part)."""


@MODELS.register_module()
class UDADeformableDETR(DomainAdaptiveMixin, DeformableDETR):
    """mmdet ``DeformableDETR`` trained on [source | target] batches (transformer and head on the
    source part)."""
