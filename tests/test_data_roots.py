"""One option per dataset moves every data path of a config: ``--cfg-options
data_roots.<dataset>=PATH`` (tools/mmnorm_tools/config.py, docs/datasets.md).

For every shipped config: each dataset it reads has a ``data_roots`` key, and moving all of them to
temporary folders leaves no path under a default root anywhere in the resolved config (train / val
/ test loaders, DomainPairDataset's source and target, the AdaBN hook's pool loader, evaluators'
``ann_file``, any nested wrapper). The real tools/train.py and tools/test.py read the option.
"""
import glob
import json
import os.path as osp
import subprocess
import sys

import pytest
from conftest import tool_env
from mmengine.config import Config
from mmnorm_tools.config import config_data_roots, merge_cfg_options, move_data_roots
from tool_loader import load_tool

import mmnorm  # noqa: F401
from mmnorm.runtime import UserError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(
    osp.relpath(p, REPO)
    for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
    if '_base_' not in p.split(osp.sep))
# The default run moves the roots of one config per data layout (Config.fromfile resolves the
# toolboxes' `mmseg::` / `mmdet::` bases in ~1 s each); the slow run, every config.
DEFAULT_RUN = {
    'configs/adabn/deeplabv3plus_r50-d8-adabn_4xb2-40k_gta5-cityscapes-512x512.py',  # pool base
    'configs/adabn/deeplabv3plus_r50-d8-adabn_4xb2-40k_gta5-mapillary-512x512.py',  # own pool
    'configs/adabn/faster-rcnn_r50-adabn_fpn_2xb4-20k_cityscapes-foggy.py',  # detection pool
    'configs/rn/deeplabv3plus_r50-d8-rn_4xb2-40k_gta5-cityscapes-512x512.py',  # UDA pair, seg
    'configs/rn/deeplabv3plus_r50-d8-rn_4xb2-40k_gta5-bdd100k-512x512.py',
    'configs/rn/retinanet_r50-rn_fpn_2xb4-20k_sim10k-cityscapes.py',  # UDA pair, detection
    'configs/baseline/faster-rcnn_r50_fpn_2xb4-20k_sim10k-cityscapes.py',  # evaluator json
    'configs/baseline/deeplabv3plus_r50-d8_4xb2-40k_synthia-cityscapes-512x512.py',
    'configs/demo/deeplabv3plus_r18-mini-d8-adabn_1xb8-1k_demo-gta5-cityscapes-64x128.py',
}
# keys naming a data path (a folder, a file, or a prefix under data_root)
PATH_KEYS = {'data_root', 'ann_file', 'img_path', 'seg_map_path', 'img', 'sub_data_root', 'split'}


