# UDA target pipeline for the detectors (unlabelled target frames, shorter side 600, flip); the
# config pairs its target dataset with the source:
#   train_dataloader = dict(dataset=dict(_delete_=True, type='DomainPairDataset',
#                                        source=_base_.train_dataloader.dataset,
#                                        target=dict(type=...,
#                                        pipeline=_base_.uda_target_pipeline)))
uda_target_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1200, 600), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
