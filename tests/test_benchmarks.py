"""The benchmark scripts run at a tiny shape and report every norm against BN."""
from tool_loader import load_tool

bench = load_tool('benchmark_norms')


def test_benchmark_norms_tiny(tmp_path):
    out = tmp_path / 'bench.md'
    rows = bench.main([
        '--shapes', '2x8x8x8', '--repeats', '1', '--norms', 'BN', 'AdaBN', 'IBN', 'PBN', 'RN', '--model',
        '--model-input', '2x3x32x32', '--model-repeats', '1', '--out',
        str(out)
    ])
    layer_rows = [r for r in rows if 'shape' in r]
    model_rows = [r for r in rows if 'iter_s' in r]
    assert {r['norm'] for r in layer_rows} == {'BN', 'AdaBN', 'IBN', 'PBN', 'RN'}
    assert all(r['train_ms'] > 0 and r['eval_ms'] > 0 and r['train_ratio'] > 0 for r in layer_rows)
    assert [r['norm'] for r in model_rows] == list(bench.MODEL_NORMS)
    assert model_rows[0]['ratio'] == 1.0 and all(r['iter_s'] > 0 for r in model_rows)
    text = out.read_text()
    assert '| norm | shape (N×C×H×W) |' in text and '| norm in backbone | input | s / iter |' in text
    assert 'torch ' in text.splitlines()[0]


def test_goal_verdicts():
    assert bench._verdict(1.0, 1.1) == '≤ 1.1 ✓'
    assert bench._verdict(1.21, 1.1) == '≤ 1.1 ✗ (+10 %)'
    assert bench._goal(bench.TRAIN_GOALS, 'IBN-0.25') == 1.10 and bench._goal(bench.TRAIN_GOALS, 'PBN-loop') is None


def test_device_option_is_checked(capsys):
    import pytest
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as err:
            bench.main(['--device', 'cuda', '--norms', 'BN', '--shapes', '2x4x4x4', '--repeats', '1'])
        assert err.value.code == 2 and 'CUDA is not available' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(['--device', 'tpu', '--norms', 'BN'])
    assert 'cpu, cuda or cuda:N' in capsys.readouterr().err


def test_paired_ratio_is_the_median_of_interleaved_pairs():
    calls = []
    ref_s, s, ratio = bench.paired_seconds(lambda: calls.append('ref'), lambda: calls.append('case'), 4, warmup=1)
    assert calls == ['ref', 'case'] + ['ref', 'case', 'case', 'ref'] * 2  # warm-up, then alternating order
    assert ref_s > 0 and s > 0 and ratio > 0
