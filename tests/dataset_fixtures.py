"""Tiny copies of the real dataset layouts, written once per test session (shared by test_datasets,
test_converters and test_configs).

Every label holds known IDs; the expected train IDs are written down here independently of mmnorm's
tables (from the Cityscapes / SYNTHIA / Mapillary definitions), so a wrong entry in mmnorm fails the
tests.
"""
import json
import os
import os.path as osp
import xml.etree.ElementTree as ET

import cv2
import numpy as np
from PIL import Image
from scipy.io import savemat

# Cityscapes label ID -> expected train ID for the IDs the GTA5 fixture uses (0, 4: void; 34: out of
# range).
GTA5_EXPECTED = {
    0: 255,
    4: 255,
    7: 0,
    8: 1,
    11: 2,
    17: 5,
    21: 8,
    23: 10,
    24: 11,
    26: 13,
    31: 16,
    33: 18
}
# SYNTHIA class ID -> expected train ID (0 void, 13 lanemarking -> ignored; 22 outside SYNTHIA's
# table).
SYNTHIA_EXPECTED = {
    0: 255,
    1: 10,
    2: 2,
    3: 0,
    4: 1,
    5: 4,
    6: 8,
    7: 5,
    8: 13,
    9: 7,
    10: 11,
    11: 18,
    12: 17,
    13: 255,
    15: 6,
    17: 12,
    19: 15,
    21: 3,
    22: 255
}
# Mapillary v1.2 ID -> expected train ID (road, lane marking, manhole -> road; 0 bird, 65 unlabeled
# -> ignored).
MAPILLARY_EXPECTED = {
    13: 0,
    24: 0,
    41: 0,
    2: 1,
    15: 1,
    17: 2,
    6: 3,
    3: 4,
    45: 5,
    47: 5,
    48: 6,
    50: 7,
    30: 8,
    29: 9,
    27: 10,
    19: 11,
    20: 12,
    21: 12,
    22: 12,
    55: 13,
    61: 14,
    54: 15,
    58: 16,
    57: 17,
    52: 18,
    0: 255,
    65: 255
}
CITYSCAPES_DET_CLASSES = ('person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
                          'bicycle')

SEG_HW = (32, 48)  # GTA5 / SYNTHIA / Mapillary fixture frames (height, width)
CITY_HW = (64, 128)  # Cityscapes / Foggy fixture frames
GTA5_SPLIT = dict(train=[1, 2, 3, 4], val=[5], test=[6])
NUM_CITY = dict(train=3, val=2)
STAMP = '.fixtures-v3'


def _rng(seed):
    return np.random.default_rng(seed)


