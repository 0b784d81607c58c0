# DeepLabV3+ R50 OS16 with SAW (semantic-aware whitening, SAN-SAW: channels grouped by the classes
# they matter for, ranked by a 1x1 classifier at each position; each group of 5 whitened, no margin
# (the authors' margin of 5 holds the loss at zero on standardised features), loss weight 0.1 per
# position, summed; the classifiers learn from the labels, weight 0.1),
# trained on SYNTHIA, tested on Cityscapes, BDD100K and Mapillary. Protocol as the BN config it
# inherits; instance standardisation and SAW after stages 1 and 2 (the authors' positions), logged
# as loss_whitening and loss_saw_classifier. SAW here follows instance standardisation, not the
# authors' SAN (not implemented). See docs/whitening.md.
_base_ = './deeplabv3plus_r50-d16-bn_4xb4-40k_synthia-cityscapes-bdd100k-mapillary-768x768.py'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
model = dict(
    type='WhiteningEncoderDecoder',
    backbone=dict(type='WhiteningResNetV1c', whitening=dict(type='SAW'), after_stages=(0, 1)))
