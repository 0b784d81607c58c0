# Cityscapes -> ACDC continual test-time adaptation, the protocol of CoTTA (Wang et al., CVPR 2022,
# arXiv 2203.13591) as the authors' segmentation code runs it (their SegFormer / mmseg-0.x fork:
# tools/cotta.py and local_configs/_base_/datasets/acdc_1024x1024_repeat.py, also in the SVDP,
# ViDA and Hybrid-TTA forks): the four ACDC conditions in the order fog -> night -> rain -> snow,
# that sequence 10 times, one image per step, no shuffling, the model adapting throughout;
# mIoU over the 19 Cityscapes classes per condition per round, per round, and over all 40.
#   frames   ACDC 'train' split: 400 labelled frames per condition (the authors' configs read
#            rgb_anon/{cond}/train with gt/{cond}/train); acdc_split = 'val' uses the 100 (night:
#            106) val frames instead
#   size     1920x1080 resized to 960x540 (the authors' img_scale=(1920 // 2, 1080 // 2), ratio
#            kept); labels compared at 1920x1080
#   metric   ContinualIoUMetric: round{r}/{cond}/mIoU, round{r}/mIoU, {cond}/mIoU, mIoU
# This file defines acdc_* keys only; a config takes them with
#   test_dataloader = {{_base_.acdc_test_dataloader}}  and  test_evaluator = ...
# Data root: data_roots.acdc (tools/test.py --cfg-options data_roots.acdc=PATH moves every ACDC
# path; docs/datasets.md), a folder holding rgb_anon/ and gt/ of the ACDC download.
acdc_root = 'data/acdc/'
data_roots = dict(acdc=acdc_root)
acdc_split = 'train'
acdc_conditions = ('fog', 'night', 'rain', 'snow')
acdc_rounds = 10
acdc_scale = (960, 540)

acdc_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=acdc_scale, keep_ratio=True),
    # after Resize: the metric compares at the original label size
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
acdc_test_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    # in order; under dist_test.sh the stream is dealt round robin to the ranks, which adapt one
    # model together (docs/tta.md, "Continual Cityscapes->ACDC")
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        _delete_=True,  # replaces the Cityscapes test set of the model's config
        type='ContinualDataset',
        rounds=acdc_rounds,
        datasets=dict(
            type='ACDCDataset',
            data_root=acdc_root,
            conditions=acdc_conditions,
            split=acdc_split,
            pipeline=acdc_test_pipeline)))
acdc_test_evaluator = dict(type='ContinualIoUMetric', iou_metrics=['mIoU'])
