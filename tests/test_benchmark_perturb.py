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
    assert model_rows[0]['ratio'] == 1.0 and all(r['iter_s'] > 0 for r in model_rows)
    # every configured position of every layer is timed once
    assert len(layer_rows) == sum(len(pos) for _, pos in bench.VARIANTS.values())
    assert all(r['ms'] > 0 and r['ratio'] > 0 for r in layer_rows)
    text = out.read_text()
    assert '| perturbation | input | s / iter | × without | goal |' in text and '| layer | position |' in text


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


def test_configured_p_is_reported_as_a_mean(tmp_path):
    out = tmp_path / 'bench.md'
    rows = bench.main([
        '--layers', 'MixStyle', '--model-input', '2x3x32x32', '--model-repeats', '2',
        '--layer-crop', '32', '--layer-repeats', '1', '--p', '0.5', '--out',
        str(out)
    ])
    assert [r['variant'] for r in rows if 'iter_s' in r] == ['none (BN)', 'MixStyle']
    assert 'mean of 2 round-robin rounds, layers at their config placement with p=0.5,' in out.read_text(
    )


@pytest.mark.parametrize('argv', [['--layer-repeats', '0'], ['--p', '0'], ['--p', '1.5']])
def test_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err
