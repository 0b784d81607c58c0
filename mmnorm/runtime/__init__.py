from .checkpoint import allow_mmengine_checkpoints, restricted_getattr
from .config import TOOLBOXES, get_toolbox
from .launcher import LAUNCHERS, init_cpu_process_group, setup_launcher, teardown_launcher

__all__ = ['allow_mmengine_checkpoints', 'restricted_getattr', 'TOOLBOXES', 'get_toolbox', 'LAUNCHERS',
           'init_cpu_process_group', 'setup_launcher', 'teardown_launcher']
