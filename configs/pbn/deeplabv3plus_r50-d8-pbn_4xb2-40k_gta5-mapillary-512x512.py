# DeepLabV3+ R50-D8 PBN trained on GTA5 (configs/pbn/*_gta5-cityscapes-512x512.py), tested on
# mapillary val with the protocol of configs/baseline/*_gta5-mapillary-512x512.py (PBN evaluates as
# plain BN with its running statistics).
_base_ = '../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-mapillary-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(backbone=dict(norm_cfg=dict(type='PBN', requires_grad=True)))
