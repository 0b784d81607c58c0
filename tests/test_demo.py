"""`make demo`'s pipeline at a tiny size: real tools/train.py + tools/test.py per method, a results table."""
import json
import os.path as osp

from conftest import run_tool


def test_demo_pipeline_tiny(tiny_demo_data, tmp_path):
    work_dir = tmp_path / 'demo'
    proc = run_tool(['tools/demo.py', '--data-root', tiny_demo_data, '--work-dir', work_dir, '--iters', 2,
                     '--num-source-train', 8, '--num-source-val', 4, '--num-target', 4, '--data-seed', 1,
                     '--loader-options', 'num_workers=0',
                     'persistent_workers=False', 'batch_size=2'])
    results = json.loads((work_dir / 'results.json').read_text())
    assert 'BN' in results
    for row in results.values():
        assert 0 <= row['source'] <= 100 and 0 <= row['target'] <= 100
    table = (work_dir / 'results.md').read_text()
    assert table.splitlines()[0].startswith('| method | source-val mIoU | target mIoU')
    assert f"{results['BN']['target']:.2f}" in table and f"{results['BN']['target']:.2f}" in proc.stdout
    assert osp.isfile(work_dir / 'BN' / 'iter_2.pth')
