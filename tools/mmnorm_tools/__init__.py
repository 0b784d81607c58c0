"""Helpers of mmnorm's ``tools/`` scripts (launcher, config checks, converter CLI, benchmark timing,
the compatibility-sweep harness); not part of the mmnorm library.

Installed with mmnorm (``setup.py`` maps it from ``tools/mmnorm_tools``), so every tool imports it
as ``mmnorm_tools`` without touching ``sys.path``.
"""
from mmnorm.runtime import setup as setup_runtime

__all__ = ['setup_runtime']
