# DeepLabV3+ R50-D8 with the AdaBN layer trained on domain-pure statistics, GTA5 -> Cityscapes (the
# multi-domain AdaBN of Li et al. §3.2, through the source+target wrapper UDAEncoderDecoder).
# Protocol:
#   train    every batch = 2 labelled GTA5 crops (baseline pipeline) + 2 unlabelled Cityscapes train
#            crops per GPU, paired by DomainPairDataset
#            (configs/_base_/uda/seg_target_cityscapes.py); the wrapper declares the [source |
#            target] split
#   norm     AdaBN in the backbone: the source part is normalised with source statistics, the target
#            part with target statistics (shared gamma, beta); heads keep the baseline's (Sync)BN
#   test     Cityscapes val with the target statistics (eval_domain='target'), baseline test
#            pipeline and metric
_base_ = [
    '../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py',
    '../_base_/uda/seg_target_cityscapes.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

model = dict(
    type='UDAEncoderDecoder',
    backbone=dict(norm_cfg=dict(type='AdaBN', eval_domain='target', requires_grad=True)))
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='DomainPairDataset',
        source=_base_.train_dataloader.dataset,
        target=_base_.uda_target))