def strings(node, path=''):
    """``(key path, value)`` of every string in the nested dicts / lists ``node``."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f'{path}.{key}' if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from strings(value, f'{path}.{i}')


def data_roots_of(node):
    """Every ``data_root`` value in ``node``."""
    return [value for path, value in strings(node) if path.split('.')[-1] == 'data_root']


def test_every_config_is_found():
    assert len(CONFIGS) >= 60
    assert any(c.startswith('configs/adabn/') for c in CONFIGS)
    assert any(c.startswith('configs/demo/') for c in CONFIGS)
    assert DEFAULT_RUN <= set(CONFIGS)


@pytest.mark.parametrize(
    'config',
    [c if c in DEFAULT_RUN else pytest.param(c, marks=pytest.mark.slow, id=c) for c in CONFIGS])
def test_moving_every_data_root_leaves_no_default_path(config, tmp_path):
    cfg = Config.fromfile(osp.join(REPO, config))
    defaults = config_data_roots(cfg)
    assert defaults, f'{config} declares no data_roots'
    body = {k: v for k, v in cfg.items() if not k.endswith('data_roots')}
    roots = data_roots_of(body)
    assert roots, f'{config} reads no data_root'
    # every path the config reads lies under one of its declared roots (so one key moves it)
    for path, value in strings(body):
        if value.startswith('data/'):
            assert any(
                value.rstrip('/') == r.rstrip('/') or value.startswith(r.rstrip('/') + '/')
                for r in defaults.values()), f'{config}: {path}={value!r} has no data_roots key'
    new = {name: str(tmp_path / name) for name in defaults}
    moved = merge_cfg_options(cfg, {f'data_roots.{name}': root for name, root in new.items()})
    assert moved >= len(roots)
    body = {k: v for k, v in cfg.items() if not k.endswith('data_roots')}
    for path, value in strings(body):
        for default in defaults.values():
            assert not value.startswith(default.rstrip('/')), f'{config}: {path}={value!r}'
    for value in data_roots_of(body):
        assert value.startswith(str(tmp_path)), value
    for path, value in strings(body):
        if path.split('.')[-1] in PATH_KEYS and osp.isabs(value):
            assert value.startswith(str(tmp_path)), f'{config}: {path}={value!r}'
    assert config_data_roots(cfg) == new


def test_one_key_moves_one_dataset_and_explicit_paths_win(tmp_path):
    """data_roots.cityscapes moves the Cityscapes pool of the AdaBN hook and the test set, not GTA5
    (training); an explicit loader option given beside it is kept."""
    cfg = Config.fromfile(
        osp.join(REPO,
                 'configs/adabn/deeplabv3plus_r50-d8-adabn_4xb2-40k_gta5-cityscapes-512x512.py'))
    merge_cfg_options(cfg, {
        'data_roots.cityscapes': '/ssd/cs/',
        'val_dataloader.dataset.data_root': '/elsewhere/val/',
    })
    assert cfg.custom_hooks[0].dataloader.dataset.data_root == '/ssd/cs/'
    assert cfg.test_dataloader.dataset.data_root == '/ssd/cs/'
    assert cfg.val_dataloader.dataset.data_root == '/elsewhere/val/'
    assert cfg.train_dataloader.dataset.data_root == 'data/gta5/'


def test_roots_of_a_second_data_base_are_declared_beside():
    """A base combined with another data base (mmengine refuses one key in two bases) declares
    ``<prefix>_data_roots``; data_roots.<name> moves its paths too, and a dataset declared in both
    (same root) moves once."""
    cfg = Config(
        dict(
            data_roots=dict(gta5='data/gta5/', cityscapes='data/cityscapes/'),
            dg_data_roots=dict(cityscapes='data/cityscapes', bdd100k='data/bdd100k/'),
            train=dict(data_root='data/gta5/'),
            test=[
                dict(data_root='data/cityscapes/'),
                dict(data_root='data/bdd100k/', ann_file='data/bdd100k/a.json')
            ]))
    assert config_data_roots(cfg) == dict(
        gta5='data/gta5/', cityscapes='data/cityscapes/', bdd100k='data/bdd100k/')
    merge_cfg_options(cfg, {'data_roots.bdd100k': '/ssd/bdd', 'data_roots.cityscapes': '/ssd/cs/'})
    assert cfg.test[0].data_root == '/ssd/cs/'
    assert (cfg.test[1].data_root, cfg.test[1].ann_file) == ('/ssd/bdd/', '/ssd/bdd/a.json')
    assert cfg.train.data_root == 'data/gta5/'
    assert cfg.dg_data_roots == dict(cityscapes='/ssd/cs/', bdd100k='/ssd/bdd')


def test_bad_data_root_options_name_the_key(tmp_path):
    config = osp.join(REPO, 'configs/baseline/faster-rcnn_r50_fpn_2xb4-20k_sim10k-cityscapes.py')
    with pytest.raises(
            UserError,
            match=r"data_roots.cityscape='/x'.*did you mean "
            r'data_roots.cityscapes\?.*data_roots.sim10k'):
        merge_cfg_options(Config.fromfile(config), {'data_roots.cityscape': '/x'})
    with pytest.raises(UserError, match=r'data_roots=.*one dataset at a time'):
        merge_cfg_options(Config.fromfile(config), {'data_roots': '/x'})
    two = Config(dict(data_roots=dict(a='data/a/'), extra_data_roots=dict(a='data/b/')))
    with pytest.raises(UserError, match=r"data_roots.a='data/a/' and extra_data_roots.a='data/b/'"):
        move_data_roots(two, {'a': '/y'})
    nested = Config(dict(data_roots=dict(a='data/a', b='data/a/b'), ann='data/a/b/x.json'))
    with pytest.raises(UserError, match=r'data_roots.a .* and data_roots.b .* share a folder'):
        move_data_roots(nested, {'a': '/y'})


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_tools_parse_the_option(tool, tmp_path):
    """tools/train.py and tools/test.py (their own argument parsing and config building) move the
    UDA config's source and target (inside DomainPairDataset) and the test set."""
    config = 'configs/rn/deeplabv3plus_r50-d8-rn_4xb2-40k_gta5-cityscapes-512x512.py'
    module = load_tool(tool)
    argv = [osp.join(REPO, config)]
    if tool == 'test':
        (tmp_path / 'none.pth').write_bytes(b'')
        argv.append(str(tmp_path / 'none.pth'))
    argv += [
        '--work-dir',
        str(tmp_path / 'work'), '--cfg-options', 'data_roots.cityscapes=/ssd/cs',
        'data_roots.gta5=/ssd/gta5/', 'train_dataloader.batch_size=1'
    ]
    cfg = module.build_cfg(module.parse_args(argv))
    pair = cfg.train_dataloader.dataset
    assert (pair.source.data_root, pair.target.data_root) == ('/ssd/gta5/', '/ssd/cs/')
    assert cfg.test_dataloader.dataset.data_root == '/ssd/cs/'
    assert cfg.train_dataloader.batch_size == 1


@pytest.mark.slow
def test_train_and_test_from_another_folder_with_moved_data(tmp_path):
    """The real tools/train.py --test-last on the demo AdaBN config, run from a folder without
    data/: with data_roots.demo pointing at tiny demo data, training (source), the AdaBN hook's
    pool and the test set (target) all find their images; a path left at the default would fail."""
    from mmnorm.datasets.synthetic import generate_demo_data
    data = tmp_path / 'demo'
    generate_demo_data(
        str(data), num_source_train=4, num_source_val=2, num_target_train=3, num_target_val=2)
    cwd = tmp_path / 'elsewhere'
    cwd.mkdir()
    config = osp.join(
        REPO, 'configs/demo/'
        'deeplabv3plus_r18-mini-d8-adabn_1xb8-1k_demo-gta5-cityscapes-64x128.py')
    cmd = [
        sys.executable,
        osp.join(REPO, 'tools/train.py'), config, '--work-dir',
        str(tmp_path / 'work'), '--test-last', '--metrics-out',
        str(tmp_path / 'metrics.json'), '--cfg-options', f'data_roots.demo={data}',
        'train_cfg.max_iters=1', 'train_dataloader.num_workers=0',
        'custom_hooks.0.dataloader.num_workers=0', 'custom_hooks.0.save_checkpoint=adabn.pth',
        'test_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'test_dataloader.persistent_workers=False'
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'mIoU' in json.loads((tmp_path / 'metrics.json').read_text())
    assert (tmp_path / 'work' / 'adabn.pth').is_file()
