# SegFormer-B5, Cityscapes -> ACDC continual test-time adaptation. TENT continual with mmnorm's
# safeguards (docs/tta.md): only pixels with entropy below 0.4 ln 19 enter the loss, and the model
# returns to the source state when the running (EMA 0.1) entropy of the predicted-class marginal
# falls below half its first value; tuned: the affine of every LayerNorm of the MixVisionTransformer
# and the decode head's BN; Adam lr 6e-5 / 8 = 7.5e-6 (the authors' TENT / CoTTA code for SegFormer:
# the training lr over the training batch of 8).
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
        optimizer=dict(type='Adam', lr=6e-5 / 8, betas=(0.9, 0.999)),
        reliable=0.4,
        reset_signal='marginal',
        reset_threshold=0.5,
        reset_momentum=0.1)
]
