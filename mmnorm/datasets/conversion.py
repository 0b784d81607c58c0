"""Label conversion behind ``tools/dataset_converters/{gta5,synthia,mapillary}.py``.

Each converter turns per-frame source labels into 8-bit ``*_labelTrainIds.png`` files (19 Cityscapes
train IDs, 255 = ignore) through a 256-entry lookup table. :func:`convert_frames` runs the frames in
a process pool with a progress bar and applies one policy everywhere:

- resumable: a frame whose output exists is left alone (``'exists'``) unless ``overwrite``; outputs
  are written to a temporary file and renamed, so an interrupted run never leaves a truncated label
  behind;
- a missing or unreadable image or label is reported (``'skipped'`` with the reason) and counted,
  never fatal;
- image/label size mismatch: ``'resize'`` (default) nearest-resizes the label to the image and
  reports the frame as ``'resized'`` with both sizes, ``'skip'`` writes nothing and reports it as
  ``'skipped'``;
- the summary and the per-frame outcomes go to a JSON report; a report left by an earlier run is
  kept, renamed ``<name>.<its time>.json``; the caller's exit code is 1 when anything was skipped;
- OpenCV's own log lines (``[ERROR:0@...] ... readHeader``) are silenced: the report gives mmnorm's
  reason per file.
"""
import json
import multiprocessing
import os
import os.path as osp
from functools import partial
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image

__all__ = [
    'Frame', 'MISMATCH_POLICIES', 'lut_from_mapping', 'read_index_label', 'read_synthia_label',
    'convert_frame', 'convert_frames', 'pair_frames'
]

MISMATCH_POLICIES = ('resize', 'skip')
STATUSES = ('converted', 'resized', 'exists', 'skipped')


class Frame(NamedTuple):
    """One frame to convert. ``image`` or ``label`` is None when that file is missing."""
    name: str
    image: Optional[str]
    label: Optional[str]
    out: str


def lut_from_mapping(mapping: Mapping[int, int]) -> np.ndarray:
    """(65536,) uint8 table: source ID -> train ID, 255 for every ID not in ``mapping``."""
    lut = np.full(65536, 255, np.uint8)
    for src, dst in mapping.items():
        if not 0 <= int(src) < 65536 or not 0 <= int(dst) <= 255:
            raise ValueError(
                f'mapping entries must be 0 <= source < 65536 and 0 <= train ID <= 255, '
                f'got {src} -> {dst}')
        lut[int(src)] = int(dst)
    return lut


def read_index_label(path: str) -> np.ndarray:
    """(H, W) IDs of an 8-bit palette (``P``) or grey (``L``) PNG, decoded with PIL (cv2 returns the
    colours).

    GTA5 and Mapillary v1.2 labels store class IDs as palette indices.
    """
    with Image.open(path) as img:
        if img.mode not in ('P', 'L'):
            raise ValueError(f'expected an 8-bit palette or grey label, got PIL mode {img.mode!r}')
        return np.array(img)


def quiet_opencv():
    """Imports cv2 with its logging off (a corrupt file is reported per frame by mmnorm instead)."""
    import cv2
    logging = getattr(getattr(cv2, 'utils', None), 'logging', None)
    if logging is not None:  # OpenCV >= 4
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    elif hasattr(cv2, 'setLogLevel'):
        cv2.setLogLevel(0)
    return cv2


def read_synthia_label(path: str) -> np.ndarray:
    """(H, W) class IDs of a SYNTHIA ``GT/LABELS`` PNG (16-bit, class ID in the red channel)."""
    cv2 = quiet_opencv()
    arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError('cv2 could not decode the label')
    if arr.ndim == 2:
        return arr
    if arr.shape[2] < 3:
        raise ValueError(f'expected a 3- or 4-channel SYNTHIA label, got shape {arr.shape}')
    return arr[:, :, 2]  # cv2 reads BGR(A): the red channel holds the class ID


def _image_size(path: str):
    """(width, height) of an image; reads the whole file so that truncation and bad checksums are
    caught."""
    with Image.open(path) as img:
        size = img.size
        img.verify()
    return size


