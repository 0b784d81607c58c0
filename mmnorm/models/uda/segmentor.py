"""Source+target training for mmseg: ``UDAEncoderDecoder``."""
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

from .base import DomainAdaptiveMixin

__all__ = ['UDAEncoderDecoder']


@MODELS.register_module()
class UDAEncoderDecoder(DomainAdaptiveMixin, EncoderDecoder):
    """mmseg ``EncoderDecoder`` trained on [source | target] batches (see :mod:`mmnorm.models.uda.base`).

    Same arguments and checkpoint keys as ``EncoderDecoder``; a BN baseline config becomes a UDA config with
    ``model=dict(type='UDAEncoderDecoder')`` and a ``DomainPairDataset`` train set. The decode and auxiliary heads
    see only the source features; ``predict`` / ``tensor`` modes are unchanged (test on the target dataset).
    """
