# DeepLabV3+ R50-D8, AdaBN, SYNTHIA-trained BN model tested on Cityscapes val.
# Protocol:
#   train    identical to the BN baseline (configs/baseline/..._synthia-cityscapes-512x512.py); reuse its checkpoint:
#              python tools/test.py THIS_CONFIG work_dirs/<bn run>/iter_40000.pth
#   adapt    AdaBNHook before test: all 2,975 Cityscapes *train* images (unlabelled) at 1024x512, batches of 8 per
#            GPU, one pass, pooled statistics; drop_last=True (a last batch of
#            one image would hit DeepLabV3+'s 1x1 image-pool BN in train mode)
#   test     Cityscapes val (500) at 1024x512, whole image, single scale; mIoU over 19 classes, mIoU16, mIoU13
_base_ = '../baseline/deeplabv3plus_r50-d8_4xb2-40k_synthia-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

adabn_pool = dict(
    type='CityscapesDataset',
    data_root='data/cityscapes/',
    data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
    pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(1024, 512), keep_ratio=True),
        dict(type='PackSegInputs'),
    ])
custom_hooks = [
    dict(type='AdaBNHook', before='test',
         dataloader=dict(batch_size=8, num_workers=4, persistent_workers=False,
                         sampler=dict(type='DefaultSampler', shuffle=False), dataset=adabn_pool,
                         drop_last=True))
]
