# Embedded demo, BN + test-batch statistics ("BN adapt"): the BN baseline's weights; at test time
# every BN layer normalises with the statistics of the test batch (8 target frames) instead of the
# source running statistics. Nothing is learned, no buffer is written (mmnorm.TestTimeAdapter,
# method='bn'; docs/tta.md).
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
custom_hooks = [dict(type='TestTimeAdaptHook', method='bn')]
