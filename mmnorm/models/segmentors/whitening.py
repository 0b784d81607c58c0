"""``WhiteningEncoderDecoder``: mmseg's ``EncoderDecoder`` that adds the backbone's whitening loss
to its loss dict as ``loss_whitening`` (and, for SAW, its classifiers' cross-entropy as
``loss_saw_classifier``).

The backbone is a whitening ResNet (``WhiteningResNetV1c`` ...): the segmentor runs mmseg's own
``loss`` while :func:`~mmnorm.models.backbones.whitening_resnet.standardized_outputs` records the
standardised maps, then adds ``backbone.whitening_loss(maps)``. Prediction is mmseg's unchanged.
"""
import torch
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

from ...validation import ArgumentError, ArgumentTypeError
from ..backbones.whitening_resnet import WhiteningResNetMixin, standardized_outputs
from ..whitening.semantic_whitening import SAW, saw_classifier_loss

__all__ = ['WhiteningEncoderDecoder']


@MODELS.register_module()
class WhiteningEncoderDecoder(EncoderDecoder):
    """``EncoderDecoder`` + ``loss_whitening`` (IW / IRW / ISW / SAW of a whitening ResNet
    backbone) + ``loss_saw_classifier`` (SAW)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.backbone, WhiteningResNetMixin):
            raise ArgumentTypeError(
                'WhiteningEncoderDecoder needs a whitening backbone (WhiteningResNet, '
                f"WhiteningResNetV1c, WhiteningResNetV1d), got {type(self.backbone).__name__}")
        for position, module in self.backbone.whitening_modules().items():
            if isinstance(module, SAW) and module.num_classes != self.decode_head.num_classes:
                raise ArgumentError(
                    f'SAW at backbone position {position!r} has num_classes='
                    f'{module.num_classes} but the decode head predicts '
                    f'{self.decode_head.num_classes}: set whitening=dict(type=\'SAW\', '
                    f'num_classes={self.decode_head.num_classes}) (its classifiers learn from '
                    'the same labels)')

    def loss(self, inputs, data_samples) -> dict:
        with standardized_outputs(self.backbone) as maps:
            losses = super().loss(inputs, data_samples)
        losses['loss_whitening'] = self.backbone.whitening_loss(maps)
        saw_maps = [(module, out) for module, out in maps if isinstance(module, SAW)]
        if saw_maps:  # SAW's channel-ranking classifiers learn from the labels
            labels = torch.cat([s.gt_sem_seg.data for s in data_samples]).long()
            losses['loss_saw_classifier'] = saw_classifier_loss(saw_maps, labels,
                                                                self.decode_head.ignore_index)
        return losses
