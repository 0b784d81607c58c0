"""Test-time adaptation on real toolbox models: the demo's mmseg DeepLabV3+ (TENT step against a
copy whose BN layers are torch BNs in train mode without running statistics), the
TestTimeAdaptHook in a real Runner and through tools/test.py, and an mmdet Faster R-CNN with the
statistics methods."""
import copy
import json
import os
import os.path as osp

import pytest
import torch
import torch.nn as nn
from conftest import DEMO_CONFIG, REPO, run_tool, tiny_seg_options
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

import mmnorm  # noqa: F401
from mmnorm import tta

TTA_CONFIG = 'configs/demo/deeplabv3plus_r18-mini-d8-bn-tta-{}_1xb8-1k_demo-gta5-cityscapes-64x128.py'


def seg_cfg(data_root, work_dir, config=DEMO_CONFIG, **overrides):
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.test_dataloader.dataset.data_root = osp.join(data_root, 'cityscapes')
    cfg.test_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.work_dir = str(work_dir)
    cfg.merge_from_dict(overrides)
    return cfg


@pytest.fixture
def seg_runner(tiny_demo_data, tmp_path):
    torch.manual_seed(0)
    return Runner.from_cfg(seg_cfg(tiny_demo_data, tmp_path))


def torch_bn_reference(model):
    """A copy of ``model`` whose every BatchNorm2d is a torch BN in train mode without running
    statistics (its forward normalises with the batch statistics), sharing nothing with
    ``model``."""
    ref = copy.deepcopy(model)
    for name, module in list(ref.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                bn = nn.BatchNorm2d(child.num_features, eps=child.eps, track_running_stats=False)
                bn.load_state_dict({'weight': child.weight, 'bias': child.bias})
                setattr(module, child_name, bn.train())
    return ref


def entropy_mean(logits):
    logp = torch.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1).mean()


def test_tent_on_segmentor_matches_torch_bn_reference(seg_runner):
    model = seg_runner.model.eval()
    batch = next(iter(seg_runner.test_dataloader))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ref = torch_bn_reference(model)
    lr = 0.05
    adapter = tta.TestTimeAdapter(model, 'tent', optimizer=dict(type='SGD', lr=lr), logger=None)
    data = ref.data_preprocessor(batch, False)
    metas = [s.metainfo for s in data['data_samples']]
    logits = ref.inference(data['inputs'], metas)
    loss = entropy_mean(logits)  # the demo frames have no padding: every pixel is valid
    ref_params = {n: p for n, p in ref.named_parameters() if n in set(adapter.param_names)}
    bn_affine = {
        f'{n}.{a}'
        for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
        for a in ('weight', 'bias')
    }
    assert set(ref_params) == set(
        adapter.param_names) == bn_affine  # every BN affine (backbone and heads), no other
    grads = dict(zip(ref_params, torch.autograd.grad(loss, list(ref_params.values()))))
    out = adapter.adapt(batch)
    torch.testing.assert_close(
        torch.stack([o.seg_logits.data for o in out]),
        torch.stack([
            o.seg_logits.data for o in ref.postprocess_result(logits.detach(), data['data_samples'])
        ]),
        rtol=1e-4,
        atol=1e-4)
    after = dict(model.named_parameters())
    for name, grad in grads.items():
        torch.testing.assert_close(
            after[name].detach(), ref_params[name].detach() - lr * grad, rtol=1e-4, atol=1e-6)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= set(adapter.param_names)
    adapter.reset()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_statistics_methods_on_segmentor_change_only_predictions(seg_runner):
    model = seg_runner.model.eval()
    batch = next(iter(seg_runner.test_dataloader))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ref = torch_bn_reference(model)
    with torch.no_grad():
        expected = ref.test_step(batch)
        plain = model.test_step(batch)
    out = tta.TestTimeAdapter(model, 'bn').adapt(batch)
    torch.testing.assert_close(
        out[0].seg_logits.data, expected[0].seg_logits.data, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out[0].seg_logits.data, plain[0].seg_logits.data, atol=1e-3)
    tta.TestTimeAdapter(model, 'prior', prior=4).adapt(batch)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_hook_in_runner_adapts_every_batch_and_restores(tiny_demo_data, tmp_path):
    cfg = seg_cfg(
        tiny_demo_data,
        tmp_path,
        custom_hooks=[
            dict(
                type='TestTimeAdaptHook',
                method='tent',
                reliable=0.9,
                reset_threshold=0.2,
                optimizer=dict(type='SGD', lr=0.01))
        ])
    runner = Runner.from_cfg(cfg)
    before = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
    runner.test()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'TestTimeAdaptHook')
    assert hook.summary == dict(
        method='tent', steps=len(runner.test_dataloader), resets=hook.summary['resets'])
    assert 'test_step' not in runner.model.__dict__
    assert all(torch.equal(v, before[k])
               for k, v in runner.model.state_dict().items())  # restore=True


