# DeepLabV3+ R50-D8, BN baseline, trained on GTA5 and tested on Cityscapes val (domain
# generalization).
# Protocol:
#   train    GTA5 official train split (split.mat, 12,403 frames), labels converted to train IDs
#            (tools/dataset_converters/gta5.py; size-mismatched frames resolved per its report)
#   aug      resize to 1280x720 x[0.5, 2.0], 512x512 random crop (cat_max_ratio 0.75), flip,
#            photometric distortion
#   schedule 40k iterations, SGD lr 0.01 poly(0.9), weight decay 5e-4
#   batch    4 GPUs x 2 images = 8, SyncBN (reverted to BN on a single process)
#   test     Cityscapes val (500 frames) at 1024x512, whole image, single scale, mIoU over 19
#            classes
#   init     ImageNet ResNetV1c-50 (open-mmlab://resnet50_v1c)
_base_ = [
    '../_base_/models/deeplabv3plus_r50-d8.py', '../_base_/datasets/gta5_cityscapes-512x512.py',
    '../_base_/seg_runtime.py', '../_base_/schedules/schedule_40k.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
