# DeepLabV3+ R50-D8, BN baseline trained on GTA5 (protocol of the GTA5->Cityscapes config), tested
# on BDD100K val. Protocol (test only):
#   test     BDD100K 10k-images semantic segmentation val (1,000 frames, 1280x720, labels already 19
#            train IDs) at 1024x512 (keep ratio), whole image, single scale, mIoU over 19 classes
#   usage    python tools/test.py THIS_CONFIG work_dirs/<gta5-cityscapes run>/iter_40000.pth
_base_ = './deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

bdd100k_root = 'data/bdd100k/'
data_roots = dict(bdd100k=bdd100k_root)  # --cfg-options data_roots.bdd100k=PATH
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='BDD100KDataset',
        data_root=bdd100k_root,
        data_prefix=dict(img_path='images/10k/val', seg_map_path='labels/sem_seg/masks/val'),
        pipeline={{_base_.test_pipeline}}))
test_dataloader = val_dataloader
