# DeepLabV3+ R50-D8, TENT continual (Wang et al., ICLR 2021, arXiv 2006.10726): test-batch
# statistics and one Adam step (lr 1e-3, TENT's default) per test batch on the mean pixel entropy of
# the decode head's softmax, over the affine parameters of every BN layer (backbone and heads); the
# adaptation carries over from batch to batch. Without safeguards (see the -tent-safe config): a
# long stream can collapse.
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
custom_hooks = [
    dict(
        type='TestTimeAdaptHook',
        method='tent',
        steps=1,
        episodic=False,
        optimizer=dict(type='Adam', lr=1e-3, betas=(0.9, 0.999)))
]
