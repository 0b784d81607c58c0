# Faster R-CNN R50-FPN with RN in the backbone, Cityscapes -> Foggy Cityscapes unsupervised domain
# adaptation. Everything else is the BN baseline
# (configs/baseline/faster-rcnn_r50_fpn_2xb4-20k_cityscapes-foggy.py).
# Protocol:
#   train    every batch = 4 labelled Cityscapes train frames + 4 unlabelled Foggy Cityscapes train
#            frames per GPU (fog betas = the base's foggy_betas), paired by DomainPairDataset;
#            UDAFasterRCNN runs backbone+FPN on [source | target] with the split declared to RN, RPN
#            and RoI heads on the source part only
#   norm     RN in the backbone's norm layers; stem and stage 1 stay frozen as in the baseline
#            (frozen layers run in eval mode, i.e. with the target running statistics, which start
#            from the ImageNet BN statistics)
#   test     Foggy Cityscapes val, AP50 over the 8 classes (baseline test pipeline and metric)
_base_ = [
    '../baseline/faster-rcnn_r50_fpn_2xb4-20k_cityscapes-foggy.py', '../_base_/uda/det_target.py'
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
            type='FoggyCityscapesDataset',
            data_root=_base_.cityscapes_root,
            ann_file='annotations/instancesonly_filtered_gtFine_train.json',
            data_prefix=dict(img='leftImg8bit_foggy/train/'),
            betas={{_base_.foggy_betas}},
            pipeline=_base_.uda_target_pipeline)))
