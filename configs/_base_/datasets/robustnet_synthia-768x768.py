# RobustNet's training data (shachoi/RobustNet, its GTA5 scripts with --dataset synthia), SYNTHIA
# source, mmseg scope. Only the training side: the test side is the multi-target set
# (dg-test_cityscapes-bdd100k-mapillary.py). Protocol:
#   frames   SYNTHIA-RAND-CITYSCAPES, 19 Cityscapes classes (no terrain / truck / train in the
#            source), labels converted (tools/dataset_converters/synthia.py). RobustNet trains on
#            its random split (split_data/synthia_split_train.txt, 6,580 of 9,400 frames): write
#            those names without '.png' to a file and set
#            train_dataloader.dataset.dataset.ann_file; by default all 9,400 frames are used
#   sampling class-uniform (ClassUniformDataset), 50% of the samples, 1024x1024 label tiles
#   aug      random rescale x[0.5, 2.0] of the 1280x760 frame, 768x768 crop (around the drawn
#            centroid for class-uniform samples), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with
#            p=0.5 and Gaussian blur sigma U[0.15, 1.3] (RobustNetPhotometric)
#   batch    4 images per GPU (4 GPUs in the configs: 16)
_base_ = ['./robustnet_class-uniform-768x768.py']
synthia_root = 'data/synthia/'
# --cfg-options data_roots.synthia=PATH moves every synthia path (docs/datasets.md)
data_roots = dict(synthia=synthia_root)
crop_size = (768, 768)
source_size = (1280, 760)

robustnet_source = dict(
    type='SynthiaDataset',
    data_root=synthia_root,
    data_prefix=dict(img_path='RGB', seg_map_path='GT/LABELS'))
# ISW's statistics pass after 6 epochs (cov_stat_epoch 5, 0-based) of 6,580 / 16 iterations.
isw_after_iter = 2470
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
