# RetinaNet R50-FPN with RN in the backbone, Sim10k -> Cityscapes unsupervised domain adaptation,
# car only. Everything else is the BN baseline
# (configs/baseline/retinanet_r50_fpn_2xb4-20k_sim10k-cityscapes.py).
# Protocol:
#   train    every batch = 4 labelled Sim10k frames + 4 unlabelled Cityscapes train frames per GPU,
#            paired by DomainPairDataset; UDARetinaNet runs backbone, FPN and RetinaHead on [source
#            | target] with the split declared to RN; the head's losses read the source rows and
#            boxes only
#   norm     RN in the backbone's norm layers; stem and stage 1 stay frozen as in the baseline
#   test     Cityscapes val, car AP50 (baseline test pipeline and metric)
_base_ = ['../baseline/retinanet_r50_fpn_2xb4-20k_sim10k-cityscapes.py']
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

model = dict(
    type='UDARetinaNet',
    backbone=dict(norm_cfg=dict(type='RN', requires_grad=True), norm_eval=False))

target_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1200, 600), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='DomainPairDataset',
        source={{_base_.train_dataloader.dataset}},
        target=dict(
            type='CityscapesDataset',
            metainfo=dict(classes=('car', ), palette=[(0, 0, 142)]),
            data_root=_base_.cityscapes_root,
            ann_file='annotations/instancesonly_filtered_gtFine_train.json',
            data_prefix=dict(img='leftImg8bit/train/'),
            pipeline=target_pipeline)))
