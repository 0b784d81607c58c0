# DeepLabV3+ R50-D8 IBN-Net-a trained on GTA5 (configs/ibn/*-ibn-a_*_gta5-cityscapes-512x512.py),
# tested on mapillary val with the protocol of configs/baseline/*_gta5-mapillary-512x512.py:
#   python tools/test.py THIS_CONFIG work_dirs/<ibn-a gta5 run>/iter_40000.pth
_base_ = '../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-mapillary-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    pretrained='checkpoints/resnet50_ibn_a_mmnorm.pth',
    backbone=dict(type='IBNResNet', ibn=dict(type='a')))
