# DeepLabV3+ R50-D8, BN baseline trained on GTA5 (protocol of the GTA5->Cityscapes config), tested
# on Cityscapes, BDD100K and Mapillary in one run. Protocol (test only): RobustNet's
# domain-generalization test protocol, see configs/_base_/datasets/
# dg-test_cityscapes-bdd100k-mapillary.py (Cityscapes 2048x1024 and BDD100K 1280x720 whole
# images, Mapillary height 1536 + 1536x1536 centre crop; mIoU per dataset and their mean).
#   usage    python tools/test.py THIS_CONFIG work_dirs/<gta5-cityscapes run>/iter_40000.pth \
#                --metrics-out dg.json      ('cityscapes/mIoU', 'bdd100k/mIoU', 'mapillary/mIoU',
#                                            'mean/mIoU')
# The same lines turn any GTA5 / SYNTHIA config (configs/ibn, configs/pbn...) into its multi-target
# test.
_base_ = [
    './deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py',
    '../_base_/datasets/dg-test_cityscapes-bdd100k-mapillary.py'
]
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)

# The inherited Cityscapes dataset and IoUMetric are replaced (_delete_), the loader settings kept.
val_dataloader = dict(
    dataset=dict(
        _delete_=True, type='MultiTargetDataset', datasets={{_base_.dg_test_datasets}}))
test_dataloader = dict(
    dataset=dict(
        _delete_=True, type='MultiTargetDataset', datasets={{_base_.dg_test_datasets}}))
val_evaluator = dict(_delete_=True, type='MultiTargetIoUMetric', iou_metrics=['mIoU'])
test_evaluator = dict(_delete_=True, type='MultiTargetIoUMetric', iou_metrics=['mIoU'])
