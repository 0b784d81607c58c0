# Faster R-CNN R50-FPN with PBN in every backbone norm layer, Sim10k -> Cityscapes (car AP50).
# Same protocol as the BN baseline (20k, 2x4).
_base_ = '../baseline/faster-rcnn_r50_fpn_2xb4-20k_sim10k-cityscapes.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(backbone=dict(norm_cfg=dict(type='PBN', requires_grad=True)))
