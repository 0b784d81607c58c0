# Embedded demo, IBN-Net-b: InstanceNorm at the stem and after the residual sum of the last block of
# stages 1-2.
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
model = dict(backbone=dict(type='IBNResNetV1c', ibn=dict(type='b')))
