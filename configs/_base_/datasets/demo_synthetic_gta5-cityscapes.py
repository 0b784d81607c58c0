# The embedded synthetic benchmark written by `make demo`
# (mmnorm.datasets.synthetic.generate_demo_data): source = GTA5 layout (palette label IDs), target =
# Cityscapes layout (train IDs), 64x128 frames, 8 of the 19 Cityscapes classes present. Train on
# source train (800 frames); val = source val (100); test = target val (200). The unlabelled target
# train split (200) is the adaptation pool (AdaBN recalibration, UDA). Data root: --cfg-options
# data_roots.demo=PATH moves both domains (docs/datasets.md).
demo_data_root = 'data/demo'
data_roots = dict(demo=demo_data_root)
source_root = demo_data_root + '/gta5'
target_root = demo_data_root + '/cityscapes'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
source_train = dict(
    type='GTA5Dataset',
    data_root=source_root,
    ann_file='train.txt',
    data_prefix=dict(img_path='images', seg_map_path='labels'),
    pipeline=train_pipeline)
source_val = dict(
    type='GTA5Dataset',
    data_root=source_root,
    ann_file='val.txt',
    data_prefix=dict(img_path='images', seg_map_path='labels'),
    pipeline=test_pipeline)
target_val = dict(
    type='CityscapesDataset',
    data_root=target_root,
    data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
    pipeline=test_pipeline)
# Unlabelled target pool (labels exist on disk as in Cityscapes but the adaptation pipelines never
# load them): `target_train` for source+target (UDA) training, `target_pool` for test-time
# recalibration (AdaBN).
target_train = dict(
    type='CityscapesDataset',
    data_root=target_root,
    data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
    pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackSegInputs')
    ])
target_pool = dict(
    type='CityscapesDataset',
    data_root=target_root,
    data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
    pipeline=[dict(type='LoadImageFromFile'),
              dict(type='PackSegInputs')])

train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=source_train)
val_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=source_val)
test_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=target_val)
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
