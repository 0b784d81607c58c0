# DeepLabV3+ R50-D8 with EFDMix (Zhang et al., arXiv 2203.07740) after backbone stages 1-3
# (MixStyle's placement, which the EFDMix paper follows), defaults p 0.5, alpha 0.1, random mixing.
# Same protocol as the BN baseline it inherits (GTA5 -> Cityscapes val, 40k, 4x2, ImageNet
# ResNetV1c-50).
_base_ = '../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='PerturbResNetV1c',
        perturb=dict(type='EFDMix', p=0.5, alpha=0.1, mix='random'),
        after_stages=(0, 1, 2)))
