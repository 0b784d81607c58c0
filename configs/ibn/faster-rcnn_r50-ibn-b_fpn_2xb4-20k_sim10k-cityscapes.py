# Faster R-CNN R50-FPN with IBN-Net-b, Sim10k -> Cityscapes (car AP50). Protocol as the BN baseline
# it inherits; backbone initialised from the official resnet50_ibn_b weights converted with
# tools/model_converters/ibnnet2mmseg.py (see docs/ibn.md).
_base_ = '../baseline/faster-rcnn_r50_fpn_2xb4-20k_sim10k-cityscapes.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='IBNResNet',
        ibn=dict(type='b'),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50_ibn_b_mmnorm.pth')))
