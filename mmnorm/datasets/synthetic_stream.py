"""A drifting target stream for continual test-time adaptation (``tools/analysis/tta_stream.py``).

The scenes are those of :mod:`mmnorm.datasets.synthetic` (same generator, same eight classes),
photographed with a shift that moves along the stream in four phases (fractions of the frames):

* ``clear`` (20 %): the source appearance with sensor noise;
* ``fog`` (30 %): depth-based fog ``I = R t + A (1 - t)``, ``t = exp(-beta depth)``, ``beta``
  ramping from 0 to ``0.08``;
* ``colour`` (30 %): the fog lifts within the first quarter of the phase while a camera colour shift
  ramps in (white balance, saturation, gamma, contrast; stronger than the demo target's);
* ``back`` (20 %): clear again.

Frames are written in Cityscapes' layout in stream order (``stream_000000_NNNNNN``), so mmseg's
``CityscapesDataset`` (which sorts by file name) replays the stream in order::

    leftImg8bit/val/stream/stream_000000_NNNNNN_leftImg8bit.png
    gtFine/val/stream/stream_000000_NNNNNN_gtFine_labelTrainIds.png
    stream.json   per frame: phase, fog (0..1), colour (0..1)
"""
import json
import os
import os.path as osp
from typing import Dict, List

import numpy as np
from PIL import Image

from .synthetic import H, W, _to_uint8, _train_ids, render_scene

__all__ = ['STREAM_PHASES', 'stream_schedule', 'shift_frame', 'generate_drifting_stream']

STREAM_PHASES = (('clear', 0.2), ('fog', 0.3), ('colour', 0.3), ('back', 0.2))
MAX_FOG_BETA = 0.08


def stream_schedule(num_frames: int) -> List[Dict[str, float]]:
    """Per frame ``dict(phase, fog, colour)`` (strengths in [0, 1]) of a stream of ``num_frames``
    frames."""
    if isinstance(num_frames,
                  bool) or not isinstance(num_frames, int) or num_frames < len(STREAM_PHASES):
        raise ValueError(
            f'num_frames must be an int >= {len(STREAM_PHASES)} (one frame per phase), got '
            f'{num_frames!r}')
    bounds = np.round(np.cumsum([0] + [f for _, f in STREAM_PHASES]) * num_frames).astype(int)
    schedule = []
    for (phase, _), start, end in zip(STREAM_PHASES, bounds[:-1], bounds[1:]):
        for i in range(start, end):
            u = (i - start + 1) / max(end - start, 1)  # progress through the phase, (0, 1]
            fog = u if phase == 'fog' else (max(0.0, 1 - 4 * u) if phase == 'colour' else 0.0)
            colour = u if phase == 'colour' else 0.0
            schedule.append(dict(phase=phase, fog=float(fog), colour=float(colour)))
    return schedule


def shift_frame(image: np.ndarray, depth: np.ndarray, rng: np.random.Generator, fog: float,
                colour: float) -> np.ndarray:
    """Photographs a rendered scene (``image`` (H, W, 3) in [0, 1], ``depth`` (H, W) metres) with
    fog and colour strengths in [0, 1]; returns (H, W, 3) float32 in [0, 1]."""
    out = image.astype(np.float32).copy()
    if colour > 0:
        gains = 1 + colour * (np.array([1.25, 1.0, 0.55]) - 1)
        out = out * gains
        grey = out.mean(axis=2, keepdims=True)
        out = grey + (1 - 0.65 * colour) * (out - grey)
        out = np.clip(out, 0, 1)**(1 - 0.5 * colour)
        out = 0.5 + (1 - 0.4 * colour) * (out - 0.5)
    if fog > 0:
        transmission = np.exp(-MAX_FOG_BETA * fog * np.minimum(depth, 1e4))[..., None]
        out = out * transmission + 0.8 * (1 - transmission)
    out = out + rng.normal(0, 0.02, out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def generate_drifting_stream(root: str,
                             num_frames: int = 240,
                             seed: int = 0,
                             overwrite: bool = False) -> List[Dict[str, float]]:
    """Writes the stream under ``root`` (layout in the module docstring) and returns its schedule.

    A ``meta.json`` records the arguments; a second call with the same arguments only reads the
    schedule, different arguments without ``overwrite`` raise ``FileExistsError``.
    """
    schedule = stream_schedule(num_frames)
    meta = dict(num_frames=num_frames, seed=seed, size=[H, W], version=1)
    meta_file = osp.join(root, 'meta.json')
    if osp.exists(meta_file):
        with open(meta_file) as f:
            if json.load(f) == meta:
                return schedule
        if not overwrite:
            raise FileExistsError(
                f'{root!r} holds a stream made with other settings (see {meta_file}); pass '
                'overwrite=True or choose another root')
    img_dir = osp.join(root, 'leftImg8bit', 'val', 'stream')
    ann_dir = osp.join(root, 'gtFine', 'val', 'stream')
    import shutil
    for d in (img_dir, ann_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    rng = np.random.default_rng(seed)
    for i, frame in enumerate(schedule):
        image, label, depth = render_scene(rng)
        image = shift_frame(image, depth, rng, frame['fog'], frame['colour'])
        stem = f'stream_000000_{i:06d}'
        Image.fromarray(_to_uint8(image)).save(osp.join(img_dir, stem + '_leftImg8bit.png'))
        Image.fromarray(_train_ids(label)).save(
            osp.join(ann_dir, stem + '_gtFine_labelTrainIds.png'))
    with open(osp.join(root, 'stream.json'), 'w') as f:
        json.dump(schedule, f)
    with open(meta_file, 'w') as f:
        json.dump(meta, f)
    return schedule
