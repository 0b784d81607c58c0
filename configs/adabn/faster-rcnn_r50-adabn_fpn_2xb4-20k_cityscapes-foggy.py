# Faster R-CNN R50-FPN, AdaBN: the BN baseline's detector, with every backbone BN layer's statistics
# re-estimated on unlabelled Foggy Cityscapes train images before testing.
# Protocol:
#   train    identical to the BN baseline
#            (configs/baseline/faster-rcnn_r50_fpn_2xb4-20k_cityscapes-foggy.py); reuse its
#            checkpoint:  python tools/test.py THIS_CONFIG work_dirs/<bn run>/iter_20000.pth
#   adapt    AdaBNHook before test: the 2,975 Foggy Cityscapes *train* frames with the test's fog
#            density (beta 0.02), shorter side 600, batches of 4 per GPU, one pass, pooled
#            statistics (the frozen stem and stage 1 are recalibrated too)
#   test     Foggy Cityscapes val (500), beta 0.02, shorter side 600; AP50 over the 8 classes
_base_ = [
    '../baseline/faster-rcnn_r50_fpn_2xb4-20k_cityscapes-foggy.py',
    '../_base_/adabn/det_target_pool.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

adabn_pool = dict(
    type='FoggyCityscapesDataset',
    data_root=_base_.cityscapes_root,
    ann_file='annotations/instancesonly_filtered_gtFine_train.json',
    data_prefix=dict(img='leftImg8bit_foggy/train/'),
    betas={{_base_.foggy_betas}},
    test_mode=True,
    pipeline=_base_.adabn_pipeline)
custom_hooks = [
    dict(
        type='AdaBNHook',
        before='test',
        dataloader=dict(_base_.adabn_dataloader, dataset=adabn_pool))
]
