"""Procedural driving scenes for the embedded source -> target benchmark (``make demo``).

The source domain imitates GTA5 (saturated flat colours, sharp edges) and is written in GTA5's
layout; the target domain is drawn by the same scene generator and then photographed differently —
white balance / gamma / contrast / saturation change, surface texture, depth-based fog as Foggy
Cityscapes makes it (I = R·t + A·(1 − t), t = exp(−β·depth)), blur and sensor noise — and written in
Cityscapes' layout. Eight classes (road, sidewalk, building, pole, vegetation, sky, person, car) are
learnable from shape and colour; the shift is appearance only.

Layouts written by :func:`generate_demo_data` under ``root``::

    gta5/images/NNNNN.png            RGB gta5/labels/NNNNN.png            8-bit palette PNG, indices
    = Cityscapes label IDs gta5/train.txt, gta5/val.txt     frame names of the source splits
    cityscapes/leftImg8bit/{train,val}/synth/synth_000000_NNNNNN_leftImg8bit.png
    cityscapes/gtFine/{train,val}/synth/synth_000000_NNNNNN_gtFine_labelTrainIds.png  (and
    _labelIds.png)

Target ``train`` is the unlabelled adaptation pool (labels are written, as Cityscapes has them, but
unused); target ``val`` is the labelled test split.
"""
import json
import os
import os.path as osp
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

from .labels import CITYSCAPES_ID_TO_TRAINID

__all__ = [
    'SHIFTS', 'render_scene', 'apply_target_shift', 'generate_demo_data', 'CITYSCAPES_PALETTE'
]

H, W = 64, 128
# Cityscapes label IDs used by the scenes.
ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, SKY, PERSON, CAR = 7, 8, 11, 17, 21, 23, 24, 26
# Source appearance: a base RGB colour per class (values in [0, 1]).
BASE_COLOURS: Dict[int, Tuple[float, float, float]] = {
    ROAD: (0.45, 0.40, 0.50),
    SIDEWALK: (0.85, 0.55, 0.75),
    BUILDING: (0.60, 0.35, 0.25),
    POLE: (0.95, 0.85, 0.10),
    VEGETATION: (0.15, 0.70, 0.15),
    SKY: (0.30, 0.60, 0.95),
    PERSON: (0.95, 0.15, 0.20),
    CAR: (0.10, 0.20, 0.80)
}
SHIFTS = ('full', 'colour', 'fog', 'none')


def _cityscapes_palette() -> list:
    """768-entry PIL palette: Cityscapes label-ID colours (as GTA5's label PNGs carry), black
    elsewhere."""
    colours = {
        7: (128, 64, 128),
        8: (244, 35, 232),
        11: (70, 70, 70),
        12: (102, 102, 156),
        13: (190, 153, 153),
        17: (153, 153, 153),
        19: (250, 170, 30),
        20: (220, 220, 0),
        21: (107, 142, 35),
        22: (152, 251, 152),
        23: (70, 130, 180),
        24: (220, 20, 60),
        25: (255, 0, 0),
        26: (0, 0, 142),
        27: (0, 0, 70),
        28: (0, 60, 100),
        31: (0, 80, 100),
        32: (0, 0, 230),
        33: (119, 11, 32)
    }
    palette = []
    for i in range(256):
        palette.extend(colours.get(i, (0, 0, 0)))
    return palette


CITYSCAPES_PALETTE = _cityscapes_palette()


