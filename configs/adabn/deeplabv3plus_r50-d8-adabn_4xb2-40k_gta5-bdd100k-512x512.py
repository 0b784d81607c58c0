# DeepLabV3+ R50-D8, AdaBN, GTA5-trained BN model tested on BDD100K val.
# Protocol:
#   train    identical to the BN baseline (GTA5 -> Cityscapes config); reuse its checkpoint:
#              python tools/test.py THIS_CONFIG work_dirs/<bn run>/iter_40000.pth
#   adapt    AdaBNHook before test: the 7,000 BDD100K 10k-images *train* frames (unlabelled) at
#            1024x512 (keep ratio), batches of 8 per GPU, one pass, pooled statistics over every
#            image
#   test     BDD100K val (1,000) at 1024x512 (keep ratio), whole image, single scale, mIoU over 19
#            classes
_base_ = [
    '../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-bdd100k-512x512.py',
    '../_base_/adabn/seg_target_pool.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

adabn_pool = dict(
    type='BDD100KDataset',
    data_root=_base_.bdd100k_root,
    data_prefix=dict(img_path='images/10k/train', seg_map_path='labels/sem_seg/masks/train'),
    pipeline=_base_.adabn_pipeline)
custom_hooks = [
    dict(
        type='AdaBNHook',
        before='test',
        dataloader=dict(_base_.adabn_dataloader, dataset=adabn_pool))
]
