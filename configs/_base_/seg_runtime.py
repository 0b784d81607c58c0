# mmseg runtime (default_scope='mmseg', hooks, visualizer) with mmnorm loaded.
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
