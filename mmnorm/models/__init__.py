from . import backbones, norms, perturb, segmentors, uda, whitening  # noqa: F401
from .norms import *  # noqa: F401,F403

__all__ = norms.__all__
