# DeepLabV3+ R50-D8 with RN in the backbone, SYNTHIA -> Cityscapes unsupervised domain adaptation.
# Protocol: the SYNTHIA BN baseline's source batch (2 crops per GPU, 4 GPUs, 40k) plus 2 unlabelled
# Cityscapes train crops per GPU paired by DomainPairDataset; target pipeline and test as the GTA5
# RN config (Cityscapes val, RN with the target running statistics, mIoU over 19/16/13 classes).
_base_ = [
    '../baseline/deeplabv3plus_r50-d8_4xb2-40k_synthia-cityscapes-512x512.py',
    '../_base_/uda/seg_target_cityscapes.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

model = dict(type='UDAEncoderDecoder', backbone=dict(norm_cfg=dict(type='RN', requires_grad=True)))
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='DomainPairDataset',
        source=_base_.train_dataloader.dataset,
        target=_base_.uda_target))
