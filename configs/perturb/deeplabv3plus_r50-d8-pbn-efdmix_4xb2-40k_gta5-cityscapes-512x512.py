# DeepLabV3+ R50-D8 with PBN in every backbone norm layer and EFDMix after stages 1-3 (the PBN paper
# stacks PBN on EFDMix). Same protocol as the BN baseline (GTA5 -> Cityscapes val, 40k, 4x2,
# ImageNet ResNetV1c-50).
_base_ = '../pbn/deeplabv3plus_r50-d8-pbn_4xb2-40k_gta5-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='PerturbResNetV1c',
        perturb=dict(type='EFDMix', p=0.5, alpha=0.1, mix='random'),
        after_stages=(0, 1, 2)))
