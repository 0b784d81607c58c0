"""Bad input to the tools gives clear errors naming the value; the launcher set-up works on CPU."""
import os.path as osp

import pytest
import torch
from conftest import DEMO_CONFIG, REPO, run_tool
from mmengine.config import Config
from mmnorm_tools.launcher import setup_launcher
from tool_loader import load_tool

from mmnorm.runtime import get_toolbox


@pytest.fixture(scope='module')
def train_tool():
    return load_tool('train')


@pytest.fixture(scope='module')
def test_tool():
    return load_tool('test')


def test_config_without_default_scope(tmp_path, train_tool, test_tool):
    cfg = tmp_path / 'no_scope.py'
    cfg.write_text("model = dict(type='EncoderDecoder')\n")
    with pytest.raises(ValueError, match=r"no_scope.py' has no default_scope"):
        train_tool.build_cfg(train_tool.parse_args([str(cfg)]))
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')
    with pytest.raises(ValueError, match='has no default_scope'):
        test_tool.build_cfg(test_tool.parse_args([str(cfg), str(ckpt)]))


def test_config_with_foreign_scope(tmp_path):
    path = tmp_path / 'cls.py'
    path.write_text("default_scope = 'mmpretrain'\n")
    cfg = Config.fromfile(str(path))
    with pytest.raises(ValueError, match="default_scope='mmpretrain'"):
        get_toolbox(cfg)


def test_missing_checkpoint(test_tool):
    with pytest.raises(
            FileNotFoundError, match="checkpoint not found: 'work_dirs/nope/iter_9.pth'"):
        test_tool.build_cfg(
            test_tool.parse_args([osp.join(REPO, DEMO_CONFIG), 'work_dirs/nope/iter_9.pth']))


def test_missing_resume_checkpoint_and_config(train_tool):
    with pytest.raises(FileNotFoundError, match="--resume checkpoint not found: 'missing.pth'"):
        train_tool.build_cfg(
            train_tool.parse_args([osp.join(REPO, DEMO_CONFIG), '--resume', 'missing.pth']))
    with pytest.raises(FileNotFoundError, match="config file not found: 'configs/none.py'"):
        train_tool.build_cfg(train_tool.parse_args(['configs/none.py']))


def test_unknown_launcher_named():
    """The one subprocess of tools/train.py in this file: the script starts and argparse names
    the value."""
    proc = run_tool(['tools/train.py', DEMO_CONFIG, '--launcher', 'mpi'], check=False)
    assert proc.returncode == 2
    assert '--launcher' in proc.stderr and "'mpi'" in proc.stderr
    with pytest.raises(ValueError, match="launcher must be one of .* got 'mpi'"):
        setup_launcher(Config(dict(default_scope='mmseg')), 'mpi')


def test_train_cfg_plumbing(train_tool):
    args = train_tool.parse_args([
        osp.join(REPO, DEMO_CONFIG), '--amp', '--resume', '--work-dir', 'wd', '--cfg-options',
        'model.backbone.depth=34'
    ])
    cfg = train_tool.build_cfg(args)
    if torch.cuda.is_available():  # mmengine's GradScaler AMP on a GPU, bfloat16 autocast on CPU
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 'dynamic'
    else:
        assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper' and cfg.optim_wrapper.dtype == 'bfloat16'
    # --resume without a path in a work dir holding no checkpoint: training starts from scratch
    assert cfg.resume is False and cfg.load_from is None and cfg.work_dir == 'wd'
    assert cfg.model.backbone.depth == 34
    default = train_tool.build_cfg(train_tool.parse_args([osp.join(REPO, DEMO_CONFIG)]))
    assert default.work_dir == osp.join('./work_dirs', osp.splitext(osp.basename(DEMO_CONFIG))[0])


def test_metrics_out_of_train_needs_test_last(train_tool, capsys):
    with pytest.raises(SystemExit) as exc:
        train_tool.parse_args([DEMO_CONFIG, '--metrics-out', 'm.json'])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert '--metrics-out' in err and '--test-last' in err


