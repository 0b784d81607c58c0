"""Convert Mapillary Vistas v1.2 labels (66 classes) to the 19 Cityscapes train IDs.

    python tools/dataset_converters/mapillary.py data/mapillary [--splits validation training]
    [--nproc 8]
                                                 [--mismatch resize|skip] [--overwrite]

Both release layouts are recognised, per split: the v2.0 archive (labels in ``{split}/v1.2/labels``)
and the v1.2 research edition (``{split}/labels``). Writes ``NAME_labelTrainIds.png`` next to the
raw labels (read by Mapillary19Dataset with ``seg_map_suffix='_labelTrainIds.png'``). Report:
``<root>/mapillary_conversion_report.json``. Re-runs keep existing outputs unless ``--overwrite``.
Exit code 1 when a frame was skipped, 2 when a split has images but no label folder.
"""
import argparse
import os.path as osp
import sys

from mmnorm_tools.converters import add_converter_args, run_converter

from mmnorm.datasets.conversion import Frame, pair_frames, read_index_label
from mmnorm.datasets.mapillary import MAPILLARY_LABEL_DIRS, MAPILLARY_V12_TO_TRAINID, find_label_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        'root',
        help='Mapillary Vistas root holding {training,validation}/images and the labels in '
        '{split}/v1.2/labels (v2.0 archive) or {split}/labels (v1.2 research edition)')
    parser.add_argument(
        '--splits',
        nargs='+',
        default=['validation', 'training'],
        help='splits to convert (default: validation training; missing ones are skipped)')
    add_converter_args(parser)
    args = parser.parse_args(argv)
    frames = []
    for split in args.splits:
        img_dir = osp.join(args.root, split, 'images')
        if not osp.isdir(img_dir):
            print(f'{split}: no {img_dir}, not converted')
            continue
        label_dir = find_label_dir(args.root, split)
        if label_dir is None:
            looked = ' or '.join(
                repr(osp.join(args.root, split, d)) for d in MAPILLARY_LABEL_DIRS.values())
            print(
                f'tools/dataset_converters/mapillary.py: error: {split} has images but no label '
                f'folder: looked for {looked} (v2.0 archive / v1.2 research edition layout)',
                file=sys.stderr)
            return 2
        # Frame names carry the split so that the report is unambiguous.
        frames += [
            Frame(f'{split}/{f.name}', *f[1:])
            for f in pair_frames(img_dir, label_dir, label_dir, img_suffix='.jpg')
        ]
    if not frames:
        parser.error(f'no split of {args.splits} found under {args.root!r}')
    report = args.report or osp.join(args.root, 'mapillary_conversion_report.json')
    return run_converter(frames, read_index_label, MAPILLARY_V12_TO_TRAINID, args, report)


if __name__ == '__main__':
    sys.exit(main())
