# Embedded demo, PBN: patch-aware BN in every backbone norm layer (released algorithm, the layer's
# defaults).
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
model = dict(backbone=dict(norm_cfg=dict(type='PBN', requires_grad=True)))
