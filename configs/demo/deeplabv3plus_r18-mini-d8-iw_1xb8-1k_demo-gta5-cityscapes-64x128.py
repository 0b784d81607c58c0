# Embedded demo, IW (instance whitening; RobustNet, Choi et al., CVPR 2021): instance
# standardisation after the stem and stages 1-2 (RobustNet's --wt_layer 0 0 1 1 1 0 0) and the
# whitening loss on every off-diagonal element of each instance's covariance (loss weight 0.8, the
# authors'), logged as loss_whitening. Same data, schedule and test protocol as the BN baseline.
# See docs/whitening.md.
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
model = dict(
    type='WhiteningEncoderDecoder',
    backbone=dict(
        type='WhiteningResNetV1c', whitening=dict(type='IW'), after_stages=('stem', 0, 1)))
