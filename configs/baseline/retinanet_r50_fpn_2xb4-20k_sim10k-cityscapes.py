# RetinaNet R50-FPN, BN baseline, trained on Sim10k and tested on Cityscapes val, car only.
# Protocol:
#   train    all 10,000 Sim10k frames (VOC XML), class 'car' only
#   aug      shorter side 600 (1200x600, keep ratio), horizontal flip
#   schedule 20k iterations, SGD lr 0.01, x0.1 at 15k, 500-iter warm-up, weight decay 1e-4
#   batch    2 GPUs x 4 images = 8, SyncBN in the backbone, trained statistics (norm_eval=False),
#            stem+stage 1 frozen
#   test     Cityscapes val (500 frames), class 'car' of mmdet's COCO json, shorter side 600; car
#            AP50 (bbox_mAP_50)
#   init     ImageNet ResNet-50 (torchvision://resnet50)
_base_ = [
    '../_base_/models/retinanet_r50_fpn.py', '../_base_/datasets/sim10k-cityscapes_detection.py',
    '../_base_/det_runtime.py', '../_base_/schedules/schedule_det_20k.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), bbox_head=dict(num_classes=1))
