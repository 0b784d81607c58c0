# Sim10k (source, all 10,000 GTA-V frames, VOC XML) -> Cityscapes (target, val) car detection, mmdet
# scope. Only the 'car' class is used on both sides; Cityscapes uses the COCO json of mmdet's
# converter, restricted to 'car' through metainfo. The reported number is car AP50 (bbox_mAP_50).
# Data roots: --cfg-options data_roots.sim10k=PATH / data_roots.cityscapes=PATH moves every path of
# that dataset, evaluator json included (docs/datasets.md).
sim10k_root = 'data/sim10k/'
cityscapes_root = 'data/cityscapes/'
data_roots = dict(sim10k=sim10k_root, cityscapes=cityscapes_root)

img_scale = (1200, 600)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]

train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type='Sim10kDataset',
        data_root=sim10k_root,
        # ann_file='' lists every VOC2012/Annotations/*.xml; a text file of frame names selects a
        # subset.
        ann_file='',
        data_prefix=dict(sub_data_root='VOC2012/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CityscapesDataset',
        metainfo=dict(classes=('car', ), palette=[(0, 0, 142)]),
        data_root=cityscapes_root,
        ann_file='annotations/instancesonly_filtered_gtFine_val.json',
        data_prefix=dict(img='leftImg8bit/val/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoMetric',
    ann_file=cityscapes_root + 'annotations/instancesonly_filtered_gtFine_val.json',
    metric='bbox')
test_evaluator = val_evaluator
