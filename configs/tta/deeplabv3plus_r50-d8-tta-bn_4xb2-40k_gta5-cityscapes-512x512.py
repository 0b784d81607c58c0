# DeepLabV3+ R50-D8, BN + test-batch statistics ("BN adapt", Schneider et al. 2020 / TENT's
# baseline): every BN layer normalises with the statistics of the current test batch (one image: its
# pixels); nothing is learned, no buffer is written. A 1x1 map with one image (the ASPP image pool)
# keeps the source statistics.
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
custom_hooks = [dict(type='TestTimeAdaptHook', method='bn')]