class OutputsHook(Hook):
    """Keeps what the test loop's ``test_step`` returned for every batch."""

    def __init__(self):
        self.outputs = []

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.outputs.append(torch.stack([o.seg_logits.data for o in outputs]))


@pytest.mark.parametrize('predict_after_update', [False, True])
def test_hook_predictions_and_updates_equal_the_adapter(predict_after_update, tiny_demo_data,
                                                        tmp_path):
    """The test loop's own predictions under the hook (the last update held back until after the
    prediction) are those of ``TestTimeAdapter.adapt`` on the same batches, and so are the
    parameters."""
    args = dict(
        method='tent',
        steps=2,
        optimizer=dict(type='SGD', lr=0.05),
        logger=None,
        predict_after_update=predict_after_update)
    cfg = seg_cfg(
        tiny_demo_data,
        tmp_path,
        custom_hooks=[dict(type='TestTimeAdaptHook', restore=False, **args)])
    runner = Runner.from_cfg(cfg)
    model = copy.deepcopy(runner.model)
    captured = OutputsHook()
    runner.register_hook(captured, 'LOWEST')
    runner.test()
    method = args.pop('method')
    adapter = tta.TestTimeAdapter(model, method, **args)
    expected = [
        torch.stack([o.seg_logits.data for o in adapter.adapt(b)]) for b in runner.test_dataloader
    ]
    assert len(captured.outputs) == len(expected) > 1
    for got, want in zip(captured.outputs, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    adapted = dict(runner.model.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(adapted[name], param, rtol=1e-5, atol=1e-6)


def test_hook_rejects_unknown_method():
    from mmnorm.engine.hooks import TestTimeAdaptHook
    with pytest.raises(ValueError, match="method must be one of .*got 'adapt'"):
        TestTimeAdaptHook(method='adapt')


PROBE = '''
import os
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class TTAProbeHook(Hook):
    """Saves, per rank, the test loop's logits of every batch and the TestTimeAdaptHook's adapter
    after the last batch (before it restores the source state)."""
    priority = 'NORMAL'  # before TestTimeAdaptHook (BELOW_NORMAL) at every hook point

    def before_test_epoch(self, runner):
        self.logits = []

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.logits.append(torch.stack([o.seg_logits.data for o in outputs]))

    def after_test_epoch(self, runner, metrics=None):
        hook = next(h for h in runner.hooks if type(h).__name__ == 'TestTimeAdaptHook')
        adapter = hook.adapter
        state = dict(logits=self.logits, steps=adapter.num_steps, history=adapter.history,
                     params={{n: p.detach().clone()
                             for n, p in zip(adapter.param_names, adapter.params)}})
        torch.save(state, os.path.join({out!r}, f'probe_rank{{get_rank()}}.pt'))
'''


def probed_config(tmp_path, config: str):
    """``config`` (a TTA config under configs/) with TTAProbeHook added, and the environment that
    imports it: ``(config path, PYTHONPATH)``; the probe writes ``tmp_path/probe_rank{r}.pt``."""
    (tmp_path / 'tta_probe.py').write_text(PROBE.format(out=str(tmp_path)))
    hooks = Config.fromfile(osp.join(REPO, config)).custom_hooks + [dict(type='TTAProbeHook')]
    path = tmp_path / 'probed.py'
    path.write_text(f"_base_ = [{osp.join(REPO, config)!r}]\n"
                    "custom_imports = dict(imports=['mmnorm', 'tta_probe'], "
                    "allow_failed_imports=False)\n"
                    f'custom_hooks = {hooks!r}\n')
    return path, f'{REPO}{os.pathsep}{tmp_path}'


# ~20 s; the default run covers the hook in a real Runner (what tools/test.py builds)
@pytest.mark.slow
@pytest.mark.parametrize('method', ['bn', 'prior', 'tent'])
def test_tools_test_py_with_demo_tta_config(method, tiny_demo_data, tmp_path):
    """tools/test.py predicts what ``TestTimeAdapter.adapt`` with the config's hook arguments
    predicts on the same batches, not what the source model predicts."""
    cfg = seg_cfg(tiny_demo_data, tmp_path)
    model = Runner.from_cfg(cfg).model
    torch.manual_seed(0)
    with torch.no_grad():  # source statistics far from the test batches' (as after training)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    ckpt = tmp_path / 'bn.pth'
    torch.save(dict(meta=dict(), state_dict=model.state_dict()), ckpt)
    out = tmp_path / 'metrics.json'
    options = [o for o in tiny_seg_options(tiny_demo_data) if o.startswith('test_dataloader')]
    config, pythonpath = probed_config(tmp_path, TTA_CONFIG.format(method))
    run_tool(
        [
            'tools/test.py', config, ckpt, '--work-dir', tmp_path / 'test', '--metrics-out', out,
            '--cfg-options'
        ] + options,
        timeout=600,
        PYTHONPATH=pythonpath)
    got = torch.load(tmp_path / 'probe_rank0.pt')['logits']
    hook_cfg = seg_cfg(tiny_demo_data, tmp_path / 'ref', TTA_CONFIG.format(method)).custom_hooks[0]
    args = {k: v for k, v in hook_cfg.items() if k not in ('type', 'method', 'restore')}
    adapter = tta.TestTimeAdapter(copy.deepcopy(model), method, logger=None, **args)
    loader = Runner.from_cfg(seg_cfg(tiny_demo_data, tmp_path / 'ref')).test_dataloader
    batches = list(loader)
    expected = [torch.stack([o.seg_logits.data for o in adapter.adapt(b)]) for b in batches]
    model.eval()
    with torch.no_grad():
        plain = [torch.stack([o.seg_logits.data for o in model.test_step(b)]) for b in batches]
    assert len(got) == len(expected) > 0
    for g, want, source in zip(got, expected, plain):
        torch.testing.assert_close(g, want, rtol=1e-3, atol=1e-3)  # Adam: float noise grows
        assert not torch.allclose(g, source, atol=1e-3)  # the hook adapted the model
    assert 'mIoU' in json.loads(out.read_text())


DET_MODEL = dict(
    type='FasterRCNN',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    backbone=dict(
        type='ResNet',
        depth=18,
        base_channels=16,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        style='pytorch'),
    neck=dict(type='FPN', in_channels=[16, 32, 64, 128], out_channels=32, num_outs=5),
    rpn_head=dict(
        type='RPNHead',
        in_channels=32,
        feat_channels=32,
        anchor_generator=dict(
            type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[1.0, 1.0, 1.0, 1.0])),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=32,
            featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(
            type='Shared2FCBBoxHead',
            in_channels=32,
            fc_out_channels=64,
            roi_feat_size=7,
            num_classes=2,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0., 0., 0., 0.],
                target_stds=[0.1, 0.1, 0.2, 0.2]))),
    train_cfg=None,
    test_cfg=dict(
        rpn=dict(
            nms_pre=100, max_per_img=50, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5), max_per_img=20)))


