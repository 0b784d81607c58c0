# DeepLabV3+ R50-D8 RN, GTA5 -> Mapillary Vistas: the GTA5 -> Cityscapes RN protocol with Mapillary
# as the target domain (unlabelled Mapillary training images in every batch), tested on Mapillary
# v1.2 validation (19 Cityscapes classes) with the protocol of
# configs/baseline/*_gta5-mapillary-512x512.py.
_base_ = './deeplabv3plus_r50-d8-rn_4xb2-40k_gta5-cityscapes-512x512.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
mapillary_root = 'data/mapillary/'
data_roots = dict(mapillary=mapillary_root)  # --cfg-options data_roots.mapillary=PATH
train_dataloader = dict(
    dataset=dict(
        target=dict(
            _delete_=True,
            type='Mapillary19Dataset',
            data_root=mapillary_root,
            data_prefix=dict(img_path='training/images', seg_map_path='training/v1.2/labels'),
            pipeline=_base_.uda_target_pipeline)))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='Mapillary19Dataset',
        data_root=mapillary_root,
        data_prefix=dict(img_path='validation/images', seg_map_path='validation/v1.2/labels'),
        pipeline={{_base_.test_pipeline}}))
test_dataloader = val_dataloader
