# SegFormer-B5, Cityscapes -> ACDC continual test-time adaptation. "BN adapt": every BN layer
# normalises with the statistics of the current image; nothing is learned. SegFormer-B5: only the
# decode head's BN (LayerNorm has no running statistics to replace), CoTTA's "BN Adapt" row.
# Protocol: that of the source config it inherits (model checkpoint and its download,
#   ACDC fog -> night -> rain -> snow x 10 rounds at 960x540, batch 1, mIoU per condition
#   per round); the hook adapts on each test image before the test loop predicts it,
#   continually over the 16,000 steps (docs/tta.md "Continual Cityscapes->ACDC").
_base_ = ['./segformer_mit-b5-tta-source_1xb1-10rounds_cityscapes-acdc-960x540.py']
custom_hooks = [
    dict(type='TestTimeAdaptHook', method='bn')
]
