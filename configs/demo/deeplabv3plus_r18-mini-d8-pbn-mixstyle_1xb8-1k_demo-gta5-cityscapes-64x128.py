# Embedded demo, PBN + MixStyle: PBN in every backbone norm layer and MixStyle after stages 1-3
# (defaults).
_base_ = ['./deeplabv3plus_r18-mini-d8-pbn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
model = dict(
    backbone=dict(
        type='PerturbResNetV1c',
        perturb=dict(type='MixStyle', p=0.5, alpha=0.1, mix='random'),
        after_stages=(0, 1, 2)))
