"""UDA wrappers for the whole model: mmseg decode / auxiliary heads and cascades, mmdet dense heads
of single-stage detectors inside the [source | target] split; source-only heads refuse domain-aware
layers."""
import copy

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.registry import DefaultScope
from test_uda import det_data  # noqa: F401  (a pytest fixture)
from test_uda import build, det_datasets, det_model_cfg, losses_of, seg_datasets, seg_model_cfg

import mmnorm  # noqa: F401
from mmnorm.models.norms import DomainAwareMixin

RN = dict(type='RN', requires_grad=True)
ADABN = dict(type='AdaBN', eval_domain='target', requires_grad=True)


def split_calls(model, batch):
    """{layer name: [(declared split, batch size), ...]} of every domain-aware layer during one loss
    call."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, DomainAwareMixin)}
    seen = {name: [] for name in layers}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen[name].append(
            (mod.domain_split, args[0].shape[0]))) for name, m in layers.items()
    ]
    try:
        losses = losses_of(model, batch)
    finally:
        for h in handles:
            h.remove()
    return seen, losses


def seg_cfg(norm, uda=True):
    cfg = seg_model_cfg()
    cfg.type = 'UDAEncoderDecoder' if uda else 'EncoderDecoder'
    for part in (cfg.backbone, cfg.decode_head):
        part.norm_cfg = dict(norm)
    cfg.decode_head.dropout_ratio = 0.0
    cfg.auxiliary_head = dict(
        type='FCNHead',
        in_channels=64,
        in_index=2,
        channels=16,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.0,
        num_classes=19,
        norm_cfg=dict(norm),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4))
    return cfg


def test_seg_decode_and_auxiliary_heads_see_the_split(tiny_demo_data):
    model, _, batch = build('mmseg', seg_cfg(RN), *seg_datasets(tiny_demo_data, 'target_labelled'))
    seen, losses = split_calls(model, batch)
    heads = [n for n in seen if n.startswith(('decode_head.', 'auxiliary_head.'))]
    assert any(n.startswith('decode_head.image_pool') for n in heads)  # the 1x1 pooling branch too
    assert len(heads) >= 8 and any(n.startswith('auxiliary_head.') for n in heads)
    assert seen == {name: [((2, 2), 4)] for name in seen}
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    model.zero_grad()
    sum(v for k, v in losses.items() if k.startswith(('decode.loss', 'aux.loss'))).backward()
    head_rn = model.decode_head.bottleneck.bn
    assert head_rn.weight.grad is not None and head_rn.weight.grad.abs().sum() > 0
    assert int(head_rn.num_batches_tracked) == 1
    assert not torch.equal(head_rn.running_mean_target, head_rn.running_mean_source)


def batch_sizes(model, batch, kind):
    """{layer name: [batch size seen, ...]} of every ``kind`` layer during one loss call."""
    layers = {name: m for name, m in model.named_modules() if type(m) is kind}
    seen = {name: [] for name in layers}
    handles = [
        m.register_forward_pre_hook(
            lambda mod, args, name=name: seen[name].append(args[0].shape[0]))
        for name, m in layers.items()
    ]
    try:
        losses_of(model, batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_seg_bn_head_runs_on_the_source_part_rn_head_on_both(tiny_demo_data):
    """RN backbone, plain-BN decode head, RN auxiliary head: the BN head sees the 2 source samples
    only (a joint run would normalise [source | target] mixtures), the RN head the 4 samples with
    the declared split."""
    cfg = seg_cfg(RN)
    cfg.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    model, _, batch = build('mmseg', cfg, *seg_datasets(tiny_demo_data, 'target_labelled'))
    from mmnorm.models.uda import head_runs_jointly, holds_domain_aware_norm
    assert not holds_domain_aware_norm(model.decode_head) and holds_domain_aware_norm(
        model.auxiliary_head)
    assert not head_runs_jointly(model.decode_head) and head_runs_jointly(model.auxiliary_head)
    assert set(model.source_only_heads()) == {'decode_head'}
    bn_sizes = batch_sizes(model, batch, torch.nn.BatchNorm2d)
    head_bns = [n for n in bn_sizes if n.startswith('decode_head.')]
    assert len(head_bns) >= 4 and any(n.startswith('decode_head.image_pool') for n in head_bns)
    assert {n: bn_sizes[n] for n in head_bns} == {n: [2] for n in head_bns}
    seen, losses = split_calls(model, batch)
    assert not any(n.startswith('decode_head.') for n in seen)
    aux = [n for n in seen if n.startswith('auxiliary_head.')]
    assert aux and all(seen[n] == [((2, 2), 4)] for n in aux)
    assert all(calls == [((2, 2), 4)] for calls in seen.values())  # the backbone too
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    assert all(torch.isfinite(v) for k, v in losses.items() if 'loss' in k)


def test_seg_joint_heads_equal_the_toolbox_loss_on_the_source_part(tiny_demo_data):
    """AdaBN everywhere normalises each domain part with its own statistics, so the UDA model's
    losses on [source | target] are the plain EncoderDecoder's losses on the source images alone
    (same weights)."""
    uda, _, batch = build('mmseg', seg_cfg(ADABN), *seg_datasets(tiny_demo_data, 'target_labelled'))
    with DefaultScope.overwrite_default_scope('mmseg'):
        from mmseg.registry import MODELS
        plain = MODELS.build(seg_cfg(ADABN, uda=False))
    plain.load_state_dict(uda.state_dict())
    joint = losses_of(uda, batch)
    plain.train()
    data = plain.data_preprocessor(copy.deepcopy(batch['source']), True)
    reference = plain(**data, mode='loss')
    assert joint.keys() == reference.keys() and {'decode.loss_ce', 'aux.loss_ce'} <= set(joint)
    for key in reference:
        torch.testing.assert_close(joint[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    # the target statistics of the head layers moved, the plain model's did not
    assert not torch.equal(uda.decode_head.bottleneck.bn.target.running_mean,
                           plain.decode_head.bottleneck.bn.target.running_mean)


def cascade_cfg(point_norm=None):
    cfg = seg_model_cfg()
    cfg.type = 'UDACascadeEncoderDecoder'
    if point_norm is None:  # OCRNet: FCN head + OCR head
        cfg.num_stages = 2
        cfg.decode_head = [
            dict(
                type='FCNHead',
                in_channels=128,
                in_index=3,
                channels=32,
                num_convs=1,
                concat_input=False,
                dropout_ratio=0.0,
                num_classes=19,
                norm_cfg=dict(RN),
                align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)),
            dict(
                type='OCRHead',
                in_channels=128,
                in_index=3,
                channels=32,
                ocr_channels=16,
                dropout_ratio=0.0,
                num_classes=19,
                norm_cfg=dict(RN),
                align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0))
        ]
        return cfg
    cfg.num_stages = 2  # PointRend: FPN head + point head
    cfg.neck = dict(type='FPN', in_channels=[16, 32, 64, 128], out_channels=16, num_outs=4)
    cfg.decode_head = [
        dict(
            type='FPNHead',
            in_channels=[16] * 4,
            in_index=[0, 1, 2, 3],
            feature_strides=[4, 8, 8, 8],
            channels=16,
            dropout_ratio=0.0,
            num_classes=19,
            norm_cfg=dict(RN),
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
        dict(
            type='PointHead',
            in_channels=[16],
            in_index=[0],
            channels=16,
            num_fcs=2,
            coarse_pred_each_layer=True,
            dropout_ratio=-1,
            num_classes=19,
            align_corners=False,
            norm_cfg=point_norm,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0))
    ]
    cfg.train_cfg = dict(num_points=64, oversample_ratio=3, importance_sample_ratio=0.75)
    cfg.test_cfg = dict(
        mode='whole', subdivision_steps=2, subdivision_num_points=256, scale_factor=2)
    return cfg


def test_seg_cascade_stages_see_the_split(tiny_demo_data):
    model, _, batch = build('mmseg', cascade_cfg(), *seg_datasets(tiny_demo_data,
                                                                  'target_labelled'))
    seen, losses = split_calls(model, batch)
    assert any(n.startswith('decode_head.1.')
               for n in seen) and any(n.startswith('decode_head.0.') for n in seen)
    assert all(calls and set(calls) == {((2, 2), 4)} for calls in seen.values())
    assert {'decode_0.loss_ce', 'decode_1.loss_ce'} <= set(losses)


def test_seg_point_head_is_source_only(tiny_demo_data):
    """PointRend's point head samples points against the labels: it runs on the source part (after
    the joint FPN head), and an RN inside it is refused when the model is built."""
    model, _, batch = build('mmseg', cascade_cfg(point_norm=dict(type='BN1d')),
                            *seg_datasets(tiny_demo_data, 'target_labelled'))
    seen, losses = split_calls(model, batch)
    assert any(n.startswith('decode_head.0.') for n in seen)
    assert all(calls == [((2, 2), 4)] for calls in seen.values())
    assert {'decode_0.loss_ce', 'decode_1.pointloss_ce'} <= set(losses)
    assert torch.isfinite(losses['decode_1.pointloss_ce'])
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'), pytest.raises(
            ValueError,
            match=r'UDACascadeEncoderDecoder: decode_head\.1 \(PointHead\) runs on the source part '
            r'of the batch only.*RN layers.*decode_head\.1\.fcs\.0\.bn.*Use BN or GN there'):
        MODELS.build(cascade_cfg(point_norm=dict(RN)))


def retina_cfg(norm, kind='UDARetinaNet'):
    cfg = det_model_cfg(norm['type'])
    cfg.backbone.norm_cfg = dict(norm)
    cfg.pop('rpn_head'), cfg.pop('roi_head')
    head = dict(
        type='RetinaHead',
        num_classes=2,
        in_channels=32,
        stacked_convs=2,
        feat_channels=32,
        norm_cfg=dict(norm),
        anchor_generator=dict(
            type='AnchorGenerator',
            octave_base_scale=4,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0))
    if kind.endswith('FCOS'):
        head = dict(
            type='FCOSHead',
            num_classes=2,
            in_channels=32,
            stacked_convs=2,
            feat_channels=32,
            strides=[8, 16, 32, 64, 128],
            norm_cfg=dict(norm))
    cfg.update(
        type=kind,
        bbox_head=head,
        train_cfg=dict(
            assigner=dict(
                type='MaxIoUAssigner',
                pos_iou_thr=0.5,
                neg_iou_thr=0.4,
                min_pos_iou=0,
                ignore_iof_thr=-1),
            sampler=dict(type='PseudoSampler'),
            allowed_border=-1,
            pos_weight=-1,
            debug=False),
        test_cfg=dict(
            nms_pre=100,
            min_bbox_size=0,
            score_thr=0.05,
            nms=dict(type='nms', iou_threshold=0.5),
            max_per_img=20))
    cfg.neck.update(start_level=1, add_extra_convs='on_input')
    return cfg


@pytest.mark.parametrize('kind', ['UDARetinaNet', 'UDAFCOS'])
def test_det_dense_head_sees_the_split(kind,
                                       det_data):  # noqa: F811 (pytest fixture imported above)
    model, _, batch = build('mmdet', retina_cfg(RN, kind),
                            *det_datasets(det_data, target_labelled=True))
    seen, losses = split_calls(model, batch)
    head = [n for n in seen if n.startswith('bbox_head.')]
    assert len(head) == 4  # 2 cls + 2 reg stacked convs
    for name, calls in seen.items():  # head layers are shared across the 5 FPN levels
        assert calls == [((2, 2), 4)] * (5 if name in head else 1), name
    assert 'loss_cls' in losses and all(
        torch.isfinite(torch.as_tensor(v)).all() for v in losses.values())


def test_det_bn_dense_head_runs_on_the_source_part(det_data):  # noqa: F811
    """RN backbone, RetinaHead with plain BN: the head's BN sees the 2 source samples at every FPN
    level, the backbone's RN the 4 samples with the split; the loss is the toolbox's on the source
    features."""
    cfg = retina_cfg(RN)
    cfg.bbox_head.norm_cfg = dict(type='BN', requires_grad=True)
    model, _, batch = build('mmdet', cfg, *det_datasets(det_data, target_labelled=True))
    from mmnorm.models.uda import dense_head_runs_jointly
    assert not dense_head_runs_jointly(model.bbox_head) and 'bbox_head' in model.source_only_heads()
    bn_sizes = batch_sizes(model, batch, torch.nn.BatchNorm2d)
    head_bns = [n for n in bn_sizes if n.startswith('bbox_head.')]
    assert len(head_bns) == 4 and all(bn_sizes[n] == [2] * 5 for n in head_bns)
    seen, losses = split_calls(model, batch)
    assert seen and all(
        n.startswith('backbone.') and calls == [((2, 2), 4)] for n, calls in seen.items())
    assert 'loss_cls' in losses and all(
        torch.isfinite(torch.as_tensor(v)).all() for v in losses.values())


def test_det_dense_head_equals_the_toolbox_loss_on_the_source_part(det_data):  # noqa: F811
    uda, _, batch = build('mmdet', retina_cfg(ADABN), *det_datasets(det_data, target_labelled=True))
    from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        plain = MODELS.build(retina_cfg(ADABN, 'RetinaNet'))
    plain.load_state_dict(uda.state_dict())
    joint = losses_of(uda, batch)
    plain.train()
    reference = plain(**plain.data_preprocessor(copy.deepcopy(batch['source']), True), mode='loss')
    assert joint.keys() == reference.keys()
    for key in reference:
        value = torch.stack(reference[key]).sum() if isinstance(reference[key],
                                                                list) else reference[key]
        torch.testing.assert_close(joint[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_det_roi_head_with_rn_is_refused():
    cfg = det_model_cfg('RN')
    cfg.roi_head.bbox_head = ConfigDict(
        type='Shared4Conv1FCBBoxHead',
        in_channels=32,
        conv_out_channels=32,
        fc_out_channels=64,
        roi_feat_size=7,
        num_classes=2,
        norm_cfg=dict(RN),
        reg_class_agnostic=False,
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder', target_means=[0.] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0))
    from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmdet'), pytest.raises(
            ValueError,
            match=r'UDAFasterRCNN: roi_head \(StandardRoIHead\) runs on the source part of the '
            r'batch only.*RN layers.*roi_head\.bbox_head\.shared_convs\.0\.bn.*'
            r'norm_cfg=dict\(type="BN"\) in model\.roi_head.*UDARetinaNet'):
        MODELS.build(cfg)
