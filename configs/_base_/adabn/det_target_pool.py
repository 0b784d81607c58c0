# AdaBN before test for the detectors: AdaBNHook on an unlabelled target pool (one pass, pooled
# statistics; the frozen stem and stage 1 are recalibrated too), batches of 4 per GPU at the
# detection test scale (shorter side 600). The config names the pool:
#   custom_hooks = [dict(type='AdaBNHook', before='test', dataloader=dict(_base_.adabn_dataloader,
#   dataset=POOL))]
# with pipeline=_base_.adabn_pipeline.
adabn_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1200, 600), keep_ratio=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
adabn_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False))
