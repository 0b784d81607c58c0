# Embedded demo, IBN-Net-a + AdaBN: the IBN-a weights, BN statistics (IBN's BN halves included)
# re-estimated on the unlabelled target pool before testing.
_base_ = ['./deeplabv3plus_r18-mini-d8-ibn-a_1xb8-1k_demo-gta5-cityscapes-64x128.py']
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
