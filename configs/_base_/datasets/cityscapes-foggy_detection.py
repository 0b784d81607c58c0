# Cityscapes (source, train, 8 classes) -> Foggy Cityscapes (target, val) object detection, mmdet
# scope.
# Annotations: COCO json from mmdet's tools/dataset_converters/cityscapes.py
# (instancesonly_filtered_gtFine_*.json); Foggy Cityscapes shares them (same frames, same boxes).
# The fog density is a config choice: foggy_betas = (0.02,) (densest fog, the most common protocol)
# or (0.005, 0.01, 0.02) (all three, 3x the frames).
# Data root: Foggy Cityscapes lives in the Cityscapes tree (leftImg8bit_foggy/ next to leftImg8bit/,
# the same annotation json), so --cfg-options data_roots.cityscapes=PATH moves both
# (docs/datasets.md).
cityscapes_root = 'data/cityscapes/'
data_roots = dict(cityscapes=cityscapes_root)
foggy_betas = (0.02, )

# Shorter side 600 px (Cityscapes 2048x1024 -> 1200x600), as in the cross-domain detection
# literature.
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
    # 'instances' carries the ground truth to CocoMetric, which builds its COCO api from the dataset
    # itself (with several fog densities the same frame appears once per beta under distinct image
    # ids).
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'instances')),
]

train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type='CityscapesDataset',
        data_root=cityscapes_root,
        ann_file='annotations/instancesonly_filtered_gtFine_train.json',
        data_prefix=dict(img='leftImg8bit/train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='FoggyCityscapesDataset',
        data_root=cityscapes_root,
        ann_file='annotations/instancesonly_filtered_gtFine_val.json',
        data_prefix=dict(img='leftImg8bit_foggy/val/'),
        betas=foggy_betas,
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader

# COCO-style bbox AP; the cross-domain detection number is bbox_mAP_50 (AP50), per class with
# classwise=True.
val_evaluator = dict(type='CocoMetric', ann_file=None, metric='bbox', classwise=True)
test_evaluator = val_evaluator
