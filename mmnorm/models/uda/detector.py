"""Source+target training for mmdet: ``UDAFasterRCNN``."""
from mmdet.models.detectors import FasterRCNN
from mmdet.registry import MODELS

from .base import DomainAdaptiveMixin

__all__ = ['UDAFasterRCNN']


@MODELS.register_module()
class UDAFasterRCNN(DomainAdaptiveMixin, FasterRCNN):
    """mmdet ``FasterRCNN`` trained on [source | target] batches (see :mod:`mmnorm.models.uda.base`).

    Same arguments and checkpoint keys as ``FasterRCNN``; the RPN and RoI heads see only the source features and
    source boxes. Other mmdet detectors whose ``loss`` starts with ``self.extract_feat`` get the same behaviour with
    ``class UDAX(DomainAdaptiveMixin, X)``.
    """
