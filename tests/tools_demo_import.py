"""Loads tools/demo.py as a module (tools/ is not a package)."""
import importlib.util
import os.path as osp

_spec = importlib.util.spec_from_file_location(
    'mmnorm_tools_demo', osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools', 'demo.py'))
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)
METHODS = _demo.METHODS
summarise = _demo.summarise