def test_detector_statistics_methods_and_tent_refusal():
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(Config(dict(model=DET_MODEL)).model)
    model.init_weights()
    model.train()  # applies frozen_stages / norm_eval, as in a test after training
    model.eval()
    g = torch.Generator().manual_seed(0)
    batch = dict(
        inputs=[(torch.rand(3, 64, 96, generator=g) * 255).to(torch.uint8) for _ in range(2)],
        data_samples=[
            DetDataSample(
                metainfo=dict(img_shape=(64, 96), ori_shape=(64, 96), scale_factor=(1.0, 1.0)))
            for _ in range(2)
        ])
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ref = torch_bn_reference(model)
    for method in ('bn', 'prior'):
        out = tta.TestTimeAdapter(model, method).adapt(batch)
        assert len(out) == 2 and out[0].pred_instances.bboxes.shape[-1] == 4
    with torch.no_grad():
        expected = ref.test_step(batch)
    out = tta.TestTimeAdapter(model, 'bn').adapt(batch)
    torch.testing.assert_close(
        out[0].pred_instances.scores, expected[0].pred_instances.scores, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for method in ('tent', 'sar', 'eata', 'cotta'):
        with pytest.raises(
                ValueError,
                match=f"method='{method}' .*FasterRCNN gives none; use the statistics methods "
                "'bn' or 'prior'"):
            tta.TestTimeAdapter(model, method)
