# 40k iterations, SGD lr 0.01 (batch 8), poly decay; validation and checkpoints every 4k. mmseg
# scope.
_base_ = 'mmseg::_base_/schedules/schedule_40k.py'
