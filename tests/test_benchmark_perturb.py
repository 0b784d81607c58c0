"""tools/benchmark_perturb.py runs at a tiny size and reports every layer against the model / BN
without it."""
import pytest
from tool_loader import load_tool

bench = load_tool('benchmark_perturb')


def test_benchmark_perturb_tiny(tmp_path):
    out = tmp_path / 'bench.md'
    rows = bench.main([
        '--model-input', '2x3x32x32', '--model-repeats', '1', '--layer-batch', '2', '--layer-crop',
        '32', '--layer-repeats', '1', '--out',
        str(out)
    ])
    model_rows = [r for r in rows if 'iter_s' in r]
    layer_rows = [r for r in rows if 'ms' in r]
    assert [r['variant'] for r in model_rows] == ['none (BN)', 'MixStyle', 'EFDMix', 'DSU']
    base = model_rows[0]['iter_s']
    assert [r['ratio']
            for r in model_rows] == [pytest.approx(r['iter_s'] / base) for r in model_rows]
    # every configured position of every layer is timed once, against BN2d on the same shape
    assert len(layer_rows) == sum(len(pos) for _, pos in bench.VARIANTS.values())
    assert [r['ratio']
            for r in layer_rows] == [pytest.approx(r['ms'] / r['bn_ms']) for r in layer_rows]
    text = out.read_text()  # the tables are the tool's output: each row with its numbers
    assert '| perturbation | input | s / iter | × without | goal |' in text and '| layer | position |' in text
    for r in model_rows:
        assert f"| {r['variant']} | 2x3x32x32 | {r['iter_s']:.3f} | {r['ratio']:.3f} |" in text
    for r in layer_rows:
        assert f"| {r['layer']} | {r['where']} | {r['shape']} | {r['ms']:.2f} |" in text


def test_variant_switch_leaves_weights_and_removes_layers():
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        backbone = MODELS.build(
            dict(type='PerturbResNetV1c', depth=18, base_channels=8, stem_channels=8))
    keys = set(backbone.state_dict())
    bench.set_variant(backbone, 'DSU', 0.5)
    assert backbone.perturb_positions == ('conv1', 'stem', 0, 1, 2, 3)
    assert set(backbone.state_dict()) == keys
    assert backbone.perturb_stem.p == 0.5
    bench.set_variant(backbone, None, 1.0)
    assert backbone.perturb_positions == ()
    assert not hasattr(backbone, 'perturb_stem') and not hasattr(backbone, 'perturb_conv1')


def test_configured_p_is_reported_as_a_mean(tmp_path, monkeypatch):
    # scripted seconds: a warm-up round, then (BN, MixStyle) = (1, 2) and (3, 6); the layer table
    # takes 1 s per call. The mean of the rounds is (2, 4), their median would be (3, 6).
    seconds = iter([9.0, 9.0, 1.0, 2.0, 3.0, 6.0])
    monkeypatch.setattr(bench, 'timed', lambda fn, device: next(seconds, 1.0))
    out = tmp_path / 'bench.md'
    rows = bench.main([
        '--layers', 'MixStyle', '--model-input', '2x3x32x32', '--model-repeats', '2',
        '--layer-crop', '32', '--layer-repeats', '1', '--p', '0.5', '--out',
        str(out)
    ])
    model_rows = [r for r in rows if 'iter_s' in r]
    assert [(r['variant'], r['iter_s'], r['ratio'])
            for r in model_rows] == [('none (BN)', 2.0, 1.0), ('MixStyle', 4.0, 2.0)]
    assert '| MixStyle | 2x3x32x32 | 4.000 | 2.000 |' in out.read_text()


@pytest.mark.parametrize('argv', [['--layer-repeats', '0'], ['--p', '0'], ['--p', '1.5']])
def test_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err
