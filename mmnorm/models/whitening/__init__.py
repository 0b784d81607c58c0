"""Instance whitening losses (IW, IRW, ISW of RobustNet; SAW of SAN-SAW), ISW's selection and its
statistics pass
(the backbones are in ``models/backbones/whitening_resnet.py``, the segmentor that adds the loss in
``models/segmentors/whitening.py``)."""
from .instance_whitening import (IRW, ISW, IW, WHITENING_TYPES, InstanceWhitening, build_whitening,
                                 instance_covariance, instance_standardize, pair_variance,
                                 relaxed_margin, select_sensitive, strict_upper_mask,
                                 whitening_loss)
from .isw_statistics import collect_isw_variances, isw_backbone, run_isw_selection
from .kmeans1d import kmeans_1d
from .semantic_whitening import SAW, saw_classifier_loss, saw_groups, saw_loss

__all__ = [
    'WHITENING_TYPES', 'InstanceWhitening', 'IW', 'IRW', 'ISW', 'build_whitening',
    'instance_covariance', 'instance_standardize', 'pair_variance', 'relaxed_margin',
    'select_sensitive', 'strict_upper_mask', 'whitening_loss', 'kmeans_1d', 'collect_isw_variances',
    'run_isw_selection', 'isw_backbone', 'SAW', 'saw_groups', 'saw_loss', 'saw_classifier_loss'
]
