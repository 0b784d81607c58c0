"""Online test-time adaptation of the norm layers: ``'bn'``, ``'prior'``, ``'tent'``
(docs/tta.md)."""
from ..models.norms.test_time import normalize_with_test_statistics
from .adapter import DEFAULT_OPTIMIZER, METHODS, AdaptationSession, TestTimeAdapter
from .norm_modes import STAT_MODES, affine_parameters, statistics_leaves, statistics_mode
from .objectives import entropy_terms, softmax_entropy, valid_pixel_mask
from .safeguards import CollapseMonitor, entropy_margin

__all__ = [
    'TestTimeAdapter', 'AdaptationSession', 'METHODS', 'DEFAULT_OPTIMIZER', 'STAT_MODES',
    'statistics_mode', 'affine_parameters', 'statistics_leaves', 'normalize_with_test_statistics',
    'entropy_terms', 'softmax_entropy', 'valid_pixel_mask', 'CollapseMonitor', 'entropy_margin'
]
