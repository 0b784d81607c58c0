# DeepLabV3+ R50-D8 with IBN-Net-a (IBN in the first norm of every block of stages 1-3), GTA5 ->
# Cityscapes. Protocol as the BN baseline it inherits, except the backbone: IBNResNet (7x7 stem, as
# the official IBN-Net) initialised from the official ImageNet resnet50_ibn_a weights converted with
#   python tools/model_converters/ibnnet2mmseg.py resnet50_ibn_a-*.pth
#   checkpoints/resnet50_ibn_a_mmnorm.pth
# (the baseline's ResNetV1c has a 3-conv stem; see docs/ibn.md for the matching BN comparison).
_base_ = '../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    pretrained='checkpoints/resnet50_ibn_a_mmnorm.pth',
    backbone=dict(type='IBNResNet', ibn=dict(type='a')))
