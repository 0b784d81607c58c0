# DeepLabV3+ R50-D8 RN, GTA5 -> BDD100K: the GTA5 -> Cityscapes RN protocol with BDD100K as the
# target domain (unlabelled BDD100K 10k-images train frames in every batch), tested on BDD100K val
# (1,000) with the protocol of configs/baseline/*_gta5-bdd100k-512x512.py. RN tests with the running
# statistics of the domain it adapted to.
_base_ = './deeplabv3plus_r50-d8-rn_4xb2-40k_gta5-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
bdd100k_root = 'data/bdd100k/'
data_roots = dict(bdd100k=bdd100k_root)  # --cfg-options data_roots.bdd100k=PATH
bdd100k = dict(type='BDD100KDataset', data_root=bdd100k_root)
bdd100k_train = dict(img_path='images/10k/train', seg_map_path='labels/sem_seg/masks/train')
bdd100k_val = dict(img_path='images/10k/val', seg_map_path='labels/sem_seg/masks/val')
train_dataloader = dict(
    dataset=dict(
        target=dict(
            bdd100k, _delete_=True, data_prefix=bdd100k_train,
            pipeline=_base_.uda_target_pipeline)))
val_dataloader = dict(
    dataset=dict(
        bdd100k, _delete_=True, data_prefix=bdd100k_val, pipeline={{_base_.test_pipeline}}))
test_dataloader = val_dataloader
