# DeepLabV3+ R50-D8, BN baseline trained on GTA5 (protocol of the GTA5->Cityscapes config), tested
# on Mapillary. Protocol (test only):
#   test     Mapillary Vistas v1.2 validation (2,000 frames), the 66 v1.2 classes mapped to the 19
#            Cityscapes classes (Mapillary19Dataset), at 1024x512 (keep ratio), whole image, single
#            scale, mIoU over 19 classes
#   usage    python tools/test.py THIS_CONFIG work_dirs/<gta5-cityscapes run>/iter_40000.pth
_base_ = './deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

mapillary_root = 'data/mapillary/'
data_roots = dict(mapillary=mapillary_root)  # --cfg-options data_roots.mapillary=PATH
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='Mapillary19Dataset',
        data_root=mapillary_root,
        # Raw v1.2 labels, mapped by the dataset's label_map; for the (faster) output of
        # tools/dataset_converters/mapillary.py add seg_map_suffix='_labelTrainIds.png'.
        data_prefix=dict(img_path='validation/images', seg_map_path='validation/v1.2/labels'),
        pipeline={{_base_.test_pipeline}}))
test_dataloader = val_dataloader
