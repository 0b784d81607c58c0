"""The command line shared by ``tools/dataset_converters/{gta5,synthia,mapillary}.py``."""
from typing import Callable, Mapping, Sequence

import numpy as np

from mmnorm.datasets.conversion import MISMATCH_POLICIES, Frame, convert_frames

__all__ = ['positive_int', 'add_converter_args', 'run_converter']


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (a bad value exits 2 with argparse's message naming the
    option)."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer >= 1, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def add_converter_args(parser) -> None:
    """The options every converter CLI shares."""
    parser.add_argument(
        '--nproc', type=positive_int, default=1, help='worker processes (default 1)')
    parser.add_argument(
        '--mismatch',
        choices=MISMATCH_POLICIES,
        default='resize',
        help='image/label size mismatch: nearest-resize the label to the image (default) or skip')
    parser.add_argument(
        '--overwrite', action='store_true', help='rewrite outputs that exist (default: keep them)')
    parser.add_argument(
        '--report', default=None, help='JSON report path (default: in the dataset root)')


def run_converter(frames: Sequence[Frame], read_label: Callable[[str], np.ndarray],
                  mapping: Mapping[int, int], args, report_file: str) -> int:
    """Runs :func:`convert_frames` with the CLI options, prints the summary; returns the exit code.

    Returns:
        int: 0 when every frame was converted or already present, 1 when any frame was skipped.
    """
    report = convert_frames(
        frames,
        read_label,
        mapping,
        nproc=args.nproc,
        mismatch=args.mismatch,
        overwrite=args.overwrite,
        report_file=report_file)
    s = report['summary']
    print(
        f"{s['total']} frames: {s['converted']} converted, {s['resized']} resized (size mismatch), "
        f"{s['exists']} already present (kept; --overwrite rewrites), {s['skipped']} skipped. "
        f'Report: {report_file}')
    if report.get('previous_report'):
        print(f"  the previous report was kept as {report['previous_report']}")
    for status in ('resized', 'skipped'):
        for item in report['frames'][status][:20]:
            (name, detail), = item.items()
            print(f'  {status} {name}: {detail}')
        if len(report['frames'][status]) > 20:
            print(f"  ... and {len(report['frames'][status]) - 20} more {status} (see the report)")
    return 1 if s['skipped'] else 0
