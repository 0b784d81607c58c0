# DeepLabV3+ R50 OS16, BN baseline of RobustNet's domain-generalization protocol: trained on
# SYNTHIA, one checkpoint tested on Cityscapes, BDD100K and Mapillary (mIoU per dataset and their
# mean).
# Protocol (shachoi/RobustNet, scripts/train_r50os16_gtav_base.sh with --dataset synthia):
#   model    DeepLabV3+ ResNetV1c-50, output stride 16 (_base_/models/deeplabv3plus_r50-d16.py)
#   train    SYNTHIA, class-uniform sampling (50%, 1024 tiles), x[0.5, 2.0] rescale, 768x768
#            crops, flip, photometric jitter (_base_/datasets/robustnet_synthia-768x768.py)
#   schedule 40k iterations, SGD lr 0.01 momentum 0.9 weight decay 5e-4 (all parameters),
#            poly(0.9) to 0 (_base_/schedules/robustnet_40k.py)
#   batch    4 GPUs x 4 images = 16, SyncBN (reverted to BN on a single process)
#   test     Cityscapes val 2048x1024, BDD100K val 1280x720, Mapillary val height 1536 + 1536x1536
#            centre crop; whole image, single scale
#            (_base_/datasets/dg-test_cityscapes-bdd100k-mapillary.py)
#   init     ImageNet ResNetV1c-50 (open-mmlab://resnet50_v1c)
#   usage    tools/dist_train.sh THIS_CONFIG 4
#            tools/test.py THIS_CONFIG CKPT --metrics-out m.json
_base_ = [
    '../_base_/models/deeplabv3plus_r50-d16.py',
    '../_base_/datasets/robustnet_synthia-768x768.py',
    '../_base_/datasets/dg-test_cityscapes-bdd100k-mapillary.py',
    '../_base_/seg_runtime.py',
    '../_base_/schedules/robustnet_40k.py',
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
crop_size = (768, 768)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))

val_dataloader = {{_base_.dg_test_dataloader}}
test_dataloader = val_dataloader
val_evaluator = {{_base_.dg_test_evaluator}}
test_evaluator = val_evaluator
