"""Statistics-perturbation domain-generalization layers (MixStyle, EFDMix, DSU), root ``MODELS``
registry."""
from .base import (StatMixing, StatPerturbation, instance_stats, mixing_partners, sample_beta,
                   set_perturbation_active)
from .dsu import DSU, dsu
from .efdmix import EFDMix, efdmix
from .mixstyle import MixStyle, mixstyle

__all__ = [
    'StatPerturbation', 'StatMixing', 'instance_stats', 'mixing_partners', 'sample_beta',
    'set_perturbation_active', 'MixStyle', 'mixstyle', 'EFDMix', 'efdmix', 'DSU', 'dsu'
]
