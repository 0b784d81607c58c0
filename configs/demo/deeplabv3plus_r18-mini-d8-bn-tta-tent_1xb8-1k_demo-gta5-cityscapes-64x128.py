# Embedded demo, BN + TENT (episodic; Wang et al., ICLR 2021): the BN baseline's weights; for every
# test batch, test-batch statistics and 3 Adam steps (lr 1e-3) on the mean pixel entropy of the
# decode head's softmax, over the BN affine parameters only, then the batch is predicted with the
# updated affine and the model goes back to the source state (episodic: every batch starts from the
# source model; docs/tta.md).
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
custom_hooks = [
    dict(
        type='TestTimeAdaptHook',
        method='tent',
        episodic=True,
        steps=3,
        predict_after_update=True,
        optimizer=dict(type='Adam', lr=1e-3, betas=(0.9, 0.999)))
]
