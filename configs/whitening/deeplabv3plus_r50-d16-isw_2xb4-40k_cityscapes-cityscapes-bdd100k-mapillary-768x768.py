# DeepLabV3+ R50 OS16 with ISW (instance selective whitening: only the covariance elements most
# sensitive to a photometric change, 3 k-means clusters, loss weight 0.6), trained on Cityscapes,
# tested on Cityscapes, BDD100K and Mapillary. Protocol as the BN config it inherits; instance
# standardisation and the whitening loss after the stem and stages 1 and 2 (RobustNet --wt_layer 0 0
# 2 2 2 0 0), logged as loss_whitening. See docs/whitening.md.
_base_ = './deeplabv3plus_r50-d16-bn_2xb4-40k_cityscapes-cityscapes-bdd100k-mapillary-768x768.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    type='WhiteningEncoderDecoder',
    backbone=dict(
        type='WhiteningResNetV1c', whitening=dict(type='ISW'), after_stages=('stem', 0, 1)))
# The statistics pass that selects the whitened elements: after isw_after_iter iterations (6 source
# epochs, the authors' cov_stat_epoch 5), 10 trials over whole source frames and their photometric
# twins, then frozen.
custom_hooks = [
    dict(
        type='ISWStatisticsHook',
        after_iter={{_base_.isw_after_iter}},
        num_images=500,
        trials=10,
        dataloader=dict(
            batch_size=1,
            num_workers=2,
            persistent_workers=False,
            sampler=dict(type='DefaultSampler', shuffle=True),
            dataset={{_base_.isw_statistics_dataset}}))
]
