# Embedded demo, MixStyle: MixStyle after stages 1-3 (paper placement and defaults); BN norm layers.
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
model = dict(
    backbone=dict(
        type='PerturbResNetV1c',
        perturb=dict(type='MixStyle', p=0.5, alpha=0.1, mix='random'),
        after_stages=(0, 1, 2)))
