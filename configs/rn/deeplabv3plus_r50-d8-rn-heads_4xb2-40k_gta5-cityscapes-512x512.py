# DeepLabV3+ R50-D8 with RN in the backbone AND in the decode and auxiliary heads, GTA5 ->
# Cityscapes unsupervised domain adaptation. Everything else is the backbone-only RN config
# (configs/rn/deeplabv3plus_r50-d8-rn_4xb2-40k_gta5-cityscapes-512x512.py).
# Protocol:
#   train    every batch = 2 labelled GTA5 crops + 2 unlabelled Cityscapes train crops per GPU
#            (DomainPairDataset); UDAEncoderDecoder runs backbone, DepthwiseSeparableASPPHead and
#            the FCN auxiliary head on [source | target] with the split declared to every RN layer;
#            losses read the source rows only
#   norm     RN in every norm layer of backbone and heads. The ASPP image-pooling branch normalises
#            a 1x1 map: its RN layer estimates each domain's statistics from the 2 images per GPU of
#            that domain (2 values per channel, the minimum RN accepts) -- keep at least 2 images
#            per domain per GPU
#   test     Cityscapes val, RN with the target running statistics (baseline test pipeline and
#            metric)
_base_ = ['./deeplabv3plus_r50-d8-rn_4xb2-40k_gta5-cityscapes-512x512.py']

norm_cfg = dict(type='RN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
