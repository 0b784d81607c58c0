# DeepLabV3+ R50-D8, TENT continual with the safeguards (docs/tta.md): only pixels whose entropy is
# below 0.4 ln 19 enter the loss (EATA's reliable-sample selection), and the model returns to the
# exact source state when the running (EMA 0.1) entropy of the predicted-class marginal falls below
# half its first value since the last reset.
# Protocol:
#   train    none: a trained BN baseline checkpoint
#            (configs/baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py) is used as
#            it is:
#              python tools/test.py THIS_CONFIG work_dirs/<bn run>/iter_40000.pth   (or
#              tools/dist_test.sh ... 4)
#   test     Cityscapes val (500) at 1024x512 in file order, batch 1 per GPU, whole image, single
#            scale, mIoU over 19 classes; the model adapts on each test batch before predicting it
#            (TestTimeAdaptHook, docs/tta.md)
_base_ = ['./deeplabv3plus_r50-d8-tta-tent_4xb2-40k_gta5-cityscapes-512x512.py']
custom_hooks = [
    dict(
        type='TestTimeAdaptHook',
        method='tent',
        steps=1,
        episodic=False,
        optimizer=dict(type='Adam', lr=1e-3, betas=(0.9, 0.999)),
        reliable=0.4,
        reset_signal='marginal',
        reset_threshold=0.5,
        reset_momentum=0.1)
]
