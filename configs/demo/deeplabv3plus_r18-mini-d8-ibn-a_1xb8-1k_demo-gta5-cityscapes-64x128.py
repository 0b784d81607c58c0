# Embedded demo, IBN-Net-a: IBN (half InstanceNorm, half BN) in the first norm of every block of
# stages 1-3.
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
model = dict(backbone=dict(type='IBNResNetV1c', ibn=dict(type='a')))
