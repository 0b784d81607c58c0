"""Source+target (domain-adaptive) training wrappers for mmseg segmentors and mmdet detectors."""
from .base import DomainAdaptiveMixin, DomainPairPreprocessor
from .detector import UDAFasterRCNN
from .segmentor import UDAEncoderDecoder

__all__ = ['DomainAdaptiveMixin', 'DomainPairPreprocessor', 'UDAEncoderDecoder', 'UDAFasterRCNN']
