# DeepLabV3+ R50-D8, AdaBN, GTA5-trained BN model tested on Mapillary Vistas v1.2 val (19 Cityscapes
# classes).
# Protocol:
#   train    identical to the BN baseline (GTA5 -> Cityscapes config); reuse its checkpoint:
#              python tools/test.py THIS_CONFIG work_dirs/<bn run>/iter_40000.pth
#   adapt    AdaBNHook before test: the first 3,000 Mapillary *training* images (unlabelled; of
#            18,000) at 1024x512 (keep ratio: many sizes), batches of 8 images of one size per
#            GPU (recalibrate_bn regroups them, nothing is padded), one pass, pooled statistics over
#            every image
#   test     Mapillary v1.2 val (2,000) at 1024x512 (keep ratio), whole image, single scale, mIoU
#            over 19 classes
_base_ = [
    '../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-mapillary-512x512.py',
    '../_base_/adabn/seg_target_pool.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

adabn_pool = dict(
    type='Mapillary19Dataset',
    data_root=_base_.mapillary_root,
    data_prefix=dict(img_path='training/images', seg_map_path='training/v1.2/labels'),
    pipeline=_base_.adabn_pipeline)
custom_hooks = [
    dict(
        type='AdaBNHook',
        before='test',
        num_samples=3000,
        dataloader=dict(_base_.adabn_dataloader, dataset=adabn_pool))
]
