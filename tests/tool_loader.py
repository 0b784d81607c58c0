"""Loads scripts of tools/ as modules (tools/ is not a package)."""
import importlib.util
import os.path as osp

TOOLS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f'mmnorm_tools_{name}', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_demo = load_tool('demo')
METHODS = _demo.METHODS
