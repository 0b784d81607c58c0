# DeepLabV3+ R50-D8 with IBN-Net-a (IBN in the first norm of every block of stages 1-3) and DSU
# after the stem and every stage. Protocol as the IBN-a config it inherits (GTA5 -> Cityscapes val,
# 40k, 4x2; 7x7-stem ResNet initialised from the official resnet50_ibn_a weights converted with
# tools/model_converters/ibnnet2mmseg.py).
_base_ = '../ibn/deeplabv3plus_r50-d8-ibn-a_4xb2-40k_gta5-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='PerturbResNet',
        ibn=dict(type='a'),
        perturb=dict(type='DSU', p=0.5, factor=1.0),
        after_stages=('conv1', 'stem', 0, 1, 2, 3)))
