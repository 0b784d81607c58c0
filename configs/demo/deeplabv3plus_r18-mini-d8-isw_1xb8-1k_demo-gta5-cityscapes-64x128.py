# Embedded demo, ISW (instance selective whitening; RobustNet, Choi et al., CVPR 2021): instance
# standardisation after the stem and stages 1-2 (--wt_layer 0 0 2 2 2 0 0), the whitening loss
# (weight 0.6) only on the covariance elements that vary most between a source frame and its
# photometric twin (3 k-means clusters, the most variant one selected, then frozen). Same data,
# schedule and test protocol as the BN baseline; training sees ordinary single frames, the twins
# only enter the statistics pass. See docs/whitening.md.
# Statistics phase scaled to the demo: RobustNet selects after 6 of ~52 epochs (cov_stat_epoch 5 of
# 40k iterations x 16 over 12,403 GTAV frames), i.e. after 11.6 % of training, from 500 frames (4 %
# of the source) x 10 trials. Here: after 116 of this config's 1k iterations (11.6 %; tools/demo.py
# scales after_iter with --iters the same way: 23 of `make demo`'s 200, 12 of --fast's 100), from
# 100 of the 800 source train frames (whole 64x128 frames, batches of 8) x 10 trials.
_base_ = ['./deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
model = dict(
    type='WhiteningEncoderDecoder',
    backbone=dict(
        type='WhiteningResNetV1c', whitening=dict(type='ISW'), after_stages=('stem', 0, 1)))
custom_hooks = [
    dict(
        type='ISWStatisticsHook',
        after_iter=116,
        num_images=100,
        trials=10,
        dataloader=dict(
            batch_size=8,
            num_workers=0,
            persistent_workers=False,
            sampler=dict(type='DefaultSampler', shuffle=True),
            dataset=dict(
                type='GTA5Dataset',
                data_root={{_base_.source_root}},
                ann_file='train.txt',
                data_prefix=dict(img_path='images', seg_map_path='labels'),
                pipeline=[
                    dict(type='LoadImageFromFile'),
                    dict(type='PackSegInputs'),
                    dict(type='PhotometricTwin')
                ])))
]
