# UDA target for the segmentors: unlabelled Cityscapes train crops with the source's geometric
# augmentation, paired with the source by DomainPairDataset (the UDA wrapper declares the [source |
# target] split):
#   train_dataloader = dict(dataset=dict(_delete_=True, type='DomainPairDataset',
#                                        source=_base_.train_dataloader.dataset,
#                                        target=_base_.uda_target))
uda_target_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResize', scale=(1024, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(512, 512)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
uda_target = dict(
    type='CityscapesDataset',
    data_root='data/cityscapes/',  # data_roots.cityscapes of the dataset config moves it
    data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
    pipeline=uda_target_pipeline)
