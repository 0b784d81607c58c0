"""Label converters on fixture datasets with the traps of the real ones: size mismatches, corrupt
and missing files, re-runs (resume) and --overwrite."""
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
from conftest import run_tool
from dataset_fixtures import (GTA5_EXPECTED, MAPILLARY_EXPECTED, SYNTHIA_EXPECTED, apply,
                              build_fixture_data, id_map, save_palette)
from PIL import Image
from tool_loader import load_tool as load_converter

from mmnorm.datasets import Mapillary19Dataset
from mmnorm.datasets.conversion import (Frame, convert_frame, convert_frames, lut_from_mapping,
                                        read_index_label)


def load_tool(name):
    return load_converter(f'dataset_converters/{name}').main


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return build_fixture_data(tmp_path_factory.getbasetemp() / 'mmnorm_data')


def fresh_copy(src, dst, out_suffix='_labelTrainIds.png'):
    """Copy of a fixture dataset without the converted labels."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns('*' + out_suffix))
    return str(dst)


def broken_gta5(root, tmp_path):
    """Six good frames plus one per trap: 00007 label at half size, 00008 truncated label, 00009
    image of random bytes, 00010 no label, 00011 no image, 00012 RGB (not palette) label."""
    gta = fresh_copy(f'{root}/gta5', tmp_path / 'gta5')
    img = np.zeros((32, 48, 3), np.uint8)
    small = id_map(GTA5_EXPECTED, (16, 24), 7)
    Image.fromarray(img).save(f'{gta}/images/00007.png')
    save_palette(f'{gta}/labels/00007.png', small)
    for name in ('00008', '00009', '00010', '00012'):
        Image.fromarray(img).save(f'{gta}/images/{name}.png')
    data = open(f'{gta}/labels/00001.png', 'rb').read()
    open(f'{gta}/labels/00008.png', 'wb').write(data[:len(data) // 2])
    open(f'{gta}/images/00009.png', 'wb').write(np.random.default_rng(0).bytes(500))
    save_palette(f'{gta}/labels/00009.png', small)
    save_palette(f'{gta}/labels/00011.png', small)
    Image.fromarray(img).save(f'{gta}/labels/00012.png')
    return gta, small


def out(gta, name):
    return np.array(Image.open(f'{gta}/labels/{name}_labelTrainIds.png'))


def test_gta5_converter_traps_rerun_and_overwrite(root, tmp_path):
    gta, small = broken_gta5(root, tmp_path)
    main = load_tool('gta5')
    assert main([gta]) == 1  # something was skipped
    report = json.load(open(f'{gta}/gta5_conversion_report.json'))
    assert report['summary'] == dict(converted=6, resized=1, exists=0, skipped=5, total=12)
    skipped = {k: v for d in report['frames']['skipped'] for k, v in d.items()}
    assert skipped['00008'].startswith('unreadable label')
    assert skipped['00009'].startswith('unreadable image')
    assert skipped['00010'] == 'label missing' and skipped['00011'] == 'image missing'
    assert "mode 'RGB'" in skipped['00012']
    assert report['frames']['resized'] == [{'00007': 'image 48x32, label 24x16'}]
    for i in range(1, 7):
        raw = np.array(Image.open(f'{gta}/labels/{i:05d}.png'))
        np.testing.assert_array_equal(out(gta, f'{i:05d}'), apply(GTA5_EXPECTED, raw))
    # nearest upscaling x2 of the half-size label == every train ID repeated in 2x2 blocks
    np.testing.assert_array_equal(
        out(gta, '00007'), np.kron(apply(GTA5_EXPECTED, small), np.ones((2, 2), int)))
    assert not any(
        osp.exists(f'{gta}/labels/{n}_labelTrainIds.png') for n in ('00008', '00009', '00010'))
    assert not [f for f in os.listdir(f'{gta}/labels') if '.tmp' in f]

    # Re-run: existing outputs are kept (a marked output survives), the bad frames are reported
    # again.
    Image.fromarray(np.full((32, 48), 7, np.uint8)).save(f'{gta}/labels/00001_labelTrainIds.png')
    assert main([gta, '--nproc', '2']) == 1
    report = json.load(open(f'{gta}/gta5_conversion_report.json'))
    assert report['summary'] == dict(converted=0, resized=0, exists=7, skipped=5, total=12)
    assert (out(gta, '00001') == 7).all()

    # --overwrite rewrites them.
    assert main([gta, '--overwrite']) == 1
    report = json.load(open(f'{gta}/gta5_conversion_report.json'))
    assert report['summary'] == dict(converted=6, resized=1, exists=0, skipped=5, total=12)
    np.testing.assert_array_equal(
        out(gta, '00001'), apply(GTA5_EXPECTED, np.array(Image.open(f'{gta}/labels/00001.png'))))


def test_gta5_converter_mismatch_skip_and_out_dir(root, tmp_path):
    gta, _ = broken_gta5(root, tmp_path)
    assert load_tool('gta5')([
        gta, '--mismatch', 'skip', '--out-dir',
        str(tmp_path / 'o'), '--report',
        str(tmp_path / 'r.json')
    ]) == 1
    report = json.load(open(tmp_path / 'r.json'))
    assert report['summary']['skipped'] == 6 and report['summary']['resized'] == 0
    assert {'00007': 'size mismatch: image 48x32, label 24x16'} in report['frames']['skipped']
    assert sorted(os.listdir(tmp_path / 'o')) == [f'{i:05d}_labelTrainIds.png' for i in range(1, 7)]


def test_gta5_converter_cli_clean_dataset_exits_zero(root, tmp_path):
    """The real CLI in a subprocess, 2 processes: exit 0, a progress bar, outputs that
    GTA5Dataset reads."""
    gta = fresh_copy(f'{root}/gta5', tmp_path / 'gta5')
    proc = run_tool(['tools/dataset_converters/gta5.py', gta, '--nproc', '2'])
    # progress bar
    assert '6 frames: 6 converted, 0 resized' in proc.stdout  # the report's counts
    for i in range(1, 7):
        raw = np.array(Image.open(f'{gta}/labels/{i:05d}.png'))
        np.testing.assert_array_equal(out(gta, f'{i:05d}'), apply(GTA5_EXPECTED, raw))


def test_converter_cli_rejects_a_wrong_root(tmp_path, capsys):
    for name, message in (('gta5', 'must contain images/ and labels/'),
                          ('synthia', 'must contain RGB/ and GT'), ('mapillary', 'no split of')):
        with pytest.raises(SystemExit) as exc:
            load_tool(name)([str(tmp_path / 'nowhere')])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_synthia_converter(root, tmp_path):
    syn = fresh_copy(f'{root}/synthia', tmp_path / 'synthia')
    open(f'{syn}/GT/LABELS/0000003.png', 'wb').write(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)  # corrupt
    assert load_tool('synthia')([syn, '--nproc', '2']) == 1
    report = json.load(open(f'{syn}/synthia_conversion_report.json'))
    assert report['summary'] == dict(converted=3, resized=0, exists=0, skipped=1, total=4)
    assert list(report['frames']['skipped'][0]) == ['0000003']
    for i in range(3):
        expected = apply(SYNTHIA_EXPECTED, id_map(SYNTHIA_EXPECTED, (32, 48), 10 + i))
        np.testing.assert_array_equal(
            np.array(Image.open(f'{syn}/GT/LABELS/{i:07d}_labelTrainIds.png')), expected)


def test_mapillary_converter_matches_dataset_label_map(root, tmp_path):
    mpl = fresh_copy(f'{root}/mapillary', tmp_path / 'mapillary')
    assert load_tool('mapillary')([mpl]) == 0
    report = json.load(open(f'{mpl}/mapillary_conversion_report.json'))
    assert report['frames']['converted'] == [
        'training/tra_00xYz', 'training/tra_01xYz', 'validation/val_00xYz', 'validation/val_01xYz'
    ]
    kw = dict(
        data_root=mpl,
        data_prefix=dict(img_path='validation/images', seg_map_path='validation/v1.2/labels'))
    raw, conv = Mapillary19Dataset(**kw), Mapillary19Dataset(
        seg_map_suffix='_labelTrainIds.png', **kw)
    assert len(raw) == len(conv) == 2
    from mmseg.datasets.transforms import LoadAnnotations
    for i in range(2):
        a = LoadAnnotations()(dict(raw.get_data_info(i)))['gt_seg_map']
        b = LoadAnnotations()(dict(conv.get_data_info(i)))['gt_seg_map']
        np.testing.assert_array_equal(a, b)
        ids = np.array(Image.open(raw.get_data_info(i)['seg_map_path']))
        np.testing.assert_array_equal(b, apply(MAPILLARY_EXPECTED, ids))
    # Only the splits asked for; an absent split is reported, not fatal.
    assert load_tool('mapillary')([mpl, '--splits', 'validation', 'testing', '--overwrite']) == 0


def test_conversion_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='nproc must be >= 1, got 0'):
        convert_frames([], read_index_label, GTA5_EXPECTED, nproc=0)
    with pytest.raises(
            ValueError, match=r"mismatch must be one of \('resize', 'skip'\), got 'crop'"):
        convert_frames([], read_index_label, GTA5_EXPECTED, mismatch='crop')
    with pytest.raises(ValueError, match=r"mismatch must be one of .* got 'crop'"):
        convert_frame(
            Frame('a', None, None, str(tmp_path / 'a.png')),
            read_index_label,
            np.zeros(256, np.uint8),
            mismatch='crop')
    with pytest.raises(ValueError, match='0 <= train ID <= 255, got 7 -> 300'):
        lut_from_mapping({7: 300})


def test_converter_reports_are_kept_and_resized_frames_named(root, tmp_path, capsys):
    gta, _ = broken_gta5(root, tmp_path)
    main = load_tool('gta5')
    assert main([gta]) == 1
    first = json.load(open(f'{gta}/gta5_conversion_report.json'))
    out = capsys.readouterr().out
    assert '  resized 00007: image 48x32, label 24x16' in out and '  skipped 00010: label missing' in out
    assert main([gta]) == 1  # a re-run keeps the first report under a new name
    kept = [
        f for f in os.listdir(gta)
        if f.startswith('gta5_conversion_report.') and f != 'gta5_conversion_report.json'
    ]
    assert len(kept) == 1 and json.load(open(osp.join(gta, kept[0]))) == first
    assert f'the previous report was kept as {osp.join(gta, kept[0])}' in capsys.readouterr().out
    assert json.load(open(f'{gta}/gta5_conversion_report.json'))['summary']['exists'] == 7


def test_converter_bad_nproc_exits_2(root, tmp_path, capsys):
    gta, _ = broken_gta5(root, tmp_path)
    for value in ('0', '-1', 'two'):
        with pytest.raises(SystemExit) as exc:
            load_tool('gta5')([gta, '--nproc', value])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and 'argument --nproc' in err and 'Traceback' not in err


def test_synthia_corrupt_label_without_opencv_log_lines(root, tmp_path, capfd):
    syn = fresh_copy(f'{root}/synthia', tmp_path / 'synthia')
    open(f'{syn}/GT/LABELS/0000003.png', 'wb').write(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)  # corrupt
    assert load_tool('synthia')([syn]) == 1
    captured = capfd.readouterr()
    assert '[ERROR' not in captured.err and '[ WARN' not in captured.err and 'readHeader' not in captured.err
    assert 'skipped 0000003: unreadable label' in captured.out
