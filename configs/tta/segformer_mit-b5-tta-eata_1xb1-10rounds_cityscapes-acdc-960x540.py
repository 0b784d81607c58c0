# SegFormer-B5, Cityscapes -> ACDC continual test-time adaptation. EATA (Niu et al., ICML 2022,
# arXiv 2204.02610): pixels with entropy below 0.4 ln 19, weighted 1 / exp(E - E0), and the Fisher
# anti-forgetting term (alpha 2000) estimated before the stream on 500 Cityscapes train frames (the
# source domain; labels unused); the redundancy filter is off (eata_redundancy=None: the mean
# predictions of street scenes all lie within cosine 0.05 of the running mean, so EATA's epsilon
# would drop nearly every image); tuned: the affine of every LayerNorm of the MixVisionTransformer
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
        method='eata',
        optimizer=dict(type='Adam', lr=6e-5 / 8, betas=(0.9, 0.999)),
        eata_margin=0.4,
        eata_redundancy=None,
        fisher_alpha=2000,
        fisher_loader=dict(
            batch_size=1,
            num_workers=2,
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dict(
                type='CityscapesDataset',
                data_root='data/cityscapes/',
                data_prefix=dict(
                    img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
                indices=500,
                pipeline=[
                    dict(type='LoadImageFromFile'),
                    dict(type='Resize', scale=(960, 540), keep_ratio=True),
                    dict(type='PackSegInputs')
                ])))
]
