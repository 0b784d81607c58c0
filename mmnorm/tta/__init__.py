"""Online test-time adaptation: ``'bn'``, ``'prior'``, ``'tent'``, ``'sar'``, ``'eata'``,
``'cotta'`` (docs/tta.md)."""
from ..models.norms.test_time import normalize_with_test_statistics
from .adapter import (DEFAULT_OPTIMIZER, DEFAULT_OPTIMIZERS, METHODS, AdaptationSession,
                      TestTimeAdapter)
from .norm_modes import STAT_MODES, statistics_leaves, statistics_mode
from .objectives import entropy_terms, softmax_entropy, valid_pixel_mask
from .params import affine_parameters, sar_top_blocks, select_parameters
from .safeguards import CollapseMonitor, entropy_margin

__all__ = [
    'TestTimeAdapter', 'AdaptationSession', 'METHODS', 'DEFAULT_OPTIMIZER', 'DEFAULT_OPTIMIZERS',
    'STAT_MODES', 'statistics_mode', 'affine_parameters', 'select_parameters', 'sar_top_blocks',
    'statistics_leaves', 'normalize_with_test_statistics', 'entropy_terms', 'softmax_entropy',
    'valid_pixel_mask', 'CollapseMonitor', 'entropy_margin'
]
