"""Convert an official IBN-Net ImageNet checkpoint to the key layout of mmnorm's ``IBNResNet``.

    python tools/model_converters/ibnnet2mmseg.py SRC DST [--force] [--allow-unmatched]

SRC is one of the official release files ``resnet{18,34,50,101}_ibn_{a,b}-*.pth`` (a plain state
dict with torchvision names) or an older ``*.pth.tar`` (``{'state_dict': ...}`` with ``module.``
prefixes). Depth and IBN type are read from the keys. DST is a plain state dict for the backbone::

    backbone=dict(type='IBNResNet', depth=50, ibn=dict(type='a'),
                  init_cfg=dict(type='Pretrained', checkpoint='DST'))

The same file serves mmseg and mmdet: both toolboxes' ``IBNResNet`` use the official names
(``layer1.0.bn1.IN.weight``, ``layer1.2.IN.weight`` ...). The ImageNet classifier (``fc.*``) is
dropped. Every other key is checked against an ``IBNResNet`` built here; unmatched keys and shape
mismatches are reported and stop the conversion unless ``--allow-unmatched`` (then only the matching
tensors are written). DST is never overwritten without ``--force``.
"""
import argparse
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch

#: (block kind, blocks per stage) -> ResNet depth.
DEPTHS = {
    ('basic', (2, 2, 2, 2)): 18,
    ('basic', (3, 4, 6, 3)): 34,
    ('bottleneck', (3, 4, 6, 3)): 50,
    ('bottleneck', (3, 4, 23, 3)): 101,
    ('bottleneck', (3, 8, 36, 3)): 152
}
CLASSIFIER = ('fc.', )


def load_official(path: str) -> Dict[str, torch.Tensor]:
    """Reads SRC (weights-only unpickling) and returns its state dict without ``module.``
    prefixes."""
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict):
        checkpoint = checkpoint['state_dict']
    if not isinstance(checkpoint, dict) or not all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f'{path}: expected a state dict (or {{"state_dict": ...}}) of tensors')
    return OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v) for k, v in checkpoint.items())


def infer_arch(state_dict: Dict[str, torch.Tensor]) -> Tuple[int, str]:
    """``(depth, ibn_type)`` from the keys of an official IBN-Net ResNet."""
    blocks = []
    for stage in range(1, 5):
        indices = {
            int(m.group(1))
            for k in state_dict
            for m in [re.match(rf'layer{stage}\.(\d+)\.', k)] if m
        }
        blocks.append(max(indices) + 1 if indices else 0)
    kind = 'bottleneck' if 'layer1.0.conv3.weight' in state_dict else 'basic'
    depth = DEPTHS.get((kind, tuple(blocks)))
    if depth is None:
        raise ValueError(
            f'not a ResNet-18/34/50/101/152 layout: {kind} blocks per stage {tuple(blocks)}')
    if any(re.match(r'layer\d\.\d+\.bn1\.IN\.', k) for k in state_dict):
        return depth, 'a'
    if any(re.match(r'layer\d\.\d+\.IN\.', k)
           for k in state_dict) or ('bn1.weight' in state_dict
                                    and 'bn1.running_mean' not in state_dict):
        return depth, 'b'
    raise ValueError(
        'no IBN layers found (keys like layer1.0.bn1.IN.weight or layer1.2.IN.weight): '
        'a plain ResNet checkpoint loads into IBNResNet directly')


def convert(state_dict: Dict[str, torch.Tensor], depth: int, ibn_type: str) -> dict:
    """Matches the official tensors against an ``IBNResNet(depth, ibn=dict(type=ibn_type))``.

    Returns:
        dict with ``state_dict`` (the matching tensors, in the backbone's key order), ``dropped``
        (classifier keys), ``filled`` (``num_batches_tracked`` absent from old checkpoints, set to
        0), ``unexpected`` (keys the backbone does not have), ``missing`` (backbone keys absent from
        SRC), ``mismatched`` (``(key, source shape, backbone shape)``).
    """
    from mmnorm.models.backbones.mmseg_ibn_resnet import IBNResNet
    target = IBNResNet(depth=depth, ibn=dict(type=ibn_type)).state_dict()
    report = dict(
        state_dict=OrderedDict(), dropped=[], filled=[], unexpected=[], missing=[], mismatched=[])
    for key, value in state_dict.items():
        if key.startswith(CLASSIFIER):
            report['dropped'].append(key)
        elif key not in target:
            report['unexpected'].append(key)
        elif value.shape != target[key].shape:
            report['mismatched'].append((key, tuple(value.shape), tuple(target[key].shape)))
    for key, value in target.items():
        if key in state_dict:
            if state_dict[key].shape == value.shape:
                report['state_dict'][key] = state_dict[key].clone()
        elif key.endswith('num_batches_tracked'):
            report['state_dict'][key] = torch.zeros_like(value)
            report['filled'].append(key)
        else:
            report['missing'].append(key)
    return report


def _print_keys(title: str, keys: List) -> None:
    if keys:
        print(f'{title} ({len(keys)}):')
        for key in keys:
            print(f'  {key}')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='official IBN-Net checkpoint (.pth or .pth.tar)')
    parser.add_argument('dst', help='output state dict for IBNResNet')
    parser.add_argument('--force', action='store_true', help='overwrite DST if it exists')
    parser.add_argument(
        '--allow-unmatched',
        action='store_true',
        help='write the matching tensors even if some keys do not match')
    args = parser.parse_args(argv)
    if osp.exists(args.dst) and not args.force:
        parser.error(f'{args.dst} exists; pass --force to overwrite it')
    try:
        state_dict = load_official(args.src)
        depth, ibn_type = infer_arch(state_dict)
    except (ValueError, RuntimeError, OSError) as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 1
    report = convert(state_dict, depth, ibn_type)
    print(f'{args.src}: ResNet-{depth} IBN-{ibn_type}, {len(state_dict)} tensors')
    _print_keys('dropped (ImageNet classifier)', report['dropped'])
    _print_keys('filled with 0 (absent from old checkpoints)', report['filled'])
    _print_keys('unmatched: not in IBNResNet', report['unexpected'])
    _print_keys('unmatched: IBNResNet keys missing from the checkpoint', report['missing'])
    _print_keys('unmatched: shape mismatch (key, checkpoint, IBNResNet)', report['mismatched'])
    unmatched = report['unexpected'] or report['missing'] or report['mismatched']
    if unmatched and not args.allow_unmatched:
        print(
            f'error: unmatched keys, {args.dst} not written (pass --allow-unmatched to write the '
            'matching tensors)',
            file=sys.stderr)
        return 1
    torch.save(report['state_dict'], args.dst)
    print(f'wrote {len(report["state_dict"])} tensors to {args.dst}; '
          f'use backbone=dict(type=\'IBNResNet\', '
          f'depth={depth}, ibn=dict(type=\'{ibn_type}\'), init_cfg=dict(type=\'Pretrained\', '
          f'checkpoint=\'{args.dst}\'))')
    return 0


if __name__ == '__main__':
    sys.exit(main())
