"""Loads scripts of tools/ as modules (tools/ is not a package)."""
import importlib.util
import os.path as osp

TOOLS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')


def load_tool(name: str):
    """The script ``tools/<name>.py`` as a module (``name`` may have folders, e.g.
    ``'dataset_converters/gta5'``)."""
    spec = importlib.util.spec_from_file_location('mmnorm_tools_' + name.replace('/', '_'),
                                                  osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_demo = load_tool('demo')
METHODS = _demo.METHODS
