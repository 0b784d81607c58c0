# Embedded demo, RN (unsupervised domain adaptation): every batch holds 8 labelled source frames and
# 8 unlabelled target-pool frames; the backbone (RN in every norm layer) runs on [source | target],
# the loss on the source only.
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
model = dict(type='UDAEncoderDecoder', backbone=dict(norm_cfg=dict(type='RN', requires_grad=True)))
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='DomainPairDataset',
        source={{_base_.source_train}},
        target={{_base_.target_train}}))
