# Domain-generalization test set: one checkpoint evaluated on Cityscapes val, BDD100K val and
# Mapillary val in one run (tools/test.py or tools/dist_test.sh), reporting mIoU per dataset and
# their unweighted mean (log table; --metrics-out JSON keys 'cityscapes/mIoU', 'bdd100k/mIoU',
# 'mapillary/mIoU', 'mean/mIoU', plus aAcc / mAcc the same way). mmseg scope. Combine it with any
# 19-class segmentation config as below (example: configs/baseline/
# deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-bdd100k-mapillary-512x512.py).
# Test protocol (RobustNet's valid.py / datasets/__init__.py, shachoi/RobustNet):
#   cityscapes  val, 500 frames, full 2048x1024, whole image, single scale
#   bdd100k     10k semantic segmentation val, 1,000 frames, full 1280x720, whole image
#   mapillary   Vistas v1.2 validation, 2,000 frames: image and label resized so the height is
#               1536 (RobustNet ResizeHeight(1536)), then the 1536x1536 centre crop (CenterCropPad)
#               is predicted and scored at that size; the 66 v1.2 classes mapped to the 19
#               Cityscapes train IDs by Mapillary19Dataset (the table tools/dataset_converters/
#               mapillary.py writes to *_labelTrainIds.png: with converted labels add
#               seg_map_suffix='_labelTrainIds.png', faster to load)
#   Differences: mmseg resizes the shorter side to 1536 (the height of every landscape frame;
#   a portrait frame gets width 1536 where RobustNet sets its height) and crops without padding
#   a frame narrower than 1536 (RobustNet pads it; padded pixels are ignored by the score).
dg_cityscapes_root = 'data/cityscapes/'
dg_bdd100k_root = 'data/bdd100k/'
dg_mapillary_root = 'data/mapillary/'
# Declared beside the config's own data_roots (mmengine refuses one key in two bases): the tools
# read both, so --cfg-options data_roots.bdd100k=PATH moves the BDD100K test set (docs/datasets.md).
dg_data_roots = dict(
    cityscapes=dg_cityscapes_root, bdd100k=dg_bdd100k_root, mapillary=dg_mapillary_root)

dg_full_size_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', imdecode_backend='pillow'),
    dict(type='PackSegInputs'),
]
dg_mapillary_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', imdecode_backend='pillow'),
    # keep_ratio: the shorter side becomes 1536 (the longer one is bounded by 8192)
    dict(type='Resize', scale=(1536, 8192), keep_ratio=True),
    dict(type='CenterCrop', crop_size=(1536, 1536)),
    dict(type='ResetOriShape'),  # score the prediction against the cropped label
    dict(type='PackSegInputs'),
]

# Variables only (mmengine refuses one key defined by two _base_ files). A config without
# inherited val / test dataloaders (configs/whitening) lists this file as a _base_ and sets
#   val_dataloader = {{_base_.dg_test_dataloader}}
#   test_dataloader = val_dataloader
#   val_evaluator = {{_base_.dg_test_evaluator}}
#   test_evaluator = val_evaluator
# A config that inherits them replaces the dataset and evaluator with _delete_ (see the baseline
# example named above).
dg_test_datasets = dict(
    cityscapes=dict(
        type='CityscapesDataset',
        data_root=dg_cityscapes_root,
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
        pipeline=dg_full_size_pipeline),
    bdd100k=dict(
        type='BDD100KDataset',
        data_root=dg_bdd100k_root,
        data_prefix=dict(img_path='images/10k/val', seg_map_path='labels/sem_seg/masks/val'),
        pipeline=dg_full_size_pipeline),
    mapillary=dict(
        type='Mapillary19Dataset',
        data_root=dg_mapillary_root,
        data_prefix=dict(img_path='validation/images', seg_map_path='validation/v1.2/labels'),
        pipeline=dg_mapillary_pipeline))
dg_test_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='MultiTargetDataset', datasets=dg_test_datasets))
dg_test_evaluator = dict(type='MultiTargetIoUMetric', iou_metrics=['mIoU'])
