# mmdet runtime (default_scope='mmdet', hooks, visualizer) with mmnorm loaded; iteration-based
# logging and checkpoints to match schedules/schedule_det_20k.py.
_base_ = 'mmdet::_base_/default_runtime.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
