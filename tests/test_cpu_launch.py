"""SyncBN on CPU process groups: the launcher reverts it to BN (the configs use SyncBN, as the
toolboxes' do, and DDP refuses it on CPU modules); checkpoints keep the SyncBN models' keys.

Default run: the revert on models built from shipped configs, and the CPU DDP wrapper on a one-process
gloo group. Slow: a segmentation and a detection protocol config under tools/dist_train.sh and
tools/dist_test.sh with 2 gloo processes (2 iterations, tiny data in the real layouts).
"""
import copy
import os.path as osp

import pytest
import torch
import torch.nn as nn
from conftest import REPO, run_tool
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODELS, init_default_scope
from mmnorm_tools.launcher import CPUDistributedDataParallel, revert_sync_bn_layers, setup_launcher
from torch.nn.modules.batchnorm import _BatchNorm

import mmnorm  # noqa: F401
from mmnorm.bn_layers import MMSyncBN

SEG_CONFIG = 'configs/baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py'
IBN_CONFIG = 'configs/ibn/deeplabv3plus_r50-d8-ibn-a_4xb2-40k_gta5-cityscapes-512x512.py'
DET_CONFIG = 'configs/baseline/faster-rcnn_r50_fpn_2xb4-20k_sim10k-cityscapes.py'


def build_model(config: str) -> nn.Module:
    cfg = Config.fromfile(osp.join(REPO, config))
    init_default_scope(cfg.default_scope)
    cfg.model.pop('pretrained', None)
    cfg.model.backbone.pop('init_cfg', None)
    return MODELS.build(cfg.model).eval()


def sync_bn_names(model: nn.Module) -> list:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.SyncBatchNorm, MMSyncBN))]


def is_plain_bn(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm)


@pytest.mark.parametrize('config', [SEG_CONFIG, IBN_CONFIG])
def test_revert_keeps_weights_keys_and_outputs(config):
    torch.manual_seed(0)
    model = build_model(config)
    synced = sync_bn_names(model)
    assert len(synced) > 50  # backbone and heads of the GPU config are SyncBN
    for m in model.modules():  # non-trivial statistics, so a lost buffer changes the output
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    reference = copy.deepcopy(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.extract_feat(x)[-1]  # SyncBN in eval mode runs on CPU
    reverted, count = revert_sync_bn_layers(model)
    assert count == len(synced)
    assert sync_bn_names(reverted) == []
    modules = dict(reverted.named_modules())
    assert all(is_plain_bn(modules[n]) for n in synced)  # the same layer paths, now BN
    state, ref_state = reverted.state_dict(), reference.state_dict()
    assert list(state) == list(ref_state)  # checkpoints load both ways
    for key, value in ref_state.items():
        assert torch.equal(state[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(reverted.extract_feat(x)[-1], expected, rtol=0, atol=0)
    if 'ibn' in config:  # mmnorm's composite layers stay, their SyncBN halves become BN
        assert any(type(m).__name__ == 'IBN' for m in reverted.modules())


@pytest.fixture
def process_group(tmp_path):
    import torch.distributed as dist
    dist.init_process_group(
        'gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_cpu_wrapper_reverts_torch_and_mmcv_sync_bn(process_group):
    cfg = Config(dict(default_scope='mmseg'))
    setup_launcher(cfg, 'pytorch')  # the group exists: only the config is prepared
    assert cfg.model_wrapper_cfg['type'] == 'CPUDistributedDataParallel'
    assert cfg.model_wrapper_cfg['device_ids'] is None

    def net():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4), nn.Conv2d(4, 4, 1), MMSyncBN(4),
            nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))

    with pytest.raises(ValueError, match='SyncBatchNorm'):
        MMDistributedDataParallel(module=net(), device_ids=None)  # what failed before
    ddp = CPUDistributedDataParallel(module=net(), device_ids=None)
    assert sync_bn_names(ddp.module) == [] and all(is_plain_bn(ddp.module[i]) for i in (1, 3, 5))
    x = torch.rand(4, 3, 8, 8)
    out = ddp(x)  # a training forward: batch statistics of this process
    reference = net()
    for i in (1, 3):  # plain BN with the SyncBN layer's parameters and buffers
        bn = nn.BatchNorm2d(4)
        bn.load_state_dict(reference[i].state_dict())
        reference[i] = bn
    torch.testing.assert_close(out, reference(x))
    assert torch.equal(ddp.module[1].running_mean, reference[1].running_mean)


# ---------------------------------------------------------------------------------------------
# 2 gloo processes, shipped configs, tools/dist_train.sh + tools/dist_test.sh
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def fixture_root(tmp_path_factory):
    from dataset_fixtures import build_fixture_data
    return build_fixture_data(tmp_path_factory.getbasetemp() / 'mmnorm_data')


@pytest.mark.slow
@pytest.mark.parametrize('config', [SEG_CONFIG, DET_CONFIG], ids=['deeplabv3plus', 'faster-rcnn'])
def test_dist_train_and_test_two_processes(config, fixture_root, tmp_path, port):
    """The shipped config with the test-side overrides of test_configs (fixture data, 64x64
    inputs, batch 2) trains 2 iterations and tests on 2 CPU processes; the checkpoint holds the
    SyncBN model's keys."""
    from test_configs import shrunk_config
    cfg = shrunk_config(osp.join(REPO, config), fixture_root, str(tmp_path / 'train'))
    cfg.train_cfg.max_iters = 2
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=2, by_epoch=False)
    cfg.log_level = 'INFO'
    path = str(tmp_path / osp.basename(config))
    cfg.dump(path)
    run_tool(['tools/dist_train.sh', path, 2, '--work-dir', tmp_path / 'train'], PORT=port)
    ckpt = tmp_path / 'train' / 'iter_2.pth'
    state = torch.load(ckpt, map_location='cpu', weights_only=False)['state_dict']
    gpu_model = build_model(config)  # the SyncBN model of a GPU run
    assert sync_bn_names(gpu_model) and list(state) == list(gpu_model.state_dict())
    gpu_model.load_state_dict(state, strict=True)
    metrics = tmp_path / 'metrics.json'
    run_tool([
        'tools/dist_test.sh', path, ckpt, 2, '--work-dir', tmp_path / 'test', '--metrics-out',
        metrics
    ],
             PORT=port)
    import json
    result = json.loads(metrics.read_text())
    key = 'mIoU' if 'deeplab' in config else 'coco/bbox_mAP_50'
    assert key in result and result[key] >= 0
