"""mmnorm: normalization-based domain adaptation / generalization layers for mmsegmentation and
mmdetection.

``import mmnorm`` (or ``custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)`` in a
config) registers every mmnorm norm layer and hook in the root mmengine registries and the datasets
in the toolbox registries; it changes nothing of torch or mmengine. The checkpoint allow-list and
atomic checkpoint writes are applied by :func:`mmnorm.runtime.setup` (mmnorm's tools call it; a
config opts in with ``mmnorm.runtime.enable``).
"""
from . import datasets, engine, evaluation, models  # noqa: F401  (registration)
from .models.norms import domain_split
from .recalibration import recalibrate_bn
from .tta import TestTimeAdapter
from .version import __version__

__all__ = ['__version__', 'domain_split', 'recalibrate_bn', 'TestTimeAdapter']