def _write_png(path: str, array: np.ndarray) -> None:
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        Image.fromarray(array).save(tmp, format='PNG')
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def convert_frame(frame: Frame,
                  read_label: Callable[[str], np.ndarray],
                  lut: np.ndarray,
                  mismatch: str = 'resize',
                  overwrite: bool = False) -> Dict:
    """Converts one frame; never raises for bad data.

    Returns:
        dict: ``name``, ``status`` (one of 'converted', 'resized', 'exists', 'skipped') and, for
        'resized' and 'skipped', ``detail`` (the sizes, or the reason).
    """
    if mismatch not in MISMATCH_POLICIES:
        raise ValueError(f'mismatch must be one of {MISMATCH_POLICIES}, got {mismatch!r}')
    if not overwrite and osp.exists(frame.out):
        return dict(name=frame.name, status='exists')
    if frame.image is None or not osp.isfile(frame.image):
        return dict(name=frame.name, status='skipped', detail='image missing')
    if frame.label is None or not osp.isfile(frame.label):
        return dict(name=frame.name, status='skipped', detail='label missing')
    try:
        img_w, img_h = _image_size(frame.image)
    except Exception as e:  # corrupt image: report it, keep going
        return dict(
            name=frame.name, status='skipped', detail=f'unreadable image: {type(e).__name__}: {e}')
    try:
        ids = read_label(frame.label)
    except Exception as e:  # corrupt label: report it, keep going
        return dict(
            name=frame.name, status='skipped', detail=f'unreadable label: {type(e).__name__}: {e}')
    train_ids = lut[ids]
    status, detail = 'converted', None
    label_h, label_w = train_ids.shape
    if (label_w, label_h) != (img_w, img_h):
        detail = f'image {img_w}x{img_h}, label {label_w}x{label_h}'
        if mismatch == 'skip':
            return dict(name=frame.name, status='skipped', detail=f'size mismatch: {detail}')
        train_ids = np.array(Image.fromarray(train_ids).resize((img_w, img_h), Image.NEAREST))
        status = 'resized'
    _write_png(frame.out, train_ids)
    result = dict(name=frame.name, status=status)
    if detail is not None:
        result['detail'] = detail
    return result


def convert_frames(frames: Sequence[Frame],
                   read_label: Callable[[str], np.ndarray],
                   mapping: Mapping[int, int],
                   nproc: int = 1,
                   mismatch: str = 'resize',
                   overwrite: bool = False,
                   report_file: Optional[str] = None,
                   progress: bool = True) -> Dict:
    """Converts every frame (in ``nproc`` processes) and writes the JSON report.

    Returns:
        dict: ``summary`` (count per status and ``total``) and ``frames`` (status -> list of names,
        or of ``{name: detail}`` for 'resized' and 'skipped').
    """
    if nproc < 1:
        raise ValueError(f'nproc must be >= 1, got {nproc}')
    if mismatch not in MISMATCH_POLICIES:
        raise ValueError(f'mismatch must be one of {MISMATCH_POLICIES}, got {mismatch!r}')
    work = partial(
        convert_frame,
        read_label=read_label,
        lut=lut_from_mapping(mapping),
        mismatch=mismatch,
        overwrite=overwrite)
    bar = None
    if progress and frames:
        from mmengine.utils import ProgressBar
        bar = ProgressBar(len(frames))
    results: List[Dict] = []
    if nproc == 1:
        iterator = map(work, frames)
        for r in iterator:
            results.append(r)
            if bar is not None:
                bar.update()
    else:
        # forkserver (spawn where unavailable): a fork of a multi-threaded caller (a test runner, an
        # application with a thread pool) can copy a held lock and hang its workers
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context('forkserver' if 'forkserver' in methods else 'spawn')
        with context.Pool(nproc) as pool:
            for r in pool.imap_unordered(work, frames, chunksize=4):
                results.append(r)
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.file.write('\n')
    results.sort(key=lambda r: r['name'])
    summary = {s: sum(r['status'] == s for r in results) for s in STATUSES}
    summary['total'] = len(results)
    by_status = {
        s: [
            r['name'] if 'detail' not in r else {
                r['name']: r['detail']
            } for r in results if r['status'] == s
        ]
        for s in STATUSES
    }
    report = dict(summary=summary, mismatch=mismatch, overwrite=overwrite, frames=by_status)
    if report_file is not None:
        os.makedirs(osp.dirname(osp.abspath(report_file)), exist_ok=True)
        report['previous_report'] = keep_previous_report(report_file)
        with open(report_file, 'w') as f:
            json.dump(report, f, indent=1)
    return report


def keep_previous_report(report_file: str) -> Optional[str]:
    """Renames an existing ``report_file`` to ``<stem>.<its modification time>.json``; returns
    the new name."""
    if not osp.exists(report_file):
        return None
    import time
    stem, ext = osp.splitext(report_file)
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(osp.getmtime(report_file)))
    kept, k = f'{stem}.{stamp}{ext}', 1
    while osp.exists(kept):
        k += 1
        kept = f'{stem}.{stamp}-{k}{ext}'
    os.replace(report_file, kept)
    return kept


def pair_frames(img_dir: str,
                label_dir: str,
                out_dir: str,
                img_suffix: str = '.png',
                label_suffix: str = '.png',
                out_suffix: str = '_labelTrainIds.png') -> List[Frame]:
    """Frames named by the union of images and labels (so a missing partner is reported, not
    ignored).

    Files in ``label_dir`` ending with ``out_suffix`` (earlier outputs) are not labels.
    """

    def names(folder, suffix, exclude=None):
        if not osp.isdir(folder):
            return set()
        return {
            f[:-len(suffix)]
            for f in os.listdir(folder) if f.endswith(suffix)
            and not (exclude and f.endswith(exclude)) and not f.startswith('.')
        }

    images = names(img_dir, img_suffix)
    labels = names(label_dir, label_suffix, exclude=out_suffix)
    return [
        Frame(name,
              osp.join(img_dir, name + img_suffix) if name in images else None,
              osp.join(label_dir, name + label_suffix) if name in labels else None,
              osp.join(out_dir, name + out_suffix)) for name in sorted(images | labels)
    ]