def test_test_cfg_plumbing(test_tool, tmp_path):
    ckpt = tmp_path / 'c.pth'
    ckpt.write_bytes(b'')
    cfg = test_tool.build_cfg(
        test_tool.parse_args(
            [osp.join(REPO, DEMO_CONFIG),
             str(ckpt), '--out', 'preds', '--show-dir', 'vis']))
    assert cfg.load_from == str(ckpt) and cfg.resume is False
    assert cfg.test_evaluator['output_dir'] == 'preds' and cfg.test_evaluator['keep_results'] is True
    assert cfg.default_hooks.visualization.draw is True and cfg.visualizer.save_dir == 'vis'


def test_setup_launcher_none_keeps_config():
    cfg = Config(dict(default_scope='mmseg'))
    setup_launcher(cfg, 'none')
    assert cfg.launcher == 'none' and 'model_wrapper_cfg' not in cfg


def test_dist_scripts_use_torchrun_env():
    for name in ('dist_train.sh', 'dist_test.sh'):
        text = open(osp.join(REPO, 'tools', name)).read()
        for var in ('NNODES', 'NODE_RANK', 'PORT', 'MASTER_ADDR', 'torch.distributed.run',
                    '--launcher pytorch'):
            assert var in text, (name, var)
    for name in ('slurm_train.sh', 'slurm_test.sh'):
        text = open(osp.join(REPO, 'tools', name)).read()
        assert 'srun' in text and '--launcher="slurm"' in text


def test_runner_is_freed_before_the_process_group_is_destroyed(train_tool, test_tool, tmp_path,
                                                               tiny_demo_data):
    """train.py / test.py keep the Runner (and its DDP wrapper, which holds the process group)
    inside one function: once it returns, a collection frees it, so teardown_launcher's
    ``gc.collect()`` runs before the group is destroyed, not at interpreter exit."""
    import gc

    from conftest import tiny_seg_options
    from mmengine.runner import Runner
    from mmseg.models.segmentors import EncoderDecoder

    def alive():
        gc.collect()
        return sum(isinstance(o, (Runner, EncoderDecoder)) for o in gc.get_objects())

    before = alive()
    options = ['--cfg-options', *tiny_seg_options(tiny_demo_data)]
    cfg = train_tool.build_cfg(
        train_tool.parse_args([DEMO_CONFIG, '--work-dir',
                               str(tmp_path / 'train'), *options]))
    metrics = train_tool.train_and_test(cfg, test_last=True)
    assert 'mIoU' in metrics and alive() == before
    ckpt = str(tmp_path / 'train' / 'iter_2.pth')
    cfg = test_tool.build_cfg(
        test_tool.parse_args([DEMO_CONFIG, ckpt, '--work-dir',
                              str(tmp_path / 'test'), *options]))
    assert 'mIoU' in test_tool.run_test(cfg, None) and alive() == before


def test_launcher_environment_errors_are_one_line(train_tool, monkeypatch, capsys, tmp_path):
    """--launcher pytorch outside torchrun, slurm without a resolvable first node, a GPU-only
    init_backend: one line naming what to set, exit 2 (no traceback)."""
    from mmnorm_tools.launcher import init_cpu_process_group

    from mmnorm.runtime import UserError
    for var in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as exc:
        train_tool.main([DEMO_CONFIG, '--launcher', 'pytorch', '--work-dir', str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and 'Traceback' not in err
    assert "tools/train.py: error: --launcher pytorch needs the environment variables ['RANK'" in err
    monkeypatch.setenv('MASTER_PORT', '29500')  # restored after the test (the launcher sets it)
    monkeypatch.setenv('SLURM_PROCID', '0')
    monkeypatch.setenv('SLURM_NTASKS', '1')
    monkeypatch.setenv('SLURM_NODELIST', 'node[01-02]')
    monkeypatch.setenv('PATH', str(tmp_path))  # no scontrol here
    with pytest.raises(
            UserError, match=r"SLURM_NODELIST='node\[01-02\]' with scontrol; set "
            'MASTER_ADDR'):
        init_cpu_process_group('slurm')
    with pytest.raises(UserError, match="init_backend='deepspeed' needs GPUs"):
        init_cpu_process_group('slurm', init_backend='deepspeed')
