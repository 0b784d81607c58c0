# RetinaNet R50-FPN on mmdet's own base. The backbone norm comes from the top-level norm_cfg and its
# statistics are trained (norm_eval=False; stem and stage 1 stay frozen, as in mmdet), so that the
# norm under study sees the source domain. The FPN neck and RetinaHead have no norm layers
# (RetinaHead takes a norm_cfg for its stacked convs).
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False, frozen_stages=1),
    bbox_head=dict(num_classes=8))
