"""Source+target (domain-adaptive) training wrappers for mmseg segmentors and mmdet detectors."""
from .base import DomainAdaptiveMixin, DomainPairPreprocessor, slice_rows
from .detector import (UDAATSS, UDAFCOS, UDAGFL, UDATOOD, UDAYOLOX, UDACascadeRCNN, UDAFasterRCNN, UDAMaskRCNN,
                       UDARetinaNet, UDARTMDet, UDASingleStageDetector, dense_head_runs_jointly)
from .segmentor import UDACascadeEncoderDecoder, UDAEncoderDecoder, head_runs_jointly

__all__ = ['DomainAdaptiveMixin', 'DomainPairPreprocessor', 'slice_rows', 'UDAEncoderDecoder',
           'UDACascadeEncoderDecoder', 'head_runs_jointly', 'UDASingleStageDetector', 'UDARetinaNet', 'UDAFCOS',
           'UDAATSS', 'UDAGFL', 'UDATOOD', 'UDAYOLOX', 'UDARTMDet', 'UDAFasterRCNN', 'UDAMaskRCNN', 'UDACascadeRCNN',
           'dense_head_runs_jointly']
