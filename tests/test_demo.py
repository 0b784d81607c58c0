"""`make demo`'s pipeline at a tiny size: every method through the real tools/train.py + tools/test.py."""
import json

from conftest import run_tool

from tool_loader import METHODS


def test_demo_pipeline_tiny(tiny_demo_data, tmp_path):
    work_dir = tmp_path / 'demo'
    proc = run_tool(['tools/demo.py', '--data-root', tiny_demo_data, '--work-dir', work_dir, '--iters', 2,
                     '--seeds', 0, '--num-source-train', 8, '--num-source-val', 4, '--num-target', 4,
                     '--data-seed', 1, '--loader-options', 'num_workers=0', 'persistent_workers=False',
                     'batch_size=2'])
    results = json.loads((work_dir / 'results.json').read_text())
    assert list(results['summary']) == list(METHODS)  # every landed norm has a row
    for name, row in results['summary'].items():
        assert 0 <= row['source']['mean'] <= 100 and 0 <= row['target']['mean'] <= 100
        assert row['seeds'] == [0]
    per_seed = results['per_seed']
    assert per_seed['BN']['0']['source'] == per_seed['AdaBN']['0']['source']  # same weights, no test-time change
    assert results['summary']['BN']['gap_closed']['mean'] == 0.0
    table = (work_dir / 'results.md').read_text()
    assert '| method | source-val mIoU | target mIoU | BN gap closed (%) |' in table
    for name in METHODS:
        assert f'| {name} |' in table and f'| {name} |' in proc.stdout
    assert (work_dir / 'results.png').stat().st_size > 5000
    # the AdaBN row really recalibrated on the target pool before testing
    log = (work_dir / 'seed0' / 'AdaBN' / 'test_target.log').read_text()
    assert 'AdaBNHook' in log
    assert 'AdaBNHook' not in (work_dir / 'seed0' / 'BN' / 'test_target.log').read_text()
