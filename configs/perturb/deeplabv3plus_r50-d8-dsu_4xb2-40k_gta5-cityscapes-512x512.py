# DeepLabV3+ R50-D8 with DSU (Li et al., arXiv 2202.03958) after the stem and after every backbone
# stage (the authors' placement), defaults p 0.5, factor 1.0. Same protocol as the BN baseline it
# inherits (GTA5 -> Cityscapes val, 40k, 4x2, ImageNet ResNetV1c-50).
_base_ = '../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='PerturbResNetV1c',
        perturb=dict(type='DSU', p=0.5, factor=1.0),
        after_stages=('conv1', 'stem', 0, 1, 2, 3)))
