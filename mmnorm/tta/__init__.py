"""Online test-time adaptation of the norm layers: ``'bn'``, ``'prior'``, ``'tent'`` (docs/tta.md)."""
from .adapter import DEFAULT_OPTIMIZER, METHODS, TestTimeAdapter
from .norm_modes import STAT_MODES, TestStatistics, affine_parameters, statistics_leaves, test_batch_norm
from .objectives import entropy_terms, softmax_entropy, valid_pixel_mask
from .safeguards import CollapseMonitor, entropy_margin

__all__ = [
    'TestTimeAdapter', 'METHODS', 'DEFAULT_OPTIMIZER', 'STAT_MODES', 'TestStatistics', 'affine_parameters',
    'statistics_leaves', 'test_batch_norm', 'entropy_terms', 'softmax_entropy', 'valid_pixel_mask', 'CollapseMonitor',
    'entropy_margin'
]
