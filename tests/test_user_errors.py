"""User errors in the tools end with one message naming the value (exit 2, no traceback); checkpoint files are
written atomically; the dist scripts find the project's interpreter; tools/test.py --show-dir / --tta."""
import os
import os.path as osp
import pickle

import pytest
import torch
from conftest import DEMO_CONFIG, REPO, run_tool, tiny_seg_options
from mmengine.config import Config
from tool_loader import load_tool

from mmnorm.runtime import (AtomicLocalBackend, CheckpointFileError, atomic_write_bytes, check_checkpoint_file,
                            setup)
from mmnorm_tools.config import check_norm_types


def real_checkpoint(path):
    torch.save(dict(meta=dict(iter=1), state_dict={'w': torch.randn(256, 256)}), path)
    return path


def test_checkpoint_directory_empty_truncated(tmp_path):
    with pytest.raises(CheckpointFileError, match=f"checkpoint '{tmp_path}' is a directory; pass a checkpoint file"):
        check_checkpoint_file(str(tmp_path))
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointFileError, match='is an empty file'):
        check_checkpoint_file(str(empty))
    full = real_checkpoint(tmp_path / 'full.pth')
    check_checkpoint_file(str(full))  # loads
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(full.read_bytes()[:len(full.read_bytes()) // 2])
    with pytest.raises(CheckpointFileError, match='cut.pth.* is truncated or not a torch checkpoint'):
        check_checkpoint_file(str(cut))
    with pytest.raises(CheckpointFileError, match="--resume checkpoint not found: 'nope.pth'"):
        check_checkpoint_file('nope.pth', '--resume checkpoint')


class Evil:

    def __reduce__(self):
        return (os.system, ('echo pwned', ))


def test_refused_checkpoint_names_the_global_and_keeps_weights_only(tmp_path):
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        torch.save({'state_dict': {}, 'x': Evil()}, f)
    with pytest.raises(CheckpointFileError) as err:
        check_checkpoint_file(str(path))
    message = str(err.value)
    assert 'global posix.system' in message and 'refused by weights-only loading' in message
    assert 'Do not disable weights-only loading' in message
    assert 'will likely succeed' not in message and 'Re-running' not in message
    with open(tmp_path / 'plain.pkl', 'wb') as f:  # a raw pickle, not a torch file
        pickle.dump([1, 2], f, protocol=2)  # torch.save's protocol: no unpickler warning
    with pytest.raises(CheckpointFileError, match='plain.pkl'):
        check_checkpoint_file(str(tmp_path / 'plain.pkl'))


def test_tools_exit_2_with_one_line_for_bad_checkpoints(tmp_path, capsys):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    test_tool = load_tool('test')
    for ckpt, message in ((empty, 'is an empty file'), (tmp_path, 'is a directory')):
        with pytest.raises(SystemExit) as exc:
            test_tool.main([osp.join(REPO, DEMO_CONFIG), str(ckpt)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith('tools/test.py: error: ') and message in err
        assert len(err.strip().splitlines()) == 1
    train_tool = load_tool('train')
    with pytest.raises(SystemExit) as exc:
        train_tool.main([osp.join(REPO, DEMO_CONFIG), '--resume', str(empty)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--resume checkpoint '" in err and 'is an empty file' in err


def test_misspelled_norm_type_is_named_before_building(capsys):
    cfg = Config.fromfile(osp.join(REPO, DEMO_CONFIG))
    assert check_norm_types(cfg) == 2  # backbone and decode head
    cfg.merge_from_dict({'model.backbone.norm_cfg.type': 'IBNX'})
    with pytest.raises(
            ValueError, match=r"model.backbone.norm_cfg.type='IBNX' is not a registered norm layer "
            r"\(did you mean 'IBN'\?\); available norms: .*AdaBN.*BN.*GN.*IBN.*PBN.*RN"):
        check_norm_types(cfg)
    with pytest.raises(SystemExit) as exc:
        load_tool('train').main([osp.join(REPO, DEMO_CONFIG), '--cfg-options', 'model.backbone.norm_cfg.type=IBNX'])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "'IBNX'" in err and 'Cannot find None' not in err


def test_atomic_writes_registered_and_keep_the_old_file(tmp_path):
    from mmengine.fileio import get_file_backend
    from mmengine.runner import save_checkpoint
    setup()  # what the tools call first
    assert isinstance(get_file_backend(str(tmp_path / 'a.pth')), AtomicLocalBackend)
    target = tmp_path / 'iter_1.pth'
    save_checkpoint(dict(meta=dict(iter=1), state_dict={'w': torch.ones(3)}), str(target))
    assert torch.load(target, weights_only=True)['meta']['iter'] == 1
    old = target.read_bytes()

    class Unwritable:  # file.write() raises half way through the atomic write
        pass

    with pytest.raises(TypeError):
        atomic_write_bytes(Unwritable(), str(target))
    assert target.read_bytes() == old  # the previous checkpoint is intact
    assert os.listdir(tmp_path) == ['iter_1.pth']  # no temporary file left behind
    get_file_backend(str(target)).put_text('iter_1.pth', str(tmp_path / 'last_checkpoint'))
    assert (tmp_path / 'last_checkpoint').read_text() == 'iter_1.pth'


def test_dist_scripts_pick_the_project_venv(tmp_path):
    bad = run_tool(['tools/dist_train.sh', 'configs/none.py', 1], check=False, PYTHON='/nonexistent/python')
    assert bad.returncode == 2 and "'/nonexistent/python' cannot import torch" in bad.stderr
    assert 'make install' in bad.stderr and 'PYTHON=' in bad.stderr
    if not osp.exists(osp.join(REPO, '.venv', 'bin', 'python')):
        pytest.skip('no project .venv in this checkout')
    env = dict(PYTHON='', PATH='/usr/bin:/bin')  # outside an activated venv, nothing on PATH has torch
    proc = run_tool(['tools/dist_train.sh', 'configs/none.py', 1], check=False, **env)
    assert "config file not found: 'configs/none.py'" in proc.stdout + proc.stderr  # train.py ran in the venv


def test_show_interval_and_tta_plumbing(tmp_path):
    test_tool = load_tool('test')
    ckpt = real_checkpoint(tmp_path / 'c.pth')
    cfg = test_tool.build_cfg(test_tool.parse_args([osp.join(REPO, DEMO_CONFIG), str(ckpt), '--show-dir', 'v']))
    assert cfg.default_hooks.visualization.interval == 1
    with pytest.raises(ValueError, match='--tta needs tta_pipeline in the config'):
        test_tool.build_cfg(test_tool.parse_args([osp.join(REPO, DEMO_CONFIG), str(ckpt), '--tta']))
    tta_config = tmp_path / 'tta.py'
    tta_config.write_text(f"_base_ = [{osp.join(REPO, DEMO_CONFIG)!r}]\n"
                          "tta_model = dict(type='SegTTAModel')\n"
                          "tta_pipeline = [dict(type='LoadImageFromFile'), dict(type='TestTimeAug', transforms=[\n"
                          "    [dict(type='RandomFlip', prob=0.), dict(type='RandomFlip', prob=1.)],\n"
                          "    [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])]\n")
    cfg = test_tool.build_cfg(test_tool.parse_args([str(tta_config), str(ckpt), '--tta']))
    assert cfg.model.type == 'SegTTAModel' and cfg.model.module.type == 'EncoderDecoder'
    assert cfg.test_dataloader.dataset.pipeline[1]['type'] == 'TestTimeAug'


def test_show_dir_paints_every_batch(tiny_demo_data, tmp_path):
    """4 target images, batch 2: with --show-dir every image is painted (the hook's default interval is 50)."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    model = MODELS.build(Config.fromfile(osp.join(REPO, DEMO_CONFIG)).model)
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'm.pth')
    # a subprocess (tools/test.py's smoke run): in-process, a visualizer built by an earlier test may be reused
    run_tool([
        'tools/test.py', DEMO_CONFIG, tmp_path / 'm.pth', '--work-dir', tmp_path / 'wd', '--show-dir', tmp_path / 'vis',
        '--cfg-options', *tiny_seg_options(tiny_demo_data)
    ])
    painted = [f for _, _, files in os.walk(tmp_path / 'vis') for f in files if f.endswith('.png')]
    assert len(painted) == 4, painted
