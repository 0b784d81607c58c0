# Faster R-CNN R50-FPN on mmdet's own base. The backbone norm comes from the top-level norm_cfg and
# its statistics are trained (norm_eval=False; stem and stage 1 stay frozen, as in mmdet), so that
# the norm under study sees the source domain. The FPN neck and the heads of Faster R-CNN have no
# norm layers.
_base_ = 'mmdet::_base_/models/faster-rcnn_r50_fpn.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False, frozen_stages=1),
    roi_head=dict(
        bbox_head=dict(
            num_classes=8, loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))))
