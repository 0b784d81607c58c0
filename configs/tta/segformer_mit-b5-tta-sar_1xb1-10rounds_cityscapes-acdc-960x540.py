# SegFormer-B5, Cityscapes -> ACDC continual test-time adaptation. SAR (Niu et al., ICLR 2023, arXiv
# 2302.12400) with its defaults: pixels with entropy below 0.4 ln 19 enter a sharpness-aware two-
# step update (rho 0.05, the filter applied again after the perturbation), model recovery when the
# EMA (0.9) of the second-step loss falls below 0.2; tuned: every norm layer's affine but the last
# stage (backbone.layers.3: SAR leaves the top blocks out); SGD lr 2.5e-4, momentum 0.9 (SAR's).
# Protocol: that of the source config it inherits (model checkpoint and its download,
#   ACDC fog -> night -> rain -> snow x 10 rounds at 960x540, batch 1, mIoU per condition
#   per round); the hook adapts on each test image before the test loop predicts it,
#   continually over the 16,000 steps (docs/tta.md "Continual Cityscapes->ACDC").
_base_ = ['./segformer_mit-b5-tta-source_1xb1-10rounds_cityscapes-acdc-960x540.py']
custom_hooks = [
    dict(
        type='TestTimeAdaptHook',
        method='sar',
        sar_rho=0.05,
        sar_margin=0.4,
        sar_reset=0.2,
        sar_momentum=0.9)
]
