# Embedded demo, BN + prior (Schneider et al. 2020): the BN baseline's weights; at test time every
# BN layer blends the source statistics (prior strength N = 16 samples) with those of the test batch
# (n = 8 frames): mu = N/(N+n) mu_source + n/(N+n) mu_batch, likewise the variance (method='prior';
# docs/tta.md).
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
custom_hooks = [dict(type='TestTimeAdaptHook', method='prior', prior=16)]
