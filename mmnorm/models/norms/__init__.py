"""Norm layers, one method family per file, registered in the root mmengine ``MODELS`` registry."""
from .adabn import AdaBN, set_adabn_domain
from .domain import DomainAwareMixin, check_domain_split, domain_split, set_domain_split
from .ibn import IBN
from .pbn import PBN
from .rn import RN

__all__ = [
    'AdaBN', 'set_adabn_domain', 'DomainAwareMixin', 'check_domain_split', 'domain_split',
    'set_domain_split', 'IBN', 'PBN', 'RN'
]
