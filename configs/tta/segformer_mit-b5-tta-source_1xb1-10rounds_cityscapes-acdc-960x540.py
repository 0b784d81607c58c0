# SegFormer-B5 (MixVisionTransformer: LayerNorm everywhere, BN only in the decode head's fusion
# conv), Cityscapes -> ACDC continual test-time adaptation; this config: "Source", the model as it
# is, nothing adapted (the other segformer_mit-b5-tta-* configs inherit it and add the hook).
# Protocol:
#   model    mmseg's Cityscapes SegFormer-B5 (segformer_mit-b5_8xb1-160k_cityscapes-1024x1024,
#            82.25 mIoU on Cityscapes val), used as it is:
#              wget https://download.openmmlab.com/mmsegmentation/v0.5/segformer/segformer_mit-b5_8x1_1024x1024_160k_cityscapes/segformer_mit-b5_8x1_1024x1024_160k_cityscapes_20211206_072934-87a052ec.pth  # noqa
#              python tools/test.py THIS_CONFIG <that .pth> --metrics-out acdc.json
#            (CoTTA's published figures used NVlabs' own SegFormer-B5 Cityscapes checkpoint, not
#            this one: compare the rows of one run, not these with the paper's)
#   test     ACDC fog -> night -> rain -> snow x 10 rounds, 400 frames per condition at 960x540,
#            batch 1, whole image (slide windows of 1024 cover a 960x540 frame in one), single
#            scale, mIoU per condition per round, per round and over all
#            (configs/_base_/datasets/acdc_continual.py, docs/tta.md "Continual Cityscapes->ACDC")
#   train    the checkpoint's recipe (mmseg's config: Cityscapes 1024x1024 crops, 160k iterations,
#            AdamW 6e-5, 8 GPUs x 1); only needed to retrain the source model
_base_ = [
    'mmseg::segformer/segformer_mit-b5_8xb1-160k_cityscapes-1024x1024.py',
    '../_base_/datasets/acdc_continual.py',
]
default_scope = 'mmseg'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
# the decode head's BN (SyncBN as trained; reverted to BN on a single process)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_roots = dict(cityscapes='data/cityscapes/')  # the training side (mmseg's config)

test_dataloader = {{_base_.acdc_test_dataloader}}
test_evaluator = {{_base_.acdc_test_evaluator}}
