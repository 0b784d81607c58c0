# Embedded demo, DSU: DSU after the stem and every stage (authors' placement and defaults); BN norm
# layers.
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
model = dict(
    backbone=dict(
        type='PerturbResNetV1c',
        perturb=dict(type='DSU', p=0.5, factor=1.0),
        after_stages=('conv1', 'stem', 0, 1, 2, 3)))
