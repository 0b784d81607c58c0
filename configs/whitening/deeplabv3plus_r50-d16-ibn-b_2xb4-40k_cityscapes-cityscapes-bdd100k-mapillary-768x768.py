# DeepLabV3+ R50 OS16 with IBN-Net, RobustNet's IBN row: instance normalisation with affine after
# the stem and after stages 1 and 2 (--wt_layer 0 0 4 4 4 0 0, the IBN-Net-b placement), trained on
# Cityscapes, tested on Cityscapes, BDD100K and Mapillary. Protocol as the BN config it inherits;
# the backbone is mmnorm's IBNResNetV1c with ibn=dict(type='b') (3-conv stem, as the BN baseline),
# initialised from the same ImageNet ResNetV1c-50 weights (the IN layers start from weight 1, bias
# 0), as RobustNet initialises every variant.
_base_ = './deeplabv3plus_r50-d16-bn_2xb4-40k_cityscapes-cityscapes-bdd100k-mapillary-768x768.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(backbone=dict(type='IBNResNetV1c', ibn=dict(type='b')))
