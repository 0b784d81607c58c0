# Faster R-CNN R50-FPN, BN baseline, trained on Cityscapes and tested on Foggy Cityscapes (8
# classes).
# Protocol:
#   train    Cityscapes train (2,975 frames; mmdet's COCO json, frames without boxes dropped), 8
#            classes
#   aug      shorter side 600 (1200x600, keep ratio), horizontal flip
#   schedule 20k iterations, SGD lr 0.01, x0.1 at 15k, 500-iter warm-up, weight decay 1e-4
#   batch    2 GPUs x 4 images = 8, SyncBN in the backbone, trained statistics (norm_eval=False),
#            stem+stage 1 frozen
#   test     Foggy Cityscapes val (500 frames), fog beta 0.02 (foggy_betas=(0.005, 0.01, 0.02) for
#            all three), shorter side 600; AP50 (bbox_mAP_50) over the 8 classes, per-class AP
#            listed
#   init     ImageNet ResNet-50 (torchvision://resnet50)
_base_ = [
    '../_base_/models/faster-rcnn_r50_fpn.py', '../_base_/datasets/cityscapes-foggy_detection.py',
    '../_base_/det_runtime.py', '../_base_/schedules/schedule_det_20k.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), roi_head=dict(bbox_head=dict(num_classes=8)))
