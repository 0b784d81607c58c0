# Faster R-CNN R50-FPN with MixStyle after backbone stages 1-3 (p 0.5, alpha 0.1, random mixing; it
# acts in training also after the frozen stage 1). Same protocol as the BN baseline it inherits
# (Cityscapes -> Foggy Cityscapes val, 8 classes, AP50, 20k, 2x4, torchvision ResNet-50).
_base_ = '../baseline/faster-rcnn_r50_fpn_2xb4-20k_cityscapes-foggy.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='PerturbResNet',
        perturb=dict(type='MixStyle', p=0.5, alpha=0.1, mix='random'),
        after_stages=(0, 1, 2)))
