"""``import mmnorm`` works with only one toolbox installed; the lint configuration names 100
columns and the library keeps to it."""
import configparser
import os.path as osp
import subprocess
import sys

import pytest
from conftest import REPO, tool_env

ONE_TOOLBOX = """
import sys
sys.modules[{hidden!r}] = None  # as if not installed: `import {hidden}` fails and find_spec() returns None
import torch
import mmnorm
from mmengine.registry import HOOKS, MODELS
import {present}.registry as toolbox
assert sys.modules[{hidden!r}] is None, 'something imported {hidden}'
for name in ('AdaBN', 'IBN', 'PBN', 'RN'):
    assert name in MODELS.module_dict, name
assert 'AdaBNHook' in HOOKS.module_dict
for name in {expected!r}:
    assert name in toolbox.MODELS.module_dict or name in toolbox.DATASETS.module_dict, name
# the core works: a norm from the root registry, recalibrated
layer = MODELS.build(dict(type='AdaBN', num_features=3))
mmnorm.recalibrate_bn(torch.nn.Sequential(layer), [torch.randn(4, 3, 5, 5)], progress=False, logger=None)
assert layer.domain_bn('source').running_var.mean() > 0.5
print('ok')
"""

EXPECTED = {
    'mmseg': ['GTA5Dataset', 'IBNResNetV1c', 'UDAEncoderDecoder'],
    'mmdet': ['FoggyCityscapesDataset', 'IBNResNet', 'UDAFasterRCNN']
}


@pytest.mark.parametrize('present, hidden', [('mmseg', 'mmdet'), ('mmdet', 'mmseg')])
def test_import_with_one_toolbox(present, hidden):
    code = ONE_TOOLBOX.format(present=present, hidden=hidden, expected=EXPECTED[present])
    proc = subprocess.run([sys.executable, '-c', code],
                          cwd=REPO,
                          env=tool_env(),
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]


def test_hiding_a_toolbox_is_seen_by_the_probe():
    """The probe the test relies on: a toolbox blocked in sys.modules counts as not installed."""
    code = "import sys; sys.modules['mmdet'] = None; from mmnorm.toolboxes import toolbox_installed; " \
           "print(toolbox_installed('mmdet'), toolbox_installed('mmseg'))"
    proc = subprocess.run([sys.executable, '-c', code],
                          cwd=REPO,
                          env=tool_env(),
                          capture_output=True,
                          text=True,
                          timeout=120)
    assert proc.stdout.split() == ['False', 'True'], proc.stderr[-2000:]


def test_lint_settings_and_library_at_100_columns():
    cfg = configparser.ConfigParser()
    cfg.read(osp.join(REPO, 'setup.cfg'))
    limits = (cfg['flake8']['max-line-length'], cfg['isort']['line_length'],
              cfg['yapf']['column_limit'])
    assert limits == ('100', '100', '100')
    assert osp.exists(osp.join(REPO, '.pre-commit-config.yaml'))
    import glob
    long_lines = [
        f'{path}:{i}' for path in glob.glob(osp.join(REPO, 'mmnorm', '**', '*.py'), recursive=True)
        for i, line in enumerate(open(path, encoding='utf-8'), 1) if len(line.rstrip('\n')) > 100
    ]
    assert long_lines == []
