# DeepLabV3+ R50-D8, Cityscapes -> ACDC continual test-time adaptation. CoTTA (Wang et al., CVPR
# 2022, arXiv 2203.13591) as the authors' segmentation code: mean teacher (EMA 0.999) whose
# prediction averages scales 0.5-2.0 x flips where the source model's confidence is below 0.69, the
# student trained on the teacher's soft pseudo-labels, each weight restored to its source value with
# p = 0.01 per step; every parameter tuned (params='all'), norm layers on their source statistics;
# SGD lr 0.01 / 8 = 1.25e-3 (the CoTTA code's rule for an SGD-trained model: the training lr over
# the training batch of 8); the predictions are the teacher's.
# Protocol: that of the source config it inherits (model checkpoint and its download,
#   ACDC fog -> night -> rain -> snow x 10 rounds at 960x540, batch 1, mIoU per condition
#   per round); the hook adapts on each test image before the test loop predicts it,
#   continually over the 16,000 steps (docs/tta.md "Continual Cityscapes->ACDC").
_base_ = ['./deeplabv3plus_r50-d8-tta-source_1xb1-10rounds_cityscapes-acdc-960x540.py']
custom_hooks = [
    dict(
        type='TestTimeAdaptHook',
        method='cotta',
        optimizer=dict(type='SGD', lr=0.01 / 8),
        cotta_momentum=0.999,
        cotta_restore=0.01,
        cotta_threshold=0.69,
        cotta_scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),
        cotta_flip=True)
]
