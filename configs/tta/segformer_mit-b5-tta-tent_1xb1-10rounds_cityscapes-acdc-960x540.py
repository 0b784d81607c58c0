# SegFormer-B5, Cityscapes -> ACDC continual test-time adaptation. TENT continual (Wang et al., ICLR
# 2021, arXiv 2006.10726), CoTTA's "TENT-continual" row: the affine of every LayerNorm of the
# MixVisionTransformer and the decode head's BN (params='norm') minimises the mean pixel entropy,
# one step per image, never reset; Adam lr 6e-5 / 8 = 7.5e-6 (the authors' TENT / CoTTA code for
# SegFormer: the training lr over the training batch of 8).
# Protocol: that of the source config it inherits (model checkpoint and its download,
#   ACDC fog -> night -> rain -> snow x 10 rounds at 960x540, batch 1, mIoU per condition
#   per round); the hook adapts on each test image before the test loop predicts it,
#   continually over the 16,000 steps (docs/tta.md "Continual Cityscapes->ACDC").
_base_ = ['./segformer_mit-b5-tta-source_1xb1-10rounds_cityscapes-acdc-960x540.py']
custom_hooks = [
    dict(
        type='TestTimeAdaptHook',
        method='tent',
        steps=1,
        episodic=False,
        optimizer=dict(type='Adam', lr=6e-5 / 8, betas=(0.9, 0.999)))
]
