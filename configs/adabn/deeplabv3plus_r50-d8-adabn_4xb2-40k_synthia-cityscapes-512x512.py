# DeepLabV3+ R50-D8, AdaBN, SYNTHIA-trained BN model tested on Cityscapes val.
# Protocol:
#   train    identical to the BN baseline (configs/baseline/..._synthia-cityscapes-512x512.py);
#            reuse its checkpoint:
#              python tools/test.py THIS_CONFIG work_dirs/<bn run>/iter_40000.pth
#   adapt    AdaBNHook before test: all 2,975 Cityscapes *train* images (unlabelled) at 1024x512,
#            batches of 8 per GPU, one pass, pooled statistics over every image
#   test     Cityscapes val (500) at 1024x512, whole image, single scale; mIoU over 19 classes,
#            mIoU16, mIoU13
_base_ = [
    '../baseline/deeplabv3plus_r50-d8_4xb2-40k_synthia-cityscapes-512x512.py',
    '../_base_/adabn/seg_target_pool.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
