"""User errors in the tools end with one message naming the value (exit 2, no traceback), argument
errors of layers / hooks / TTA before any weights load; eps and momentum rules of every layer;
checkpoint files are written atomically; the dist scripts find the project's interpreter;
tools/test.py --show-dir / --tta."""
import os
import os.path as osp
import pickle
import re

import pytest
import torch
from conftest import DEMO_CONFIG, REPO, run_tool, tiny_seg_options
from mmengine.config import Config
from mmnorm_tools.config import check_norm_types
from tool_loader import load_tool

from mmnorm.runtime import (AtomicLocalBackend, CheckpointFileError, atomic_write_bytes,
                            check_checkpoint_file, setup)


def real_checkpoint(path):
    torch.save(dict(meta=dict(iter=1), state_dict={'w': torch.randn(256, 256)}), path)
    return path


def test_checkpoint_directory_empty_truncated(tmp_path):
    with pytest.raises(
            CheckpointFileError,
            match=f"checkpoint '{tmp_path}' is a directory; pass a checkpoint file"):
        check_checkpoint_file(str(tmp_path))
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointFileError, match='is an empty file'):
        check_checkpoint_file(str(empty))
    full = real_checkpoint(tmp_path / 'full.pth')
    check_checkpoint_file(str(full))  # loads
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(full.read_bytes()[:len(full.read_bytes()) // 2])
    with pytest.raises(
            CheckpointFileError, match='cut.pth.* is truncated or not a torch checkpoint'):
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
            ValueError,
            match=r"model.backbone.norm_cfg.type='IBNX' is not a registered norm layer "
            r"\(did you mean 'IBN'\?\); available norms: .*AdaBN.*BN.*GN.*IBN.*PBN.*RN"):
        check_norm_types(cfg)
    with pytest.raises(SystemExit) as exc:
        load_tool('train').main(
            [osp.join(REPO, DEMO_CONFIG), '--cfg-options', 'model.backbone.norm_cfg.type=IBNX'])
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
    bad = run_tool(['tools/dist_train.sh', 'configs/none.py', 1],
                   check=False,
                   PYTHON='/nonexistent/python')
    assert bad.returncode == 2 and "'/nonexistent/python' cannot import torch" in bad.stderr
    assert 'make install' in bad.stderr and 'PYTHON=' in bad.stderr
    if not osp.exists(osp.join(REPO, '.venv', 'bin', 'python')):
        pytest.skip('no project .venv in this checkout')
    env = dict(
        PYTHON='', PATH='/usr/bin:/bin')  # outside an activated venv, nothing on PATH has torch
    proc = run_tool(['tools/dist_train.sh', 'configs/none.py', 1], check=False, **env)
    # train.py ran in the venv
    assert "config file not found: 'configs/none.py'" in proc.stdout + proc.stderr


def test_show_interval_and_tta_plumbing(tmp_path):
    test_tool = load_tool('test')
    ckpt = real_checkpoint(tmp_path / 'c.pth')
    cfg = test_tool.build_cfg(
        test_tool.parse_args([osp.join(REPO, DEMO_CONFIG),
                              str(ckpt), '--show-dir', 'v']))
    assert cfg.default_hooks.visualization.interval == 1
    with pytest.raises(ValueError, match='--tta needs tta_pipeline in the config'):
        test_tool.build_cfg(test_tool.parse_args([osp.join(REPO, DEMO_CONFIG), str(ckpt), '--tta']))
    tta_config = tmp_path / 'tta.py'
    tta_config.write_text(
        f"_base_ = [{osp.join(REPO, DEMO_CONFIG)!r}]\n"
        "tta_model = dict(type='SegTTAModel')\n"
        "tta_pipeline = [dict(type='LoadImageFromFile'), dict(type='TestTimeAug', transforms=[\n"
        "    [dict(type='RandomFlip', prob=0.), dict(type='RandomFlip', prob=1.)],\n"
        "    [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])]\n")
    cfg = test_tool.build_cfg(test_tool.parse_args([str(tta_config), str(ckpt), '--tta']))
    assert cfg.model.type == 'SegTTAModel' and cfg.model.module.type == 'EncoderDecoder'
    assert cfg.test_dataloader.dataset.pipeline[1]['type'] == 'TestTimeAug'


def test_show_dir_paints_every_batch(tiny_demo_data, tmp_path):
    """4 target images, batch 2: with --show-dir every image is painted (the hook's default
    interval is 50)."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    model = MODELS.build(Config.fromfile(osp.join(REPO, DEMO_CONFIG)).model)
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'm.pth')
    # a subprocess (tools/test.py's smoke run): in-process, a visualizer built by an earlier test
    # may be reused
    run_tool([
        'tools/test.py', DEMO_CONFIG, tmp_path / 'm.pth', '--work-dir', tmp_path / 'wd',
        '--show-dir', tmp_path / 'vis', '--cfg-options', *tiny_seg_options(tiny_demo_data)
    ])
    painted = [f for _, _, files in os.walk(tmp_path / 'vis') for f in files if f.endswith('.png')]
    assert len(painted) == 4, painted


# -- argument errors of layers, hooks and TTA through the tools, before any weights load ----------
def run_main(tool: str, argv: list, capsys) -> str:
    """``tools/<tool>.py``'s ``main(argv)`` in process; asserts exit status 2 and a one-line
    message; returns it."""
    with pytest.raises(SystemExit) as exc:
        load_tool(tool).main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith(f'tools/{tool}.py')]
    assert exc.value.code == 2, err[-2000:]
    # (a logger of an earlier test may report its closed stream: '--- Logging error ---')
    assert len(lines) == 1 and err.count('Traceback') == err.count('--- Logging error'), err[-2000:]
    return lines[0]


NORM = 'model.backbone.norm_cfg'


@pytest.mark.parametrize('options, expected', [
    ([f'{NORM}.type=IBN', f'{NORM}.ratio=1.5'
      ], r"model.backbone.norm_cfg \(IBN\): IBN ratio must be a number in \(0, 1\), got ratio=1.5"),
    ([f'{NORM}.type=RN', f'{NORM}.gate_range=[0.9,0.1]'
      ], r'model.backbone.norm_cfg \(RN\): RN gate_range must be .*got \[0.9, 0.1\]'),
    ([f'{NORM}.type=PBN', f'{NORM}.p=2'], r'\(PBN\): PBN p must be a number in \[0, 1\], got p=2'),
    ([f'{NORM}.type=AdaBN', f'{NORM}.prior=-1'], r'\(AdaBN\): AdaBN prior must be .*got -1'),
    ([f'{NORM}.type=IBN', f'{NORM}.eps=0'], r'\(IBN\): IBN eps must be a finite number > 0'),
    ([f'{NORM}.type=Conv2d'], r"model.backbone.norm_cfg.type='Conv2d' is not a norm layer .*"
     r'available norms: AdaBN, BN, .*IBN.*PBN, RN'),
    ([f'{NORM}.type=ReLU'], r"norm_cfg.type='ReLU' is not a norm layer"),
])
def test_train_layer_arguments_one_line_before_weights(options, expected, tmp_path, capsys):
    from unittest import mock

    from mmengine.runner import Runner
    with mock.patch.object(Runner, 'load_or_resume', side_effect=AssertionError('weights load')):
        line = run_main('train', [
            osp.join(REPO, DEMO_CONFIG), '--work-dir',
            str(tmp_path / 'wd'), '--cfg-options', *options
        ], capsys)
    assert re.search(expected, line), line


def config_with(tmp_path, text: str) -> str:
    path = tmp_path / 'cfg.py'
    path.write_text(f'_base_ = [{osp.join(REPO, DEMO_CONFIG)!r}]\n{text}\n')
    return str(path)


@pytest.mark.parametrize('backbone, expected', [
    ("dict(type='PerturbResNetV1c', perturb=dict(type='MixStlye'), after_stages=(0, ))",
     r"model.backbone.perturb.type='MixStlye' is not a perturbation layer \(did you mean "
     r"'MixStyle'\?\); valid: DSU, EFDMix, MixStyle"),
    ("dict(type='PerturbResNetV1c', perturb=dict(type='DSU', p=1.5), after_stages=(0, ))",
     r'model.backbone.perturb \(DSU\): p .* must be in \[0, 1\], got p=1.5'),
    ("dict(type='PerturbResNetV1c', perturb=dict(type='MixStyle', eps=0), after_stages=(0, ))",
     r'model.backbone.perturb \(MixStyle\): MixStyle eps must be a finite number > 0, got eps=0'),
    ("dict(type='IBNResNetV1c', ibn=dict(type='c'))",
     r"model.backbone.ibn.type='c' is not an IBN-Net type; valid: a, b"),
])
def test_perturb_and_ibn_types_named(backbone, expected, tmp_path, capsys):
    config = config_with(tmp_path, f'model = dict(backbone={backbone})')
    line = run_main('train', [config, '--work-dir', str(tmp_path / 'wd')], capsys)
    assert re.search(expected, line), line


@pytest.mark.parametrize('hook, expected', [
    ("dict(type='TestTimeAdaptHook', method='tentt')",
     r"custom_hooks.0 \(TestTimeAdaptHook\): TestTimeAdaptHook method must be one of .*got 'tentt'"
     ),
    ("dict(type='TestTimeAdaptHook', method='tent', reliable=1.5)",
     r'custom_hooks.0 \(TestTimeAdaptHook\): reliable must be a number in \(0, 1\] or None, got 1.5'
     ),
    ("dict(type='TestTimeAdaptHook', method='bn', stpes=2)",
     r"custom_hooks.0 \(TestTimeAdaptHook\): .*'stpes'"),
    ("dict(type='AdaBNHook', num_samples=0)",
     r'custom_hooks.0 \(AdaBNHook\): num_samples must be a positive int or None, got 0'),
    ("dict(type='AdaBNHook', mode='fast')", r"custom_hooks.0 \(AdaBNHook\): mode must be .*'fast'"),
])
def test_test_tool_hook_arguments_before_the_model(hook, expected, tmp_path, capsys):
    """TTA / AdaBN hook options are refused from the config: no model is built, no checkpoint
    read."""
    from unittest import mock

    from mmengine.runner import Runner
    config = config_with(tmp_path, f'custom_hooks = [{hook}]')
    ckpt = real_checkpoint(tmp_path / 'c.pth')
    with mock.patch.object(Runner, '__init__', side_effect=AssertionError('Runner built')):
        line = run_main('test', [config, str(ckpt), '--work-dir', str(tmp_path / 'wd')], capsys)
    assert re.search(expected, line), line


# The analysis and deployment tools build the model themselves: a bad layer argument is named by
# its config key there too, before any output is written (tta_stream: before the stream).
TOOL_ARGS = {
    'analysis/bn_shift':
    lambda config, ckpt, out: [config, ckpt, '--out-dir', out],
    'analysis/tta_stream':
    lambda config, ckpt, out:
    [config, ckpt, '--stream-root', out / 'stream', '--out-dir', out, '--frames', '8'],
    'deployment/pytorch2onnx':
    lambda config, ckpt, out: [config, ckpt, '--out', out / 'm.onnx'],
}


@pytest.mark.parametrize('tool', list(TOOL_ARGS))
def test_analysis_and_deploy_tools_name_the_config_key(tool, tmp_path, capsys):
    config = config_with(tmp_path, "model = dict(backbone=dict(norm_cfg=dict(type='IBN', "
                         'ratio=1.5)))')
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as exc:
        ckpt = real_checkpoint(tmp_path / 'c.pth')  # not loaded: the build stops first
        load_tool(tool).main([str(a) for a in TOOL_ARGS[tool](config, ckpt, out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and 'Traceback' not in err, err[-2000:]
    assert re.search(
        r'error: model.backbone.norm_cfg \(IBN\): IBN ratio must be a number in '
        r'\(0, 1\), got ratio=1.5', err), err[-2000:]
    assert not out.exists()


def test_internal_errors_keep_their_traceback(tmp_path, capsys):
    """Only mmnorm's argument checks become one-liners: a plain ValueError raised while the
    model is built propagates."""
    from unittest import mock

    from mmnorm.models.norms import IBN
    with mock.patch.object(IBN, '__init__', side_effect=ValueError('internal')):
        with pytest.raises(ValueError, match='internal'):
            load_tool('train').main([
                osp.join(REPO, DEMO_CONFIG), '--work-dir',
                str(tmp_path / 'wd'), '--cfg-options', f'{NORM}.type=IBN'
            ])


# -- work dirs that cannot be written ---------------------------------------------------------
def test_work_dir_under_a_file(tmp_path, capsys):
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    line = run_main('train', [osp.join(REPO, DEMO_CONFIG), '--work-dir',
                              str(blocker / 'wd')], capsys)
    assert str(blocker) in line and 'choose another --work-dir' in line
    ckpt = real_checkpoint(tmp_path / 'c.pth')
    line = run_main('test',
                    [osp.join(REPO, DEMO_CONFIG),
                     str(ckpt), '--work-dir',
                     str(blocker / 'wd')], capsys)
    assert str(blocker) in line and 'choose another --work-dir' in line


def test_read_only_work_dir(tmp_path, capsys):
    if os.geteuid() == 0:
        # root writes through mode bits; sysfs refuses new folders even to root
        work_dir = '/sys/mmnorm_wd'
    else:
        ro = tmp_path / 'ro'
        ro.mkdir()
        os.chmod(ro, 0o500)
        work_dir = str(ro / 'wd')
    try:
        os.makedirs(work_dir)
    except OSError as err:
        import errno
        if err.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            pytest.skip(f'{work_dir} gives {err!r} here')
    else:
        pytest.skip(f'{work_dir} is writable here')
    line = run_main('train', [osp.join(REPO, DEMO_CONFIG), '--work-dir', work_dir], capsys)
    assert f'cannot write {work_dir!r}' in line and 'choose another --work-dir' in line


def test_subprocess_smoke_one_line_exit_2(tmp_path):
    """The one subprocess of these checks: a real interpreter exits 2 with one line on stderr."""
    proc = run_tool([
        'tools/train.py', DEMO_CONFIG, '--work-dir', tmp_path / 'wd', '--cfg-options',
        f'{NORM}.type=PBN', f'{NORM}.momentum=1.5'
    ],
                    check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith('tools/train.py')]
    assert lines == [
        'tools/train.py: error: model.backbone.norm_cfg (PBN): PBN momentum must be '
        'a number in [0, 1], got momentum=1.5'
    ], proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr


# -- eps > 0 and momentum in [0, 1] (or None where a cumulative average exists) in every layer --
def layer_factories():
    from mmnorm.models.norms import IBN, PBN, RN, AdaBN
    from mmnorm.models.perturb import DSU, MixStyle
    return {
        'IBN': lambda **kw: IBN(8, **kw),
        'RN': lambda **kw: RN(8, **kw),
        'PBN': lambda **kw: PBN(8, **kw),
        'AdaBN': lambda **kw: AdaBN(8, **kw),
        'MixStyle': lambda **kw: MixStyle(**kw),
        'DSU': lambda **kw: DSU(**kw),
    }


@pytest.mark.parametrize('layer', ['IBN', 'RN', 'PBN', 'AdaBN', 'MixStyle', 'DSU'])
@pytest.mark.parametrize('eps', [0, -1e-5, 0.0, float('nan'), float('inf'), '1e-5', True])
def test_eps_must_be_positive(layer, eps):
    from mmnorm.validation import ArgumentError
    with pytest.raises(ArgumentError, match=f'{layer} eps must be a finite number > 0, got eps='):
        layer_factories()[layer](eps=eps)
    assert layer_factories()[layer](eps=1e-3).eps == pytest.approx(1e-3)


@pytest.mark.parametrize('layer', ['IBN', 'RN', 'PBN', 'AdaBN'])
@pytest.mark.parametrize('momentum', [-0.1, 1.5, float('nan'), '0.1', True])
def test_momentum_out_of_range(layer, momentum):
    from mmnorm.validation import ArgumentError
    with pytest.raises(ArgumentError, match=rf'{layer} momentum must be a number in \[0, 1\]'):
        layer_factories()[layer](momentum=momentum)


@pytest.mark.parametrize('layer, none_ok', [('IBN', True), ('RN', True), ('AdaBN', True),
                                            ('PBN', False)])
def test_momentum_rule_as_torch_bn(layer, none_ok):
    """[0, 1] everywhere; None (cumulative average) where the layer keeps one, PBN refuses it."""
    from mmnorm.validation import ArgumentError

    def momentum_of(module):  # AdaBN keeps it in its domains' BN children
        return module.domain_bn('source').momentum if layer == 'AdaBN' else module.momentum

    for momentum in (0, 0.0, 0.5, 1):
        assert momentum_of(layer_factories()[layer](momentum=momentum)) == momentum
    if none_ok:
        assert momentum_of(layer_factories()[layer](momentum=None)) is None
    else:
        with pytest.raises(ArgumentError, match='got momentum=None'):
            layer_factories()[layer](momentum=None)
