# Faster R-CNN R50-FPN with PBN in every norm layer of the backbone (stem, all stages, downsample;
# paper placement). Same protocol as the BN baseline (Cityscapes -> Foggy Cityscapes val, 8 classes,
# AP50, 20k, 2x4).
_base_ = '../baseline/faster-rcnn_r50_fpn_2xb4-20k_cityscapes-foggy.py'
model = dict(backbone=dict(norm_cfg=dict(type='PBN', requires_grad=True)))
