"""Source+target (domain-adaptive) training wrappers for mmseg segmentors and mmdet detectors (each
imported only when its toolbox is installed)."""
from ...toolboxes import toolbox_installed
from .base import DomainAdaptiveMixin, DomainPairPreprocessor, holds_domain_aware_norm, slice_rows

__all__ = ['DomainAdaptiveMixin', 'DomainPairPreprocessor', 'holds_domain_aware_norm', 'slice_rows']

if toolbox_installed('mmseg'):
    from .segmentor import UDACascadeEncoderDecoder, UDAEncoderDecoder, head_runs_jointly
    __all__ += ['UDAEncoderDecoder', 'UDACascadeEncoderDecoder', 'head_runs_jointly']

if toolbox_installed('mmdet'):
    from .detector import (UDAATSS, UDADETR, UDAFCOS, UDAGFL, UDATOOD, UDAYOLOX, UDACascadeRCNN,
                           UDADeformableDETR, UDAFasterRCNN, UDAMaskRCNN, UDARetinaNet, UDARTMDet,
                           UDASingleStageDetector, dense_head_runs_jointly)
    __all__ += [
        'UDASingleStageDetector', 'UDARetinaNet', 'UDAFCOS', 'UDAATSS', 'UDAGFL', 'UDATOOD',
        'UDAYOLOX', 'UDARTMDet', 'UDAFasterRCNN', 'UDAMaskRCNN', 'UDACascadeRCNN', 'UDADETR',
        'UDADeformableDETR', 'dense_head_runs_jointly'
    ]
