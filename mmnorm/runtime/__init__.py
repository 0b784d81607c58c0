from .atomic_io import AtomicLocalBackend, atomic_write_bytes, use_atomic_local_writes, write_metrics_json
from .checkpoint import CheckpointFileError, allow_mmengine_checkpoints, check_checkpoint_file, restricted_getattr
from .config import TOOLBOXES, available_norms, check_norm_types, get_toolbox
from .launcher import LAUNCHERS, init_cpu_process_group, setup_launcher, teardown_launcher

use_atomic_local_writes()  # registration: mmengine's local file backend writes checkpoints atomically

__all__ = [
    'AtomicLocalBackend', 'atomic_write_bytes', 'use_atomic_local_writes', 'write_metrics_json',
    'allow_mmengine_checkpoints', 'CheckpointFileError', 'check_checkpoint_file', 'restricted_getattr', 'TOOLBOXES',
    'available_norms', 'check_norm_types', 'get_toolbox', 'LAUNCHERS', 'init_cpu_process_group', 'setup_launcher',
    'teardown_launcher'
]
