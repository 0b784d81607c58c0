"""tools/gpu_check.py: the CPU dry run of the GPU check (every stage that runs without CUDA, at tiny
sizes), its coverage of the registered layers and TTA methods, and its set-up's wheel check."""
import json

import pytest
import torch
from conftest import run_tool
from mmengine.registry import MODELS
from tool_loader import load_tool

import mmnorm  # noqa: F401
from mmnorm.tta import METHODS

gpu_check = load_tool('gpu_check')


def test_layer_table_covers_every_registered_layer():
    table = gpu_check.layer_table()
    registered = {
        name
        for name, cls in MODELS.module_dict.items() if cls.__module__.startswith('mmnorm.models.')
    }
    assert registered <= set(table) and set(gpu_check.VARIANTS) <= set(table)
    for name, build in table.items():
        module = build(8)
        x = torch.randn(4, 8, 6, 6)
        with gpu_check.split_context(module, x):
            assert module(x).shape == x.shape, name


def test_relative_error_is_max_abs_difference_over_max_reference():
    ref = {'a': torch.tensor([1.0, -4.0]), 'b': torch.tensor([2.0])}
    got = {'a': torch.tensor([1.5, -4.0]), 'b': torch.tensor([2.0 + 1e-3])}
    assert gpu_check.relative_error(got, ref) == pytest.approx(0.5 / 4.0)


def test_setup_names_missing_wheels(tmp_path):
    (tmp_path / 'mmengine-0.10.7-py3-none-any.whl').write_bytes(b'')
    with pytest.raises(SystemExit, match='lacks mmsegmentation==1.2.2.*mmcv source tarball'):
        gpu_check.required_wheels(str(tmp_path))
    with pytest.raises(SystemExit, match='no such folder.*make gpu-wheels'):
        gpu_check.required_wheels(str(tmp_path / 'none'))


def test_bad_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--device', 'cpu', '--shape', '2x3x8'])
    assert 'NxCxHxW' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--device', 'cpu', '--ddp-ranks', '0'])
    assert '--ddp-ranks must be >= 1, got 0' in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_check.parse_args(['--device', 'cuda'])
        assert 'use --device cpu' in capsys.readouterr().err


def test_section_from_a_brought_back_report(tmp_path):
    doc, report = tmp_path / 'benchmarks.md', tmp_path / 'gpu_check.md'
    doc.write_text('# B\n\n<!-- gpu-check:start -->\nNot run yet.\n<!-- gpu-check:end -->\n\nend\n')
    report.write_text('### GPU check\n\n| a |\n')
    gpu_check.main(['--section-from', str(report), '--doc', str(doc)])  # on a CPU-only machine too
    assert doc.read_text() == ('# B\n\n<!-- gpu-check:start -->\n### GPU check\n\n| a |\n\n'
                               '<!-- gpu-check:end -->\n\nend\n')
    with pytest.raises(SystemExit, match='has no <!-- gpu-check:start -->'):
        gpu_check.main(['--device', 'cpu', '--section-from', str(report), '--doc', str(report)])


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_cpu_dry_run(tmp_path):
    """Every stage on the CPU at tiny sizes, through the command line (torchrun for DDP): the CPU
    is both sides of the equality check (float32 exactly equal; CPU bf16 autocast within the bf16
    tolerance of float32), every layer and TTA method present, one row per model norm."""
    doc = tmp_path / 'benchmarks.md'
    doc.write_text('# x\n\n<!-- gpu-check:start -->\nold\n<!-- gpu-check:end -->\n')
    args = [
        'tools/gpu_check.py', '--device', 'cpu', '--small', '--out', tmp_path, '--budget-s', 3000,
        '--compile-layers', 'IBN', '--doc', doc
    ]
    run_tool(args, timeout=2400)
    res = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert res['skipped'] == [] and res['failures'] == 0
    equality = [r for key in gpu_check.EQUALITY for r in res[key]]
    layers = {r['name'] for r in equality if r['kind'] == 'layer'}
    assert layers == set(gpu_check.layer_table())
    assert {r['name'] for r in equality if r['kind'] == 'TTA'} == set(METHODS)
    for r in equality:
        assert r['ok'], r
        if r['dtype'] == 'float32':
            assert r['error'] == 0.0, r  # the same computation on the same device
    # bf16 autocast changes the numbers (the conv / matmul of the model runs in bf16)
    assert any(r['error'] > 0 for r in equality if r['dtype'] == 'bf16 autocast')
    bench_norms = load_tool('benchmark_norms')
    assert [r['norm'] for r in res['models']] == list(bench_norms.MODEL_NORMS)
    assert all(r['iter_s'] > 0 and r['peak_mib'] > 0 for r in res['models'])
    assert set(res['tta']) == {'inference', *METHODS}
    assert set(res['recalibration']) == {'train-mode forwards', 'recalibrate_bn'}
    assert [r['norm'] for r in res['compile']] == ['IBN']
    assert [r['norm'] for r in res['ddp']] == list(bench_norms.MODEL_NORMS)
    for r in res['ddp']:  # one gloo rank: DDP changes nothing
        assert r['world_size'] == 1 and r['loss_error'] == 0 and r['weight_error'] == 0, r
    text = doc.read_text()
    assert 'old' not in text and text == ('# x\n\n<!-- gpu-check:start -->\n' +
                                          (tmp_path / 'gpu_check.md').read_text() +
                                          '\n<!-- gpu-check:end -->\n')
    for r in res['models']:
        assert f"| {r['norm']} | {r['iter_s']:.3f} | {r['ratio']:.2f} |" in text
