# DeepLabV3+ R50-D8, Cityscapes -> ACDC continual test-time adaptation. TENT continual (Wang et al.,
# ICLR 2021, arXiv 2006.10726), CoTTA's "TENT-continual" row: the affine of every BN layer
# (params='norm') minimises the mean pixel entropy, one step per image, never reset; SGD lr 0.01 / 8
# = 1.25e-3 (the CoTTA code's rule for an SGD-trained model: the training lr over the training batch
# of 8).
# Protocol: that of the source config it inherits (model checkpoint and its download,
#   ACDC fog -> night -> rain -> snow x 10 rounds at 960x540, batch 1, mIoU per condition
#   per round); the hook adapts on each test image before the test loop predicts it,
#   continually over the 16,000 steps (docs/tta.md "Continual Cityscapes->ACDC").
_base_ = ['./deeplabv3plus_r50-d8-tta-source_1xb1-10rounds_cityscapes-acdc-960x540.py']
custom_hooks = [
    dict(
        type='TestTimeAdaptHook',
        method='tent',
        steps=1,
        episodic=False,
        optimizer=dict(type='SGD', lr=0.01 / 8))
]
