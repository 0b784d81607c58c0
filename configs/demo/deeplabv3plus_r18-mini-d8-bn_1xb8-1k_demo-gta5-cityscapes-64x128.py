# Embedded demo, BN baseline: train on the synthetic GTA5-layout source, test on the shifted
# Cityscapes-layout target.
# Protocol: 800 source frames 64x128, 1 process x batch 8, 1k iterations, no pretraining, seed 0;
# `make demo` reports source-val and target-val mIoU. A norm is a switch of `norm_cfg` (see the
# other demo configs).
_base_ = [
    '../_base_/models/deeplabv3plus_r18-mini-d8.py',
    '../_base_/datasets/demo_synthetic_gta5-cityscapes.py',
    '../_base_/schedules/demo_1k.py',
    '../_base_/demo_runtime.py',
]
