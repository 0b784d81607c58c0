# DeepLabV3+ R50-D8 (BN throughout), Cityscapes -> ACDC continual test-time adaptation; this
# config: "Source", the model as it is, nothing adapted (the other deeplabv3plus_r50-d8-tta-*
# cityscapes-acdc configs inherit it and add the hook).
# Protocol:
#   model    mmseg's Cityscapes DeepLabV3+ R50-D8 (deeplabv3plus_r50-d8_4xb2-80k_cityscapes-
#            512x1024, 80.09 mIoU on Cityscapes val), used as it is:
#              wget https://download.openmmlab.com/mmsegmentation/v0.5/deeplabv3plus/deeplabv3plus_r50-d8_512x1024_80k_cityscapes/deeplabv3plus_r50-d8_512x1024_80k_cityscapes_20200606_114049-f9fb496d.pth  # noqa
#              python tools/test.py THIS_CONFIG <that .pth> --metrics-out acdc.json
#   test     ACDC fog -> night -> rain -> snow x 10 rounds, 400 frames per condition at 960x540,
#            batch 1, whole image, single scale, mIoU per condition per round, per round and over
#            all (configs/_base_/datasets/acdc_continual.py, docs/tta.md "Continual
#            Cityscapes->ACDC")
#   train    the checkpoint's recipe (mmseg's config: Cityscapes 512x1024 crops, 80k iterations,
#            SGD 0.01, 4 GPUs x 2); only needed to retrain the source model
_base_ = [
    'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024.py',
    '../_base_/datasets/acdc_continual.py',
]
default_scope = 'mmseg'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
# SyncBN as trained (reverted to BN on a single process)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_roots = dict(cityscapes='data/cityscapes/')  # the training side (mmseg's config)

test_dataloader = {{_base_.acdc_test_dataloader}}
test_evaluator = {{_base_.acdc_test_evaluator}}
