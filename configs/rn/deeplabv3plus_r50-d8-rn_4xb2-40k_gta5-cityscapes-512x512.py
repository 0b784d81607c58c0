# DeepLabV3+ R50-D8 with RN (Reciprocal Normalization) in the backbone, GTA5 -> Cityscapes
# unsupervised domain adaptation. Everything else is the BN baseline
# (configs/baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py).
# Protocol:
#   train    every batch = 2 labelled GTA5 crops (baseline pipeline) + 2 unlabelled Cityscapes train
#            crops per GPU, paired by DomainPairDataset (a random target frame per source frame);
#            UDAEncoderDecoder runs the backbone on [source | target] with the split declared to RN,
#            the heads on the source part only
#   target   Cityscapes train images (2,975, labels never read): resize to 1024x512 x[0.5, 2.0],
#            512x512 crop, flip
#   norm     RN in every backbone norm layer (stem, stages, downsample); gates in [0.5, 1], G = C //
#            512 for C >= 512; ImageNet BN weights load into both domains' statistics; heads keep
#            the baseline's (Sync)BN
#   test     Cityscapes val, RN with the target running statistics (baseline test pipeline and
#            metric)
_base_ = [
    '../baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py',
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
