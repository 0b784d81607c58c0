"""tools/benchmark_tta.py and tools/analysis/tta_stream.py at a tiny size, and the drifting-stream generator."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import DEMO_CONFIG, REPO, run_tool
from PIL import Image
from tool_loader import load_tool

from mmnorm.datasets.synthetic_stream import generate_drifting_stream, shift_frame, stream_schedule


def test_stream_schedule_phases_and_strengths():
    schedule = stream_schedule(40)
    assert [s['phase']
            for s in schedule] == ['clear'] * 8 + ['fog'] * 12 + ['colour'] * 12 + ['back'] * 8
    fog = [s['fog'] for s in schedule]
    assert fog[:8] == [0.0] * 8 and fog[19] == 1.0 and fog[-8:] == [0.0] * 8
    assert all(a < b for a, b in zip(fog[8:20], fog[9:20]))  # fog ramps in
    assert schedule[31]['colour'] == 1.0 and schedule[31]['fog'] == 0.0
    with pytest.raises(ValueError, match='num_frames must be an int >= 4.*got 2'):
        stream_schedule(2)


def test_shift_frame_fog_whitens_far_pixels():
    rng = np.random.default_rng(0)
    image = np.full((64, 128, 3), 0.2, np.float32)
    depth = np.full((64, 128), 100.0, np.float32)
    clear = shift_frame(image, depth, rng, fog=0.0, colour=0.0)
    foggy = shift_frame(image, depth, rng, fog=1.0, colour=0.0)
    expected = 0.2 * np.exp(-0.08 * 100) + 0.8 * (1 - np.exp(-0.08 * 100))
    assert abs(clear.mean() - 0.2) < 0.01 and abs(foggy.mean() - expected) < 0.01


def test_generate_drifting_stream_writes_cityscapes_layout(tmp_path):
    schedule = generate_drifting_stream(str(tmp_path), 8, seed=3)
    assert len(schedule) == 8
    img = tmp_path / 'leftImg8bit/val/stream/stream_000000_000007_leftImg8bit.png'
    ann = tmp_path / 'gtFine/val/stream/stream_000000_000007_gtFine_labelTrainIds.png'
    assert Image.open(img).size == (128, 64) and set(np.unique(np.asarray(Image.open(ann)))) <= set(
        range(19))
    assert json.loads((tmp_path / 'stream.json').read_text()) == schedule
    assert generate_drifting_stream(
        str(tmp_path), 8, seed=3) == schedule  # same arguments: nothing rewritten
    with pytest.raises(FileExistsError, match='other settings'):
        generate_drifting_stream(str(tmp_path), 12, seed=3)


def test_benchmark_tta_tiny(tmp_path):
    tool = load_tool('benchmark_tta')
    doc = tmp_path / 'doc.md'
    doc.write_text('# x\n<!-- benchmark:start -->\nold\n<!-- benchmark:end -->\n')
    rows = tool.main([
        '--batch-size', '2', '--size', '32', '64', '--repeats', '1', '--threads', '1', '--out',
        str(doc)
    ])
    assert list(rows) == [
        'inference', 'BN in train mode', 'bn', 'prior', 'tent', 'sar', 'eata', 'cotta',
        'cotta-noaug'
    ]
    base = rows['inference']
    assert [r['ratio'] for r in rows.values()
            ] == [pytest.approx(r['seconds'] / base['seconds']) for r in rows.values()]
    assert rows['tent']['peak'] > rows['inference']['peak'] > 0  # the backward keeps activations
    text = doc.read_text()
    assert 'old' not in text and '| tent |' in text and '<= 2.50x' in text and '<= 4.50x' in text
    tent = rows['tent']  # the table is the tool's output: the row with its numbers
    assert f"| tent | {tent['seconds']:.4f} | {tent['ratio']:.2f} |" in text
    # SAR's two passes cost more than TENT's one; CoTTA's 14 teacher views more than without them
    assert rows['sar']['seconds'] > rows['tent']['seconds']
    assert rows['cotta']['seconds'] > rows['cotta-noaug']['seconds']
    rows = tool.main([
        '--model', 'segformer-b0', '--methods', 'tent', '--batch-size', '1', '--size', '32', '64',
        '--repeats', '1', '--threads', '1'
    ])
    assert list(rows) == ['inference', 'BN in train mode', 'tent']  # SegformerHead has a BN


SEGFORMER_DEMO = 'configs/demo/segformer_mit-mini_1xb8-1k_demo-gta5-cityscapes-64x128.py'
STREAM_ROWS = ('source', 'bn (test-batch stats)', 'AdaBN (offline)', 'tent', 'tent + safeguards',
               'sar', 'eata', 'cotta')


# The default run covers the stream through the demo (tests/test_demo.py: both models, every method,
# its table); this adds the JSON layout and the stream-root mismatch message.
@pytest.mark.slow
def test_tta_stream_tiny(tmp_path, tiny_demo_data):
    """Both demo models (BN DeepLabV3+, LayerNorm SegFormer) through every method of the stream."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    ckpts = []
    for i, config in enumerate((DEMO_CONFIG, SEGFORMER_DEMO)):
        cfg = Config.fromfile(osp.join(REPO, config))
        cfg.work_dir = str(tmp_path / f'init{i}')
        torch.manual_seed(0)
        ckpts.append(tmp_path / f'model{i}.pth')
        torch.save(dict(meta=dict(), state_dict=Runner.from_cfg(cfg).model.state_dict()), ckpts[-1])
    ckpt = ckpts[0]
    out = tmp_path / 'out'
    proc = run_tool([
        'tools/analysis/tta_stream.py', DEMO_CONFIG, ckpts[0], SEGFORMER_DEMO, ckpts[1], '--labels',
        'BN', 'SegFormer', '--stream-root', tmp_path / 'stream', '--frames', 8, '--batch-size', 2,
        '--window', 1, '--out-dir', out, '--fisher-root',
        osp.join(tiny_demo_data, 'gta5'), '--fisher-frames', 4
    ],
                    timeout=600)
    table = (out / 'stream_results.md').read_text()
    assert table.index('BN:') < table.index('SegFormer:')
    for name in STREAM_ROWS:
        assert table.count(f'| {name} |') == 2
    assert '| clear | fog | colour | back | whole stream | resets |' in table
    result = json.loads((out / 'stream_results.json').read_text())
    assert result['phases'] == ['clear', 'fog', 'colour', 'back']
    for rows in result['models'].values():
        assert list(rows) == list(STREAM_ROWS) and len(rows['source']['curve']) == 4
    assert (out / 'stream_miou.png').stat().st_size > 0
    assert proc.returncode == 0
    # the same root asked for a stream of another length: a message naming the folder, the stream kept
    meta = (tmp_path / 'stream' / 'meta.json').read_text()
    with pytest.raises(
            SystemExit) as exc:  # in-process: the subprocess above is this tool's smoke run
        load_tool('analysis/tta_stream').main([
            osp.join(REPO, DEMO_CONFIG),
            str(ckpt), '--stream-root',
            str(tmp_path / 'stream'), '--frames', '16', '--out-dir',
            str(out)
        ])
    assert str(tmp_path / 'stream') in str(exc.value.code) and '--stream-root' in str(
        exc.value.code)
    assert (tmp_path / 'stream' / 'meta.json').read_text() == meta
