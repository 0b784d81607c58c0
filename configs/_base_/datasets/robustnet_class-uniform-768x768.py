# What RobustNet's three training sets share (shachoi/RobustNet): the class-uniform loader, 4 images
# per GPU, and the pipeline of ISW's statistics pass (whole frames, each with its photometric twin).
# The dataset bases robustnet_{gta5,synthia,cityscapes}-768x768.py inherit it: each names its source
# frames and its training pipeline and fills train_dataloader.dataset.dataset.
isw_statistics_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackSegInputs'),
    dict(type='PhotometricTwin'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='ClassUniformDataset', class_uniform_pct=0.5, tile_size=1024))
