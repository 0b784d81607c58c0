"""Opt-in for configs: importing this module calls :func:`mmnorm.runtime.setup`.

For runs started by an entry point that is not mmnorm's (a toolbox's own ``tools/train.py``, mim),
list it in the config after ``mmnorm``::

    custom_imports = dict(imports=['mmnorm', 'mmnorm.runtime.enable'], allow_failed_imports=False)

``Config.fromfile`` imports ``custom_imports`` while it reads the config, so the fixes are in place
before the Runner is built and before it loads or resumes a checkpoint.
"""
from . import setup

__all__ = []

setup()
