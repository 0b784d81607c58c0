# Faster R-CNN R50-FPN with RN in the backbone, Sim10k -> Cityscapes unsupervised domain adaptation,
# car only. Everything else is the BN baseline
# (configs/baseline/faster-rcnn_r50_fpn_2xb4-20k_sim10k-cityscapes.py).
# Protocol:
#   train    every batch = 4 labelled Sim10k frames + 4 unlabelled Cityscapes train frames per GPU,
#            paired by DomainPairDataset; UDAFasterRCNN runs backbone+FPN on [source | target] with
#            the split declared to RN, RPN and RoI heads on the source part only
#   norm     RN in the backbone's norm layers; stem and stage 1 stay frozen as in the baseline
#   test     Cityscapes val, car AP50 (baseline test pipeline and metric)
_base_ = [
    '../baseline/faster-rcnn_r50_fpn_2xb4-20k_sim10k-cityscapes.py', '../_base_/uda/det_target.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

model = dict(
    type='UDAFasterRCNN',
    backbone=dict(norm_cfg=dict(type='RN', requires_grad=True), norm_eval=False))
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='DomainPairDataset',
        source=_base_.train_dataloader.dataset,
        target=dict(
            type='CityscapesDataset',
            metainfo=dict(classes=('car', ), palette=[(0, 0, 142)]),
            data_root=_base_.cityscapes_root,
            ann_file='annotations/instancesonly_filtered_gtFine_train.json',
            data_prefix=dict(img='leftImg8bit/train/'),
            pipeline=_base_.uda_target_pipeline)))
