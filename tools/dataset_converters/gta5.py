"""Convert GTA5 palette labels (Cityscapes label IDs) to 19-class
``labels/NNNNN_labelTrainIds.png``.

    python tools/dataset_converters/gta5.py data/gta5 [--nproc 8] [--mismatch resize|skip]
    [--overwrite]

Every image/label size mismatch (a few GTA5 frames) is resolved by ``--mismatch``: ``resize``
(default) nearest-resizes the label to the image, ``skip`` leaves the frame out (GTA5Dataset then
drops it with a warning). The JSON report (default ``<root>/gta5_conversion_report.json``) lists
what was converted, resized and skipped and why. Re-runs keep existing outputs unless
``--overwrite``. Exit code 1 when a frame was skipped.
"""
import argparse
import os.path as osp
import sys

from mmnorm_tools.converters import add_converter_args, run_converter

from mmnorm.datasets.conversion import pair_frames, read_index_label
from mmnorm.datasets.gta5 import CITYSCAPES_ID_TO_TRAINID


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='GTA5 root holding images/ and labels/')
    parser.add_argument(
        '--out-dir', default=None, help='where the *_labelTrainIds.png go (default: ROOT/labels)')
    add_converter_args(parser)
    args = parser.parse_args(argv)
    img_dir, label_dir = osp.join(args.root, 'images'), osp.join(args.root, 'labels')
    if not osp.isdir(img_dir) or not osp.isdir(label_dir):
        parser.error(f'{args.root!r} must contain images/ and labels/')
    frames = pair_frames(img_dir, label_dir, args.out_dir or label_dir)
    report = args.report or osp.join(args.root, 'gta5_conversion_report.json')
    return run_converter(frames, read_index_label, CITYSCAPES_ID_TO_TRAINID, args, report)


if __name__ == '__main__':
    sys.exit(main())
