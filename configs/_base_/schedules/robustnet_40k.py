# RobustNet's schedule (shachoi/RobustNet train.py / optimizer.py, r50os16 scripts): SGD lr 0.01,
# momentum 0.9, weight decay 5e-4 on every parameter (norms included), poly decay
# lr * (1 - iter / 40000) ** 0.9 down to 0, 40k iterations, batch 16 (4 GPUs x 4). Validation
# and checkpoints every 4k. mmseg scope.
_base_ = 'mmseg::_base_/schedules/schedule_40k.py'

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005),
    clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=40000, by_epoch=False)
]
