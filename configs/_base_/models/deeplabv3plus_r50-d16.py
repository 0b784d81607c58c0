# DeepLabV3+ R50 at output stride 16 (RobustNet's DeepR50V3PlusD, variant 'D16'): ResNetV1c-50
# (3-conv stem, as RobustNet's resnet-50) with the last stage dilated instead of strided
# (strides 1, 2, 2, 1; dilations 1, 1, 1, 2), ASPP rates 6 / 12 / 18 (mmseg's OS8 config uses
# 12 / 24 / 36), 48-channel low-level skip, auxiliary FCN head on stage 3 with 512 channels and
# loss weight 0.4 (RobustNet's dsn head). mmseg's head uses depthwise-separable ASPP / decoder
# convolutions where RobustNet's uses plain ones.
_base_ = './deeplabv3plus_r50-d8.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), norm_cfg=norm_cfg),
    decode_head=dict(dilations=(1, 6, 12, 18), norm_cfg=norm_cfg),
    auxiliary_head=dict(channels=512, norm_cfg=norm_cfg))
