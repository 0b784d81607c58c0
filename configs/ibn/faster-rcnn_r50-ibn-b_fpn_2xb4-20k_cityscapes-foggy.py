# Faster R-CNN R50-FPN with IBN-Net-b (IN at the stem and after the residual sum of the last block
# of stages 1-2), Cityscapes -> Foggy Cityscapes. Protocol as the BN baseline it inherits; backbone
# initialised from the official resnet50_ibn_b weights converted with
# tools/model_converters/ibnnet2mmseg.py (see docs/ibn.md).
_base_ = '../baseline/faster-rcnn_r50_fpn_2xb4-20k_cityscapes-foggy.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='IBNResNet',
        ibn=dict(type='b'),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50_ibn_b_mmnorm.pth')))
