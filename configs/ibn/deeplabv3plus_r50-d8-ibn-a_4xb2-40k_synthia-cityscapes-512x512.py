# DeepLabV3+ R50-D8 with IBN-Net-a, SYNTHIA -> Cityscapes. Protocol as the SYNTHIA BN baseline it
# inherits (mIoU over 19/16/13 classes), backbone as in the GTA5 IBN-a config: IBNResNet (7x7 stem)
# initialised from the official resnet50_ibn_a weights converted with
# tools/model_converters/ibnnet2mmseg.py (see docs/ibn.md).
_base_ = '../baseline/deeplabv3plus_r50-d8_4xb2-40k_synthia-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    pretrained='checkpoints/resnet50_ibn_a_mmnorm.pth',
    backbone=dict(type='IBNResNet', ibn=dict(type='a')))
