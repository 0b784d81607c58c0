# DeepLabV3+ R50-D8, AdaBN: the BN baseline's model, with every BN layer's statistics re-estimated
# on unlabelled target images before testing (Li et al., arXiv 1603.04779: exact statistics pooled
# over the whole target set).
# Protocol:
#   train    identical to the BN baseline
#            (configs/baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py); a trained
#            BN checkpoint is reused as it is:
#              python tools/test.py THIS_CONFIG work_dirs/<bn run>/iter_40000.pth
#   adapt    AdaBNHook before test: all 2,975 Cityscapes *train* images (unlabelled, not the test
#            frames) at 1024x512, batches of 8 per GPU, one pass, pooled statistics over every image
#            (exact, not a moving average)
#   test     Cityscapes val (500) at 1024x512, whole image, single scale, mIoU over 19 classes
_base_ = [
    '../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py',
    '../_base_/adabn/seg_target_pool.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
