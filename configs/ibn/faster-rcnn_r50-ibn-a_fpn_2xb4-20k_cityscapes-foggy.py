# Faster R-CNN R50-FPN with IBN-Net-a (IBN in the first norm of every block of stages 1-3),
# Cityscapes -> Foggy Cityscapes. Protocol as the BN baseline it inherits (stem + stage 1 frozen,
# trained statistics); the backbone is initialised from the official ImageNet resnet50_ibn_a weights
# converted with
#   python tools/model_converters/ibnnet2mmseg.py resnet50_ibn_a-*.pth
#   checkpoints/resnet50_ibn_a_mmnorm.pth
_base_ = '../baseline/faster-rcnn_r50_fpn_2xb4-20k_cityscapes-foggy.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='IBNResNet',
        ibn=dict(type='a'),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50_ibn_a_mmnorm.pth')))
