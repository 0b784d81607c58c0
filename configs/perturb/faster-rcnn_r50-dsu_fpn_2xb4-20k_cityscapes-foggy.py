# Faster R-CNN R50-FPN with DSU after the stem and every backbone stage (p 0.5, factor 1.0). Same
# protocol as the BN baseline it inherits (Cityscapes -> Foggy Cityscapes val, 8 classes, AP50, 20k,
# 2x4, torchvision ResNet-50).
_base_ = '../baseline/faster-rcnn_r50_fpn_2xb4-20k_cityscapes-foggy.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='PerturbResNet',
        perturb=dict(type='DSU', p=0.5, factor=1.0),
        after_stages=('conv1', 'stem', 0, 1, 2, 3)))
