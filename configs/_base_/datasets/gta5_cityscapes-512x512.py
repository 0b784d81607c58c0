# GTA5 (source, labelled, train) -> Cityscapes (target, val) semantic segmentation, 19 classes,
# mmseg scope. Data roots: one per dataset; every data path of a config lies under one of them, and
# tools/train.py / test.py move all paths of a dataset with --cfg-options data_roots.gta5=PATH
# (data_roots.cityscapes=PATH); see docs/datasets.md.
gta5_root = 'data/gta5/'
cityscapes_root = 'data/cityscapes/'
data_roots = dict(gta5=gta5_root, cityscapes=cityscapes_root)

crop_size = (512, 512)
# GTA5 frames are 1914x1052: resized to 1280x720 (x0.5-2.0), then 512x512 crops.
source_scale = (1280, 720)
# Cityscapes val (2048x1024) is evaluated at 1024x512, whole image.
target_scale = (1024, 512)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    # Converted labels (tools/dataset_converters/gta5.py) already hold train IDs; raw palette labels
    # are mapped by GTA5Dataset's label_map. Both need the pillow backend (cv2 would return palette
    # colours).
    dict(type='LoadAnnotations', imdecode_backend='pillow'),
    dict(type='RandomResize', scale=source_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=target_scale, keep_ratio=True),
    # Annotations are loaded after Resize: IoUMetric compares at the original label size.
    dict(type='LoadAnnotations', imdecode_backend='pillow'),
    dict(type='PackSegInputs'),
]

train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='GTA5Dataset',
        data_root=gta5_root,
        data_prefix=dict(img_path='images', seg_map_path='labels'),
        seg_map_suffix='_labelTrainIds.png',
        # Official split (split.mat, 12,403 train frames); split=None trains on all 24,966 frames.
        split='train',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CityscapesDataset',
        data_root=cityscapes_root,
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
