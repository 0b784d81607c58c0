# DeepLabV3+ R50-D8 with PBN in every norm layer of the backbone (stem, all stages, downsample;
# paper placement), heads keep the baseline's SyncBN. Same protocol as the BN baseline (GTA5 ->
# Cityscapes val, 40k, 4x2).
_base_ = '../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py'
model = dict(backbone=dict(norm_cfg=dict(type='PBN', requires_grad=True)))
