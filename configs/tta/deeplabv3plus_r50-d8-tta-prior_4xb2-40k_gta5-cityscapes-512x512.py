# DeepLabV3+ R50-D8, BN + prior (Schneider et al., arXiv 2006.16971): every BN layer blends its
# source statistics, prior strength N = 16 samples, with those of the test batch (n images): weights
# N/(N+n) and n/(N+n).
# Protocol:
#   train    none: a trained BN baseline checkpoint
#            (configs/baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py) is used as
#            it is:
#              python tools/test.py THIS_CONFIG work_dirs/<bn run>/iter_40000.pth   (or
#              tools/dist_test.sh ... 4)
#   test     Cityscapes val (500) at 1024x512 in file order, batch 1 per GPU, whole image, single
#            scale, mIoU over 19 classes; the model adapts on each test batch before predicting it
#            (TestTimeAdaptHook, docs/tta.md)
_base_ = ['../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py']
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
custom_hooks = [dict(type='TestTimeAdaptHook', method='prior', prior=16)]
