# DeepLabV3+ R50 OS16 with IW (instance whitening: every off-diagonal element of each instance's
# covariance, loss weight 0.8), trained on GTA5, tested on Cityscapes, BDD100K and Mapillary.
# Protocol as the BN config it inherits; instance standardisation and the whitening loss after the
# stem and stages 1 and 2 (RobustNet --wt_layer 0 0 1 1 1 0 0), logged as loss_whitening. See
# docs/whitening.md.
_base_ = './deeplabv3plus_r50-d16-bn_4xb4-40k_gta5-cityscapes-bdd100k-mapillary-768x768.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    type='WhiteningEncoderDecoder',
    backbone=dict(
        type='WhiteningResNetV1c', whitening=dict(type='IW'), after_stages=('stem', 0, 1)))
