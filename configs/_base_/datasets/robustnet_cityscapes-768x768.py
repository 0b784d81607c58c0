# RobustNet's training data (shachoi/RobustNet, scripts/train_r50os16_cty_*.sh), Cityscapes
# source, mmseg scope. Only the training side: the test side is the multi-target set
# (dg-test_cityscapes-bdd100k-mapillary.py; Cityscapes val is then the source domain's own val).
# Protocol:
#   frames   Cityscapes train (gtFine, 2,975 frames)
#   sampling class-uniform (ClassUniformDataset), 50% of the samples, 1024x1024 label tiles
#   aug      random rescale x[0.5, 2.0] of the 2048x1024 frame, 768x768 crop (around the drawn
#            centroid for class-uniform samples), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with
#            p=0.5 and Gaussian blur sigma U[0.15, 1.3] (RobustNetPhotometric)
#   batch    4 images per GPU (the authors' Cityscapes scripts use 2 GPUs: 8)
_base_ = ['./robustnet_class-uniform-768x768.py']
cityscapes_root = 'data/cityscapes/'
# --cfg-options data_roots.cityscapes=PATH moves every cityscapes path (docs/datasets.md)
data_roots = dict(cityscapes=cityscapes_root)
crop_size = (768, 768)
source_size = (2048, 1024)

robustnet_source = dict(
    type='CityscapesDataset',
    data_root=cityscapes_root,
    data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'))
# ISW's statistics pass after 6 epochs (cov_stat_epoch 5, 0-based) of 2,975 / 8 iterations.
isw_after_iter = 2230
isw_statistics_dataset = dict(robustnet_source, pipeline={{_base_.isw_statistics_pipeline}})

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=source_size, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='ClassUniformCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RobustNetPhotometric'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(dataset=dict(robustnet_source, pipeline=train_pipeline)))
