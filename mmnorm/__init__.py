"""mmnorm: normalization-based domain adaptation / generalization layers for mmsegmentation and mmdetection.

``import mmnorm`` (or ``custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)`` in a config)
registers every mmnorm norm layer and hook in the root mmengine registries and the datasets in the toolbox
registries, and allow-lists what mmengine checkpoints contain for torch's weights-only loading.
"""
from .runtime import allow_mmengine_checkpoints
from .version import __version__

allow_mmengine_checkpoints()

from . import datasets, engine, evaluation, models  # noqa: E402,F401  (registration)
from .models.norms import domain_split  # noqa: E402
from .recalibration import recalibrate_bn  # noqa: E402
from .tta import TestTimeAdapter  # noqa: E402

__all__ = ['__version__', 'domain_split', 'recalibrate_bn', 'TestTimeAdapter']
