# Embedded demo, a small SegFormer (Xie et al., NeurIPS 2021): mmseg's MixVisionTransformer reduced
# to 1 block per stage, widths 16-32-64-128 (embed_dims 16, heads 1-2-4-8), spatial reduction
# 8-4-2-1, and mmseg's SegformerHead (64 channels, its fusion conv the model's only BN): 0.46 M
# parameters (the DeepLabV3+ demo model: ~0.3 M). The backbone normalises with LayerNorm only: the
# second model of the continual test-time adaptation stream (docs/tta.md). Same data, seeds,
# schedule length and test protocol as the BN demo config; the optimizer is the transformer's usual
# one (AdamW, weight decay 0.01, none on norms), lr 1e-3 with poly decay (no pretraining).
_base_ = [
    '../_base_/datasets/demo_synthetic_gta5-cityscapes.py',
    '../_base_/schedules/demo_1k.py',
    '../_base_/demo_runtime.py',
]
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(64, 128)),
    pretrained=None,
    backbone=dict(
        type='MixVisionTransformer',
        in_channels=3,
        embed_dims=16,
        num_stages=4,
        num_layers=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 8],
        patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
        mlp_ratio=4,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1),
    decode_head=dict(
        type='SegformerHead',
        in_channels=[16, 32, 64, 128],
        in_index=[0, 1, 2, 3],
        channels=64,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.0))))
