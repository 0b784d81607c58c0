# Embedded demo, a small SegFormer (Xie et al., NeurIPS 2021): mmseg's SegFormer-B0 model reduced
# to 1 block per stage, widths 16-32-64-128 (embed_dims 16, heads 1-2-4-8), spatial reduction
# 8-4-2-1, and mmseg's SegformerHead (64 channels, its fusion conv the model's only BN): 0.46 M
# parameters (the DeepLabV3+ demo model: ~0.3 M). The backbone normalises with LayerNorm only: the
# second model of the continual test-time adaptation stream (docs/tta.md). Same data, seeds,
# schedule length and test protocol as the BN demo config; the optimizer is the transformer's usual
# one (AdamW, weight decay 0.01, none on norms), lr 1e-3 with poly decay (no pretraining).
_base_ = [
    'mmseg::_base_/models/segformer_mit-b0.py',
    '../_base_/datasets/demo_synthetic_gta5-cityscapes.py',
    '../_base_/schedules/demo_1k.py',
    '../_base_/demo_runtime.py',
]
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=(64, 128)),
    backbone=dict(embed_dims=16, num_layers=[1, 1, 1, 1], num_heads=[1, 2, 4, 8]),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=64, norm_cfg=norm_cfg))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.0))))
