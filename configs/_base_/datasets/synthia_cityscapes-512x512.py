# SYNTHIA-RAND-CITYSCAPES (source, train) -> Cityscapes (target, val), trained on the 19 Cityscapes
# classes, evaluated as mIoU over 19, 16 and 13 classes (SYNTHIA has no terrain/truck/train; the
# 13-class set also drops wall/fence/pole). mmseg scope. Data roots: --cfg-options
# data_roots.synthia=PATH / data_roots.cityscapes=PATH moves every path of that dataset
# (docs/datasets.md).
synthia_root = 'data/synthia/'
cityscapes_root = 'data/cityscapes/'
data_roots = dict(synthia=synthia_root, cityscapes=cityscapes_root)

crop_size = (512, 512)
# SYNTHIA frames are 1280x760.
source_scale = (1280, 760)
target_scale = (1024, 512)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    # SYNTHIA's raw 16-bit labels are not readable by LoadAnnotations: run
    # tools/dataset_converters/synthia.py.
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
    dict(type='LoadAnnotations', imdecode_backend='pillow'),
    dict(type='PackSegInputs'),
]

train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='SynthiaDataset',
        data_root=synthia_root,
        data_prefix=dict(img_path='RGB', seg_map_path='GT/LABELS'),
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

# mIoU (19 classes) plus mIoU16 / mIoU13 over the SYNTHIA class subsets.
val_evaluator = dict(type='SubsetIoUMetric', iou_metrics=['mIoU'], subsets='synthia')
test_evaluator = val_evaluator
