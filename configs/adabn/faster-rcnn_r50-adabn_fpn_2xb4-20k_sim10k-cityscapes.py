# Faster R-CNN R50-FPN, AdaBN, Sim10k-trained BN detector tested on Cityscapes val (car).
# Protocol:
#   train    identical to the BN baseline
#            (configs/baseline/faster-rcnn_r50_fpn_2xb4-20k_sim10k-cityscapes.py); reuse its
#            checkpoint:  python tools/test.py THIS_CONFIG work_dirs/<bn run>/iter_20000.pth
#   adapt    AdaBNHook before test: the 2,975 Cityscapes *train* frames (unlabelled), shorter side
#            600, batches of 4 per GPU, one pass, pooled statistics
#   test     Cityscapes val (500), car, shorter side 600; car AP50
_base_ = [
    '../baseline/faster-rcnn_r50_fpn_2xb4-20k_sim10k-cityscapes.py',
    '../_base_/adabn/det_target_pool.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

adabn_pool = dict(
    type='CityscapesDataset',
    metainfo=dict(classes=('car', )),
    data_root=_base_.cityscapes_root,
    ann_file='annotations/instancesonly_filtered_gtFine_train.json',
    data_prefix=dict(img='leftImg8bit/train/'),
    test_mode=True,
    pipeline=_base_.adabn_pipeline)
custom_hooks = [
    dict(
        type='AdaBNHook',
        before='test',
        dataloader=dict(_base_.adabn_dataloader, dataset=adabn_pool))
]
