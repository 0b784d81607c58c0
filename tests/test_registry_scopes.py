"""Every mmnorm norm layer is reachable as `norm_cfg=dict(type=...)` from mmseg and mmdet
configs."""
import pytest
import torch
from conftest import DEMO_CONFIG, REPO
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope, init_default_scope

import mmnorm  # noqa: F401


def mmnorm_norm_types():
    return sorted(name for name, cls in MODELS.module_dict.items()
                  if cls.__module__.startswith('mmnorm.models.norms.'))


def test_import_registers_norms_and_version():
    assert mmnorm.__version__.count('.') == 2
    # exactly the documented norm layers, each importable from the package top level
    assert mmnorm_norm_types() == ['AdaBN', 'IBN', 'PBN', 'RN']
    assert all(
        getattr(mmnorm.models.norms, name) is MODELS.get(name) for name in mmnorm_norm_types())


@pytest.mark.parametrize('norm', mmnorm_norm_types())
def test_mmseg_scope_model_with_mmnorm_norm(norm):
    cfg = Config.fromfile(f'{REPO}/{DEMO_CONFIG}')
    norm_cfg = dict(type=norm, requires_grad=True)
    # the head's image-pool branch is 1x1: IN-based norms cannot go there
    cfg.model.backbone.norm_cfg = norm_cfg
    init_default_scope('mmseg')
    from mmseg.registry import MODELS as SEG_MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = SEG_MODELS.build(cfg.model)
    cls = MODELS.get(norm)
    assert sum(isinstance(m, cls) for m in model.modules()) >= 15
    assert isinstance(model.backbone.stem[1], cls) and isinstance(model.backbone.layer4[0].bn1, cls)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 128), mode='tensor')
    assert out.shape == (2, 19, 16, 32)


@pytest.mark.parametrize('norm', mmnorm_norm_types())
def test_mmdet_scope_model_with_mmnorm_norm(norm):
    from mmdet.registry import MODELS as DET_MODELS
    cfg = dict(
        type='ResNet',
        depth=18,
        base_channels=16,
        norm_cfg=dict(type=norm, requires_grad=True),
        init_cfg=None)
    with DefaultScope.overwrite_default_scope('mmdet'):
        backbone = DET_MODELS.build(cfg)
    cls = MODELS.get(norm)
    assert isinstance(backbone.bn1, cls) and isinstance(backbone.layer1[0].bn2, cls)
    backbone.eval()
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 32, 64, 128]


def test_custom_imports_is_all_a_config_needs(tmp_path):
    # A fresh interpreter that never imports mmnorm itself: the config's custom_imports must do it.
    import subprocess
    import sys
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(
        "default_scope = 'mmdet'\n"
        "custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)\n"
        "model = dict(type='ResNet', depth=18, base_channels=8, norm_cfg=dict(type='IBN'), "
        "init_cfg=None)\n")
    code = (
        'from mmengine.config import Config; from mmengine.registry import init_default_scope;cfg '
        f'= Config.fromfile({str(cfg)!r}); init_default_scope(cfg.default_scope);from '
        'mmdet.registry import MODELS; m = MODELS.build(cfg.model); print(type(m.bn1).__name__)')
    proc = subprocess.run([sys.executable, '-c', code],
                          capture_output=True,
                          text=True,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith('IBN')
