# DeepLabV3+ R50-D8 (ResNetV1c, output stride 8), 19 classes, on mmseg's own base. The norm of
# backbone and heads comes from the top-level norm_cfg; full configs restate it so a norm config
# overrides it in one place.
_base_ = 'mmseg::_base_/models/deeplabv3plus_r50-d8.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg, num_classes=19),
    auxiliary_head=dict(norm_cfg=norm_cfg, num_classes=19))
