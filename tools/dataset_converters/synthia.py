"""Convert SYNTHIA-RAND-CITYSCAPES 16-bit labels to 19-class
``GT/LABELS/NNNNNNN_labelTrainIds.png``.

    python tools/dataset_converters/synthia.py data/synthia [--nproc 8] [--mismatch resize|skip]
    [--overwrite]

The class ID is the red channel of ``GT/LABELS/*.png`` (read with cv2, unchanged depth); IDs are
mapped to the Cityscapes train IDs (terrain, truck and train never occur). Report:
``<root>/synthia_conversion_report.json``. Re-runs keep existing outputs unless ``--overwrite``.
Exit code 1 when a frame was skipped.
"""
import argparse
import os.path as osp
import sys

from mmnorm_tools.converters import add_converter_args, run_converter

from mmnorm.datasets.conversion import pair_frames, read_synthia_label
from mmnorm.datasets.synthia import SYNTHIA_ID_TO_TRAINID


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='SYNTHIA-RAND-CITYSCAPES root holding RGB/ and GT/LABELS/')
    parser.add_argument(
        '--out-dir',
        default=None,
        help='where the *_labelTrainIds.png go (default: ROOT/GT/LABELS)')
    add_converter_args(parser)
    args = parser.parse_args(argv)
    img_dir, label_dir = osp.join(args.root, 'RGB'), osp.join(args.root, 'GT', 'LABELS')
    if not osp.isdir(img_dir) or not osp.isdir(label_dir):
        parser.error(f'{args.root!r} must contain RGB/ and GT/LABELS/')
    frames = pair_frames(img_dir, label_dir, args.out_dir or label_dir)
    report = args.report or osp.join(args.root, 'synthia_conversion_report.json')
    return run_converter(frames, read_synthia_label, SYNTHIA_ID_TO_TRAINID, args, report)


if __name__ == '__main__':
    sys.exit(main())
