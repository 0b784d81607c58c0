# DeepLabV3+ R50-D8 with PBN in every backbone norm layer, SYNTHIA -> Cityscapes; heads keep the
# baseline's SyncBN. Same protocol as the SYNTHIA BN baseline (40k, 4x2, Cityscapes val, mIoU over
# 19/16/13 classes).
_base_ = '../baseline/deeplabv3plus_r50-d8_4xb2-40k_synthia-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(backbone=dict(norm_cfg=dict(type='PBN', requires_grad=True)))
