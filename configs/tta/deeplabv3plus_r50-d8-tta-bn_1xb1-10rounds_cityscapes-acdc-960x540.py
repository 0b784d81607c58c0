# DeepLabV3+ R50-D8, Cityscapes -> ACDC continual test-time adaptation. "BN adapt": every BN layer
# normalises with the statistics of the current image; nothing is learned. DeepLabV3+ R50-D8: every
# BN layer.
# Protocol: that of the source config it inherits (model checkpoint and its download,
#   ACDC fog -> night -> rain -> snow x 10 rounds at 960x540, batch 1, mIoU per condition
#   per round); the hook adapts on each test image before the test loop predicts it,
#   continually over the 16,000 steps (docs/tta.md "Continual Cityscapes->ACDC").
_base_ = ['./deeplabv3plus_r50-d8-tta-source_1xb1-10rounds_cityscapes-acdc-960x540.py']
custom_hooks = [
    dict(type='TestTimeAdaptHook', method='bn')
]
