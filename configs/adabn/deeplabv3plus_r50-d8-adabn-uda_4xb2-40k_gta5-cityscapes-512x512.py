# DeepLabV3+ R50-D8 with the AdaBN layer trained on domain-pure statistics, GTA5 -> Cityscapes (the multi-domain
# AdaBN of Li et al. §3.2, through the same source+target wrapper as RN).
# Protocol: as deeplabv3plus_r50-d8-rn_4xb2-40k_gta5-cityscapes-512x512.py (2 GTA5 + 2 Cityscapes-train crops per
# GPU), except the backbone norm: AdaBN normalises the source part with source statistics and the target part with
# target statistics (shared gamma, beta), and tests Cityscapes val with the target statistics (eval_domain='target').
_base_ = ['./deeplabv3plus_r50-d8-rn_4xb2-40k_gta5-cityscapes-512x512.py']
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

model = dict(backbone=dict(norm_cfg=dict(_delete_=True, type='AdaBN', eval_domain='target', requires_grad=True)))
