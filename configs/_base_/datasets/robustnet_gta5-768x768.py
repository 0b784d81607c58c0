# RobustNet's training data (shachoi/RobustNet, scripts/train_r50os16_gtav_*.sh), GTA5 source, mmseg
# scope. Only the training side: the test side is the multi-target set
# (dg-test_cityscapes-bdd100k-mapillary.py). Protocol:
#   frames   GTA5 official train split (split.mat trainIds, 12,403 frames; RobustNet's README
#            takes its split from the same official read_mapping.zip and lists 12,388 frames in
#            split_data/gtav_split_train.txt; to train on that list:
#            sed 's/[.]png$//' gtav_split_train.txt > data/gta5/robustnet_train.txt and
#            --cfg-options train_dataloader.dataset.dataset.split=None
#            train_dataloader.dataset.dataset.ann_file=robustnet_train.txt), labels converted to
#            train IDs (tools/dataset_converters/gta5.py)
#   sampling class-uniform (ClassUniformDataset): half the samples are crops around a pixel of a
#            class drawn uniformly (centroids over 1024x1024 label tiles), half plain
#   aug      random rescale x[0.5, 2.0] of the 1914x1052 frame, 768x768 crop (around the drawn
#            centroid for class-uniform samples), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with
#            p=0.5 and Gaussian blur sigma U[0.15, 1.3] (RobustNetPhotometric)
#   batch    4 images per GPU (4 GPUs in the configs: 16)
gta5_root = 'data/gta5/'
# --cfg-options data_roots.gta5=PATH moves every gta5 path (docs/datasets.md)
_base_ = ['./robustnet_class-uniform-768x768.py']
data_roots = dict(gta5=gta5_root)
crop_size = (768, 768)
source_size = (1914, 1052)

robustnet_source = dict(
    type='GTA5Dataset',
    data_root=gta5_root,
    data_prefix=dict(img_path='images', seg_map_path='labels'),
    seg_map_suffix='_labelTrainIds.png',
    split='train')
# ISW's statistics pass (ISWStatisticsHook): whole frames, each with its photometric twin; run
# after 6 epochs of 12,403 / 16 iterations (the authors' cov_stat_epoch 5, 0-based).
isw_after_iter = 4650
isw_statistics_dataset = dict(robustnet_source, pipeline={{_base_.isw_statistics_pipeline}})

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', imdecode_backend='pillow'),
    dict(type='RandomResize', scale=source_size, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='ClassUniformCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RobustNetPhotometric'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(dataset=dict(robustnet_source, pipeline=train_pipeline)))
