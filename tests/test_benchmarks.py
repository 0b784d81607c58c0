"""The benchmark scripts run at a tiny shape and report every norm against BN."""
from tool_loader import load_tool

bench = load_tool('benchmark_norms')


def test_benchmark_norms_tiny(tmp_path):
    out = tmp_path / 'bench.md'
    rows = bench.main([
        '--shapes', '2x8x8x8', '--repeats', '1', '--norms', 'BN', 'AdaBN', 'IBN', 'PBN', 'RN',
        '--model', '--model-input', '2x3x32x32', '--model-repeats', '1', '--out',
        str(out)
    ])
    layer_rows = [r for r in rows if 'shape' in r]
    model_rows = [r for r in rows if 'iter_s' in r]
    assert {r['norm'] for r in layer_rows} == {'BN', 'AdaBN', 'IBN', 'PBN', 'RN'}
    assert [r['norm'] for r in model_rows] == list(bench.MODEL_NORMS)
    assert model_rows[0]['ratio'] == 1.0
    text = out.read_text()  # the tables are the tool's output: each row with its numbers
    assert '| norm | shape (N×C×H×W) |' in text and '| norm in backbone | input | s / iter |' in text
    assert 'torch ' in text.splitlines()[0]
    for r in layer_rows:
        assert (f"| {r['norm']} | {r['shape']} | {r['train_ms']:.2f} | {r['train_ratio']:.2f} |"
                in text)
    for r in model_rows:
        assert f"| {r['norm']} | 2x3x32x32 | {r['iter_s']:.3f} | {r['ratio']:.2f} |" in text


def test_goal_verdicts():
    assert bench._verdict(1.0, 1.1) == '≤ 1.1 ✓'
    assert bench._verdict(1.21, 1.1) == '≤ 1.1 ✗ (+10 %)'
    assert bench._goal(bench.TRAIN_GOALS, 'IBN-0.25') == 1.10 and bench._goal(
        bench.TRAIN_GOALS, 'PBN-loop') is None


def test_device_option_is_checked(capsys):
    import pytest
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as err:
            bench.main(
                ['--device', 'cuda', '--norms', 'BN', '--shapes', '2x4x4x4', '--repeats', '1'])
        assert err.value.code == 2 and '--device cuda' in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        bench.main(['--device', 'tpu', '--norms', 'BN'])
    message = capsys.readouterr().err
    assert err.value.code == 2 and '--device' in message and "'tpu'" in message


def test_paired_ratio_is_the_median_of_interleaved_pairs(monkeypatch):
    import sys
    calls = []
    # scripted seconds per pair: ref 1, 2, 3, 4 and case 2, 6, 3, 8 -> ratios 2, 3, 1, 2
    seconds = dict(ref=iter([1.0, 2.0, 3.0, 4.0]), case=iter([2.0, 6.0, 3.0, 8.0]))

    def timed(fn, device):
        fn()
        return next(seconds[calls[-1]])

    monkeypatch.setattr(sys.modules[bench.paired_seconds.__module__], 'timed', timed)
    ref_s, s, ratio = bench.paired_seconds(
        lambda: calls.append('ref'), lambda: calls.append('case'), 4, warmup=1)
    assert calls == ['ref', 'case'
                     ] + ['ref', 'case', 'case', 'ref'] * 2  # warm-up, then alternating order
    # medians of each side, and the median of the per-pair ratios (not 4.5 / 2.5 = 1.8)
    assert (ref_s, s, ratio) == (2.5, 4.5, 2.0)


def test_benchmark_recalibration_tiny_fills_its_section(tmp_path):
    """tools/benchmark_recalibration.py: exact one-pass statistics, every row timed, the doc
    section replaced."""
    recal = load_tool('benchmark_recalibration')
    doc = tmp_path / 'doc.md'
    doc.write_text('before\n<!-- benchmark:start -->\nold\n<!-- benchmark:end -->\nafter\n')
    res = recal.main([
        '--batches', '2', '3', '--size', '64', '--repeats', '1', '--threads', '1', '--out',
        str(doc)
    ])
    var_err, mean_err = res['errors']['mmnorm recalibrate_bn (one pass)']
    # against float64 statistics of torch.cat of the BN inputs (2x2 maps in the last stage at 64x64:
    # train-mode BN on 8-12 values per channel amplifies float32 rounding of earlier layers, hence
    # 1e-4 rather than 1e-5)
    assert var_err < 1e-4 and mean_err < 1e-4
    assert res['errors']['EMA, momentum 0.1'][0] > 1e-3  # the references tell estimators apart
    assert set(
        res['times']) == {'forward_eval', 'forward_train', 'one_pass', 'update_bn', 'layerwise'}
    text = doc.read_text()
    assert text.startswith('before\n') and text.endswith('after\n') and 'old' not in text
    assert '| `recalibrate_bn` one pass |' in text


def test_benchmark_recalibration_bad_out_is_refused_before_timing(tmp_path, capsys):
    import pytest
    recal = load_tool('benchmark_recalibration')
    no_markers = tmp_path / 'plain.md'
    no_markers.write_text('no section\n')
    for out in (tmp_path / 'missing.md', no_markers):
        with pytest.raises(SystemExit) as exc:
            recal.main(['--out', str(out)])
        assert exc.value.code == 2 and f'--out {str(out)!r}' in capsys.readouterr().err
    assert no_markers.read_text() == 'no section\n'
    with pytest.raises(SystemExit):
        recal.main(['--batches', '1', '4'])
