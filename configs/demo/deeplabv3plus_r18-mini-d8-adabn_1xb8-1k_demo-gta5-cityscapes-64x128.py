# Embedded demo, AdaBN: the BN baseline's weights; before testing, every BN layer's statistics are
# re-estimated on the unlabelled target pool (200 target-train frames, not the test frames), exactly
# (pooled over the whole pool).
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
custom_hooks = [
    dict(
        type='AdaBNHook',
        before='test',
        dataloader=dict(
            batch_size=8,
            num_workers=2,
            persistent_workers=False,
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset={{_base_.target_pool}}))
]