def id_map(ids, hw, seed):
    """(H, W) uint8 map of 4x4 blocks of the given IDs, every ID present (H, W multiples of 4)."""
    h, w = hw
    ids = np.array(sorted(ids))
    assert (h // 4) * (w // 4) >= len(ids)
    cells = np.resize(ids, (h // 4) * (w // 4))
    _rng(seed).shuffle(cells)
    return np.kron(cells.reshape(h // 4, w // 4), np.ones((4, 4), int)).astype(np.uint8)


def apply(mapping, ids):
    return np.vectorize(lambda v: mapping[int(v)], otypes=[np.uint8])(ids)


def image(hw, seed):
    return _rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def save_palette(path, ids):
    png = Image.fromarray(ids, mode='P')
    # A palette whose colours are not the indices: reading the colours (cv2) would give wrong IDs.
    pal = _rng(99).integers(0, 256, 768).astype(np.uint8)
    png.putpalette(pal.tolist())
    png.save(path)


def write_gta5(root):
    os.makedirs(osp.join(root, 'images'))
    os.makedirs(osp.join(root, 'labels'))
    for i in range(1, 7):
        name = f'{i:05d}'
        ids = id_map(GTA5_EXPECTED, SEG_HW, i)
        Image.fromarray(image(SEG_HW, i)).save(osp.join(root, 'images', name + '.png'))
        save_palette(osp.join(root, 'labels', name + '.png'), ids)
        Image.fromarray(apply(GTA5_EXPECTED,
                              ids)).save(osp.join(root, 'labels', name + '_labelTrainIds.png'))
    savemat(
        osp.join(root, 'split.mat'), {
            f'{k}Ids': np.array(v, np.float64)[:, None]
            for k, v in GTA5_SPLIT.items()
        })


def synthia_label(ids, seed):
    """SYNTHIA GT/LABELS as cv2 writes it: uint16 BGR, class ID in R, an instance ID in G."""
    inst = _rng(seed).integers(0, 1000, ids.shape).astype(np.uint16)
    return np.stack([np.zeros_like(inst), inst, ids.astype(np.uint16)], axis=2)


def write_synthia(root):
    os.makedirs(osp.join(root, 'RGB'))
    os.makedirs(osp.join(root, 'GT', 'LABELS'))
    for i in range(4):
        name = f'{i:07d}'
        ids = id_map(SYNTHIA_EXPECTED, SEG_HW, 10 + i)
        Image.fromarray(image(SEG_HW, 10 + i)).save(osp.join(root, 'RGB', name + '.png'))
        cv2.imwrite(osp.join(root, 'GT', 'LABELS', name + '.png'), synthia_label(ids, i))
        Image.fromarray(apply(SYNTHIA_EXPECTED, ids)).save(
            osp.join(root, 'GT', 'LABELS', name + '_labelTrainIds.png'))


def city_boxes(i):
    """Boxes (x, y, w, h, class index) of Cityscapes frame i; frame 2 of train has none."""
    base = [(10, 20, 30, 24, 2), (60, 8, 20, 40, 0), (90, 30, 30, 20, 3 + i % 5)]
    return [] if i == 2 else base[:1 + i % 3]


def write_cityscapes(root):
    det_classes = {c: k + 1 for k, c in enumerate(CITYSCAPES_DET_CLASSES)}
    os.makedirs(osp.join(root, 'annotations'))
    ann_id = 1
    for split, count in NUM_CITY.items():
        coco = dict(
            images=[],
            annotations=[],
            categories=[dict(id=v, name=k) for k, v in det_classes.items()])
        for i in range(count):
            city = 'aachen'
            stem = f'{city}_{i:06d}_000019'
            idir = osp.join(root, 'leftImg8bit', split, city)
            gdir = osp.join(root, 'gtFine', split, city)
            os.makedirs(idir, exist_ok=True)
            os.makedirs(gdir, exist_ok=True)
            seed = 100 + i + (50 if split == 'val' else 0)
            Image.fromarray(image(CITY_HW, seed)).save(osp.join(idir, stem + '_leftImg8bit.png'))
            train_ids = id_map(list(range(19)) + [255], CITY_HW, seed)
            Image.fromarray(train_ids).save(osp.join(gdir, stem + '_gtFine_labelTrainIds.png'))
            for beta in ('0.005', '0.01', '0.02'):
                fdir = osp.join(root, 'leftImg8bit_foggy', split, city)
                os.makedirs(fdir, exist_ok=True)
                Image.fromarray(image(CITY_HW, seed + int(float(beta) * 1000))).save(
                    osp.join(fdir, f'{stem}_leftImg8bit_foggy_beta_{beta}.png'))
            img_id = i + 1
            coco['images'].append(
                dict(
                    id=img_id,
                    file_name=f'{city}/{stem}_leftImg8bit.png',
                    height=CITY_HW[0],
                    width=CITY_HW[1],
                    segm_file=''))
            for x, y, w, h, c in city_boxes(i):
                coco['annotations'].append(
                    dict(
                        id=ann_id,
                        image_id=img_id,
                        category_id=c + 1,
                        bbox=[x, y, w, h],
                        area=w * h,
                        iscrowd=0,
                        segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
                ann_id += 1
        with open(
                osp.join(root, 'annotations', f'instancesonly_filtered_gtFine_{split}.json'),
                'w') as f:
            json.dump(coco, f)


def write_bdd100k(root):
    for split, count in (('val', 2), ('train', 2)):
        idir = osp.join(root, 'images', '10k', split)
        ldir = osp.join(root, 'labels', 'sem_seg', 'masks', split)
        os.makedirs(idir)
        os.makedirs(ldir)
        for i in range(count):
            name = f'7d2f7975-e0c1c5{split[0]}{i}'
            seed = 200 + i + (10 if split == 'train' else 0)
            cv2.imwrite(osp.join(idir, name + '.jpg'), image((36, 64), seed))
            Image.fromarray(id_map(list(range(19)) + [255], (36, 64),
                                   seed)).save(osp.join(ldir, name + '.png'))


def write_mapillary(root):
    for split, count in (('validation', 2), ('training', 2)):
        idir = osp.join(root, split, 'images')
        ldir = osp.join(root, split, 'v1.2', 'labels')
        os.makedirs(idir)
        os.makedirs(ldir)
        for i in range(count):
            name = f'{split[:3]}_{i:02d}xYz'
            cv2.imwrite(osp.join(idir, name + '.jpg'), image(SEG_HW, 300 + i))
            save_palette(osp.join(ldir, name + '.png'), id_map(MAPILLARY_EXPECTED, SEG_HW, 300 + i))


# ACDC fixture: the official layout at 1/30 of the 1920x1080 frames (same 16:9 aspect; full-size
# PNGs would cost seconds per session for nothing the tests check). Frames per split and condition;
# the val frames sit in two sequence folders (ACDC names them GOPR* and GP01*), the test split has
# no labels (as in the download).
ACDC_HW = (36, 64)
ACDC_FRAMES = dict(
    train=[('GOPR0475', 41)], val=[('GOPR0476', 7), ('GP010476', 3)], test=[('GOPR0477', 12)])
ACDC_CONDITIONS = ('fog', 'night', 'rain', 'snow')


def acdc_seed(condition, split, k):
    return 500 + 40 * ACDC_CONDITIONS.index(condition) + 10 * list(ACDC_FRAMES).index(split) + k


def write_acdc(root):
    for condition in ACDC_CONDITIONS:
        for split, frames in ACDC_FRAMES.items():
            for k, (seq, n) in enumerate(frames):
                stem = f'{seq}_frame_{n:06d}'
                seed = acdc_seed(condition, split, k)
                idir = osp.join(root, 'rgb_anon', condition, split, seq)
                os.makedirs(idir, exist_ok=True)
                Image.fromarray(image(ACDC_HW, seed)).save(osp.join(idir, stem + '_rgb_anon.png'))
                if split == 'test':
                    continue
                gdir = osp.join(root, 'gt', condition, split, seq)
                os.makedirs(gdir, exist_ok=True)
                Image.fromarray(id_map(list(range(19)) + [255], ACDC_HW,
                                       seed)).save(osp.join(gdir, stem + '_gt_labelTrainIds.png'))


def write_mapillary_research_edition(root):
    """Mapillary Vistas v1.2 research edition: ``config.json`` (the 66 classes) at the root,
    ``{split}/images/*.jpg``, ``{split}/labels/*.png`` (palette index = v1.2 class ID) and
    ``{split}/instances/*.png`` (16-bit, class ID * 256 + instance) — no ``v1.2/`` level, which the
    v2.0 archive (:func:`write_mapillary`) adds. Frames in portrait and landscape, as in the
    dataset."""
    labels = [dict(name=f'class{i}', readable=f'Class {i}') for i in range(66)]
    os.makedirs(root)
    with open(osp.join(root, 'config.json'), 'w') as f:
        json.dump(dict(labels=labels, version=1.2), f)
    for split, sizes in (('validation', [(36, 48), (48, 36)]), ('training', [(36, 48)])):
        for sub in ('images', 'labels', 'instances'):
            os.makedirs(osp.join(root, split, sub))
        for i, hw in enumerate(sizes):
            name = f'r{split[0]}{i:02d}Qx'
            ids = id_map(MAPILLARY_EXPECTED, hw, 500 + i)
            cv2.imwrite(osp.join(root, split, 'images', name + '.jpg'), image(hw, 500 + i))
            save_palette(osp.join(root, split, 'labels', name + '.png'), ids)
            cv2.imwrite(
                osp.join(root, split, 'instances', name + '.png'),
                ids.astype(np.uint16) * 256)


GTA5_HW = (1052, 1914)  # the resolution of GTA5's frames (height, width)


def write_gta5_mismatched(root):
    """GTA5 at its real resolution, 3 frames: 00001 image and label 1914x1052; 00002 and 00003 with
    a label of another size than the image (GTA5 has a few such frames; their sizes vary).

    Returns:
        dict: frame name -> ((image h, w), (label h, w)).
    """
    sizes = {
        '00001': (GTA5_HW, GTA5_HW),
        '00002': (GTA5_HW, (1046, 1914)),
        '00003': ((720, 1280), GTA5_HW)
    }
    os.makedirs(osp.join(root, 'images'))
    os.makedirs(osp.join(root, 'labels'))
    for k, (name, (img_hw, label_hw)) in enumerate(sizes.items()):
        # smooth images compress fast; labels: 4x4 blocks holding every fixture label ID
        ramp = np.linspace(0, 255, img_hw[1], dtype=np.uint8)
        img = np.broadcast_to(ramp[None, :, None], (*img_hw, 3)).copy()
        img[..., k] = 60 * k
        Image.fromarray(img).save(osp.join(root, 'images', name + '.png'))
        h, w = label_hw
        cells = id_map(GTA5_EXPECTED, (16, 16), 600 + k)[::4, ::4]  # (4, 4), every label ID
        ids = np.kron(cells, np.ones((-(-h // 4), -(-w // 4)), np.uint8))[:h, :w]
        save_palette(osp.join(root, 'labels', name + '.png'), ids)
    savemat(osp.join(root, 'split.mat'), {'trainIds': np.array([[1], [2], [3]], np.float64)})
    return sizes


def write_bdd100k_older_release(root):
    """The older BDD100K segmentation release (``bdd100k_seg.zip``):
    ``seg/images/{train,val}/*.jpg`` and ``seg/labels/{train,val}/*_train_id.png`` (train IDs, 255
    ignored), 1280x720 frames."""
    for split, count in (('val', 2), ('train', 1)):
        idir = osp.join(root, 'seg', 'images', split)
        ldir = osp.join(root, 'seg', 'labels', split)
        os.makedirs(idir)
        os.makedirs(ldir)
        for i in range(count):
            name = f'{split[0]}{i}a2b3c4d-5e6f7a8b'
            seed = 700 + i + (10 if split == 'train' else 0)
            cv2.imwrite(osp.join(idir, name + '.jpg'), np.full((720, 1280, 3), 40 * i, np.uint8))
            Image.fromarray(id_map(list(range(19)) + [255], (720, 1280),
                                   seed)).save(osp.join(ldir, name + '_train_id.png'))


SIM10K_OBJECTS = {
    '3384645': [('car', 5, 10, 40, 30), ('person', 50, 5, 60, 30), ('car', 70, 20, 110, 50)],
    '3384646': [('motorbike', 10, 10, 30, 30)],  # no car: dropped by filter_empty_gt when training
    '3384647': [('car', 20, 15, 90, 55)],
}
SIM10K_HW = (64, 112)


def write_sim10k(root):
    voc = osp.join(root, 'VOC2012')
    os.makedirs(osp.join(voc, 'JPEGImages'))
    os.makedirs(osp.join(voc, 'Annotations'))
    for k, (name, objects) in enumerate(SIM10K_OBJECTS.items()):
        cv2.imwrite(osp.join(voc, 'JPEGImages', name + '.jpg'), image(SIM10K_HW, 400 + k))
        ann = ET.Element('annotation')
        ET.SubElement(ann, 'filename').text = name + '.jpg'
        size = ET.SubElement(ann, 'size')
        for tag, v in (('width', SIM10K_HW[1]), ('height', SIM10K_HW[0]), ('depth', 3)):
            ET.SubElement(size, tag).text = str(v)
        for cls, x1, y1, x2, y2 in objects:
            obj = ET.SubElement(ann, 'object')
            ET.SubElement(obj, 'name').text = cls
            ET.SubElement(obj, 'difficult').text = '0'
            box = ET.SubElement(obj, 'bndbox')
            for tag, v in (('xmin', x1), ('ymin', y1), ('xmax', x2), ('ymax', y2)):
                ET.SubElement(box, tag).text = str(v)
        ET.ElementTree(ann).write(osp.join(voc, 'Annotations', name + '.xml'))


def build_fixture_data(root):
    """Writes every layout under ``root`` (``root/gta5``, ``root/cityscapes``...) once; returns
    ``root``."""
    root = str(root)
    if osp.exists(osp.join(root, STAMP)):
        return root
    os.makedirs(root, exist_ok=True)
    write_gta5(osp.join(root, 'gta5'))
    write_synthia(osp.join(root, 'synthia'))
    write_cityscapes(osp.join(root, 'cityscapes'))
    write_bdd100k(osp.join(root, 'bdd100k'))
    write_mapillary(osp.join(root, 'mapillary'))
    write_sim10k(osp.join(root, 'sim10k'))
    write_acdc(osp.join(root, 'acdc'))
    from mmnorm.datasets import generate_demo_data
    generate_demo_data(
        osp.join(root, 'demo'),
        num_source_train=4,
        num_source_val=2,
        num_target_train=2,
        num_target_val=2)
    open(osp.join(root, STAMP), 'w').close()
    return root
