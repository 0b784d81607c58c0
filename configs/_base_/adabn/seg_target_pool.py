# AdaBN before test: AdaBNHook re-estimates every BN layer's statistics on an unlabelled target pool
# in one pass (exact statistics pooled over the whole pool), here the 2,975 Cityscapes *train*
# images (not the test frames) at 1024x512, batches of 8 per GPU; every image counts (a last batch
# of one image is measured too). Pools of mixed image sizes are regrouped into batches of one size
# by recalibrate_bn (nothing padded; docs/adabn.md). Another pool:
#   custom_hooks = [dict(type='AdaBNHook', before='test',
#                        dataloader=dict(_base_.adabn_dataloader, dataset=MY_POOL))]
adabn_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1024, 512), keep_ratio=True),
    dict(type='PackSegInputs'),
]
adabn_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False))
adabn_pool = dict(
    type='CityscapesDataset',
    data_root='data/cityscapes/',  # data_roots.cityscapes of the dataset config moves it
    data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
    pipeline=adabn_pipeline)
custom_hooks = [
    dict(type='AdaBNHook', before='test', dataloader=dict(adabn_dataloader, dataset=adabn_pool))
]