def render_scene(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws one street scene.

    Returns:
        tuple: ``image`` (H, W, 3) float32 in [0, 1] (source appearance), ``label`` (H, W) uint8
        Cityscapes label IDs, ``depth`` (H, W) float32 metres (sky: ``inf``).
    """
    rows = np.arange(H, dtype=np.float32)[:, None]
    cols = np.arange(W, dtype=np.float32)[None, :]
    horizon = rng.uniform(22, 30)
    vanish_x = rng.uniform(0.35, 0.65) * W
    below = np.clip(rows - horizon, 0, None) / (H - horizon
                                                )  # 0 at the horizon, 1 at the bottom row
    road_half = below * rng.uniform(0.35, 0.55) * W
    walk_width = below * rng.uniform(0.10, 0.22) * W
    dx = cols - vanish_x

    label = np.full((H, W), VEGETATION, np.uint8)  # grass verge below the horizon
    label[np.broadcast_to(rows < horizon, (H, W))] = SKY
    on_ground = rows >= horizon
    walk = on_ground & (np.abs(dx) < road_half + walk_width)
    label[walk] = SIDEWALK
    label[on_ground & (np.abs(dx) < road_half)] = ROAD
    depth = np.where(on_ground, 6.0 / np.maximum(below, 1e-3), np.inf).astype(np.float32)
    depth = np.broadcast_to(depth, (H, W)).copy()

    # Per-image colour jitter of each class (objects add their own jitter below).
    colours = {
        k: np.clip(np.array(c) + rng.normal(0, 0.05, 3), 0, 1)
        for k, c in BASE_COLOURS.items()
    }
    image = np.zeros((H, W, 3), np.float32)
    for k, colour in colours.items():
        image[label == k] = colour

    def paint(mask, cls, base_row):
        label[mask] = cls
        image[mask] = np.clip(colours[cls] + rng.normal(0, 0.06, 3), 0, 1)
        depth[mask] = 6.0 / max((base_row - horizon) / (H - horizon), 1e-3)

    # Buildings stand behind the sidewalks' outer edges on both sides, up to random heights.
    outer = road_half + walk_width  # (H, 1) outer edge offset per row
    for side in (-1, 1):
        x = 0.0 if side < 0 else float(vanish_x)
        end = float(vanish_x) if side < 0 else float(W)
        while x < end:
            width = rng.uniform(8, 24)
            top = rng.uniform(4, horizon - 3)
            in_cols = (cols >= x) & (cols < min(x + width, end))
            # Rows above the ground line at these columns (ground line: |dx| == outer edge).
            behind_edge = (np.abs(dx) >= outer) | (rows < horizon)
            mask = in_cols & (rows >= top) & behind_edge & (rows < horizon + 0.25 * (H - horizon))
            mask &= (np.sign(dx) == side) | (dx == 0)
            paint(mask, BUILDING, horizon + 2)
            # windows: a darker grid keeps the class textured but learnable
            win = mask & ((rows.astype(int) % 5) < 2) & ((cols.astype(int) % 4) < 2)
            image[win] *= 0.6
            x += width + rng.uniform(0, 4)
    # Trees (vegetation crowns on trunks) and poles on the sidewalks, persons on sidewalks, cars on
    # the road.
    for _ in range(rng.integers(1, 4)):
        base = rng.uniform(horizon + 4, H - 6)
        scale = (base - horizon) / (H - horizon)
        side = rng.choice([-1, 1])
        cx = vanish_x + side * (road_half[int(base)] + walk_width[int(base)] * 0.5)[0]
        r = 3 + 9 * scale
        crown = ((rows - (base - 2.2 * r)) / r)**2 + ((cols - cx) / (0.8 * r))**2 < 1
        paint(crown, VEGETATION, base)
    for _ in range(rng.integers(1, 4)):
        base = rng.uniform(horizon + 3, H - 2)
        scale = (base - horizon) / (H - horizon)
        side = rng.choice([-1, 1])
        cx = vanish_x + side * (road_half[int(base)] + walk_width[int(base)] * 0.7)[0]
        height = 6 + 34 * scale
        width = max(1.0, 2.5 * scale)
        paint((np.abs(cols - cx) <= width / 2) & (rows <= base) & (rows > base - height), POLE,
              base)
    for _ in range(rng.integers(0, 4)):
        base = rng.uniform(horizon + 4, H - 1)
        scale = (base - horizon) / (H - horizon)
        side = rng.choice([-1, 1])
        cx = vanish_x + side * (road_half[int(base)] +
                                walk_width[int(base)] * rng.uniform(0.2, 0.8))[0]
        height = 4 + 20 * scale
        body = ((rows - (base - height / 2)) / (height / 2))**2 + ((cols - cx) /
                                                                   (height / 6))**2 < 1
        paint(body, PERSON, base)
    for _ in range(rng.integers(0, 4)):
        base = rng.uniform(horizon + 3, H - 1)
        scale = (base - horizon) / (H - horizon)
        cx = vanish_x + rng.uniform(-0.7, 0.7) * road_half[int(base)][0]
        width, height = 6 + 34 * scale, 3 + 14 * scale
        box = (np.abs(cols - cx) < width / 2) & (rows <= base) & (rows > base - height)
        paint(box, CAR, base)
        roof = box & (rows < base - 0.6 * height) & (np.abs(cols - cx) < width / 3)
        image[roof] *= 0.55
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)  # faint render noise
    return np.clip(image, 0, 1), label, depth


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return image
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode='edge')
    out = np.zeros_like(image)
    k = 2 * radius + 1
    for dy in range(k):
        for dx in range(k):
            out += padded[dy:dy + H, dx:dx + W]
    return out / (k * k)


def apply_target_shift(image: np.ndarray,
                       label: np.ndarray,
                       depth: np.ndarray,
                       rng: np.random.Generator,
                       shift: str = 'full') -> np.ndarray:
    """Photographs a rendered scene the target way.

    Args:
        image (np.ndarray): (H, W, 3) float in [0, 1], source appearance.
        label (np.ndarray): (H, W) label IDs (for class-wise surface texture).
        depth (np.ndarray): (H, W) metres, ``inf`` for sky.
        rng (np.random.Generator): Randomness of this frame.
        shift (str): ``'full'`` (colour + texture + fog + blur/noise), ``'colour'`` (colour only),
            ``'fog'`` (fog only), ``'none'``.

    Returns:
        np.ndarray: (H, W, 3) float32 in [0, 1].
    """
    if shift not in SHIFTS:
        raise ValueError(f'shift must be one of {SHIFTS}, got {shift!r}')
    out = image.astype(np.float32).copy()
    if shift in ('full', 'colour'):
        # Duller, warmer, lower-contrast camera: white balance, saturation, gamma and contrast.
        gains = np.array([1.10, 1.0, 0.72]) * rng.uniform(0.92, 1.08, 3)
        out = out * gains
        grey = out.mean(axis=2, keepdims=True)
        out = grey + rng.uniform(0.45, 0.65) * (out - grey)
        out = np.clip(out, 0, 1)**rng.uniform(0.55, 0.75)
        out = 0.5 + rng.uniform(0.65, 0.85) * (out - 0.5)
    if shift == 'full':
        # Real-world surfaces are textured where the source is flat.
        texture = rng.normal(0, 1, (H, W, 1)).astype(np.float32)
        texture = _box_blur(np.repeat(texture, 3, axis=2), 1)
        strength = np.where(np.isin(label, [ROAD, SIDEWALK, BUILDING, VEGETATION]), 0.12,
                            0.04)[..., None]
        out = out + strength * texture
    if shift in ('full', 'fog'):
        beta = rng.uniform(0.005, 0.02)
        transmission = np.exp(-beta * np.minimum(depth, 1e4))[..., None]
        airlight = rng.uniform(0.75, 0.9)
        out = out * transmission + airlight * (1 - transmission)
    if shift == 'full':
        out = _box_blur(out, 1)
        out = out + rng.normal(0, 0.03, out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _train_ids(label: np.ndarray) -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
        lut[label_id] = train_id
    return lut[label]


def generate_demo_data(root: str,
                       num_source_train: int = 800,
                       num_source_val: int = 100,
                       num_target_train: int = 200,
                       num_target_val: int = 200,
                       shift: str = 'full',
                       seed: int = 0,
                       overwrite: bool = False) -> Dict[str, int]:
    """Writes the source (GTA5 layout) and target (Cityscapes layout) domains under ``root``.

    A ``meta.json`` records the arguments; a second call with the same arguments does nothing,
    different arguments without ``overwrite`` raise ``FileExistsError``.

    Returns:
        dict: Number of frames written per split.
    """
    if shift not in SHIFTS:
        raise ValueError(f'shift must be one of {SHIFTS}, got {shift!r}')
    meta = dict(
        num_source_train=num_source_train,
        num_source_val=num_source_val,
        num_target_train=num_target_train,
        num_target_val=num_target_val,
        shift=shift,
        seed=seed,
        size=[H, W],
        version=1)
    meta_file = osp.join(root, 'meta.json')
    if osp.exists(meta_file):
        with open(meta_file) as f:
            if json.load(f) == meta:
                return dict(
                    source_train=num_source_train,
                    source_val=num_source_val,
                    target_train=num_target_train,
                    target_val=num_target_val)
        if not overwrite:
            raise FileExistsError(
                f'{root!r} holds demo data made with other settings (see {meta_file}); '
                'pass overwrite=True or choose another root')
    import shutil
    for sub in ('gta5', 'cityscapes'):
        shutil.rmtree(osp.join(root, sub), ignore_errors=True)

    rng = np.random.default_rng(seed)
    src = osp.join(root, 'gta5')
    os.makedirs(osp.join(src, 'images'), exist_ok=True)
    os.makedirs(osp.join(src, 'labels'), exist_ok=True)
    names = []
    for i in range(num_source_train + num_source_val):
        image, label, _ = render_scene(rng)
        name = f'{i + 1:05d}'
        Image.fromarray(_to_uint8(image)).save(osp.join(src, 'images', name + '.png'))
        png = Image.fromarray(label, mode='P')
        png.putpalette(CITYSCAPES_PALETTE)
        png.save(osp.join(src, 'labels', name + '.png'))
        names.append(name)
    with open(osp.join(src, 'train.txt'), 'w') as f:
        f.write('\n'.join(names[:num_source_train]) + '\n')
    with open(osp.join(src, 'val.txt'), 'w') as f:
        f.write('\n'.join(names[num_source_train:]) + '\n')

    tgt = osp.join(root, 'cityscapes')
    for split, count in (('train', num_target_train), ('val', num_target_val)):
        img_dir = osp.join(tgt, 'leftImg8bit', split, 'synth')
        ann_dir = osp.join(tgt, 'gtFine', split, 'synth')
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(count):
            image, label, depth = render_scene(rng)
            image = apply_target_shift(image, label, depth, rng, shift)
            stem = f'synth_000000_{i:06d}'
            Image.fromarray(_to_uint8(image)).save(osp.join(img_dir, stem + '_leftImg8bit.png'))
            Image.fromarray(_train_ids(label)).save(
                osp.join(ann_dir, stem + '_gtFine_labelTrainIds.png'))
            Image.fromarray(label).save(osp.join(ann_dir, stem + '_gtFine_labelIds.png'))
    with open(meta_file, 'w') as f:
        json.dump(meta, f)
    return dict(
        source_train=num_source_train,
        source_val=num_source_val,
        target_train=num_target_train,
        target_val=num_target_val)


def make_preview(root: str, out_file: str, num: int = 4, seed: Optional[int] = None) -> None:
    """Saves a grid of source and target frames with their labels (for the README / eyeballing
    the shift)."""
    src = sorted(os.listdir(osp.join(root, 'gta5', 'images')))[:num]
    tgt_dir = osp.join(root, 'cityscapes', 'leftImg8bit', 'val', 'synth')
    tgt = sorted(os.listdir(tgt_dir))[:num]
    tiles = []
    for s, t in zip(src, tgt):
        a = np.asarray(Image.open(osp.join(root, 'gta5', 'images', s)).convert('RGB'))
        la = np.asarray(Image.open(osp.join(root, 'gta5', 'labels', s)).convert('RGB'))
        b = np.asarray(Image.open(osp.join(tgt_dir, t)).convert('RGB'))
        tiles.append(np.concatenate([a, la, b], axis=1))
    Image.fromarray(np.concatenate(tiles, axis=0)).save(out_file)
