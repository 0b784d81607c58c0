"""Fold AdaBN / RN / PBN layers into plain BatchNorm: a checkpoint + config that stock mmseg / mmdet
load without mmnorm.

    python tools/model_converters/fold_norms.py CONFIG CHECKPOINT --out-dir DIR [--name NAME]
    [--overwrite]
        [--shape H W] [--cfg-options k=v ...]

Writes ``DIR/NAME.pth`` (``{'meta', 'state_dict'}`` with tensors and plain containers only, so
torch's weights-only loading accepts it without any allow-list) and ``DIR/NAME.py`` (the config with
BN norm configs, the toolbox's own model class instead of mmnorm's UDA wrappers, and without
mmnorm's imports, hooks, datasets and metrics; every change is printed and written as a comment at
the top). The folded model is checked against the original on a seeded input (eval mode) before
anything is written. Use the checkpoint *after* training or recalibration (e.g. the file
``AdaBNHook(save_checkpoint=...)`` writes): the statistics the layers evaluate with are the ones
folded. IBN models keep their InstanceNorm and are refused: export them with
tools/deployment/pytorch2onnx.py.
"""
import argparse
import os
import os.path as osp

# max |folded - original| allowed relative to max(1, max|original|): folding only re-homes the same
# tensors, so the two models compute the same BN; the margin covers nothing but float32 reordering.
FOLD_TOLERANCE = 1e-5


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Fold mmnorm norm layers into plain BN for stock mmseg / mmdet')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out-dir', required=True, help='folder for NAME.pth and NAME.py')
    parser.add_argument('--name', help='output file stem. Defaults to the config name + "_folded"')
    parser.add_argument(
        '--shape',
        nargs=2,
        type=int,
        default=None,
        metavar=('H', 'W'),
        help="input of the equivalence check. Defaults to the data_preprocessor's size or 64x64")
    parser.add_argument('--overwrite', action='store_true', help='replace existing output files')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config entries, key=value')
    from mmnorm_tools.checkpoints import add_strict_load_argument
    add_strict_load_argument(parser)
    args = parser.parse_args(argv)
    for path, name in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            parser.error(f'{name} not found: {path!r}')
    args.name = args.name or osp.splitext(osp.basename(args.config))[0] + '_folded'
    args.out_checkpoint = osp.join(args.out_dir, args.name + '.pth')
    args.out_config = osp.join(args.out_dir, args.name + '.py')
    existing = [p for p in (args.out_checkpoint, args.out_config) if osp.exists(p)]
    if existing and not args.overwrite:
        parser.error(
            f'{existing} exist; pass --overwrite to replace them or choose another --out-dir / '
            '--name')
    return parser, args


def main(argv=None):
    parser, args = parse_args(argv)
    import torch
    from mmengine.config import Config
    from mmnorm_tools import setup_runtime
    from mmnorm_tools.checkpoints import load_weights

    import mmnorm  # noqa: F401  (registers the mmnorm layers)
    from mmnorm.deploy import build_model, fold_config, fold_norms
    from mmnorm.runtime import (CheckpointFileError, atomic_write_bytes, check_checkpoint_file,
                                get_toolbox)
    setup_runtime()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    try:
        scope = get_toolbox(cfg)
        check_checkpoint_file(args.checkpoint)
        folded_cfg, changes = fold_config(cfg.to_dict(), scope)
        model = build_model(cfg, None)
        source = load_weights(model, args.checkpoint, strict=args.strict_load)
        shape = args.shape or (cfg.model.get('data_preprocessor') or {}).get('size') or (64, 64)
        x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            before = model.extract_feat(x) if scope == 'mmdet' else model(x, None, mode='tensor')
            layers = fold_norms(model)
            after = model.extract_feat(x) if scope == 'mmdet' else model(x, None, mode='tensor')
    except (ValueError, CheckpointFileError) as err:
        parser.error(str(err))
    if not layers:
        parser.error(
            f'{args.checkpoint!r}: the model has no AdaBN / RN / PBN layer; nothing to fold')
    before, after = ([before], [after]) if isinstance(before, torch.Tensor) else (before, after)
    diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
    scale = max([1.0] + [float(a.abs().max()) for a in before])
    if diff > FOLD_TOLERANCE * scale:
        raise RuntimeError(
            f'folded model differs from the original by {diff:.3g} (scale {scale:.3g})')
    meta = dict(folded_from=osp.abspath(args.checkpoint), folded_layers=len(layers))
    dataset_meta = (source.get('meta') or {}).get('dataset_meta') if isinstance(source,
                                                                                dict) else None
    if dataset_meta:
        meta['dataset_meta'] = dataset_meta
    os.makedirs(args.out_dir, exist_ok=True)
    import io
    buffer = io.BytesIO()
    torch.save(
        dict(meta=meta, state_dict={
            k: v.detach().clone()
            for k, v in model.state_dict().items()
        }), buffer)
    atomic_write_bytes(buffer.getvalue(), args.out_checkpoint)
    kinds = sorted(set(layers.values()))
    header = [
        f'# Folded by mmnorm tools/model_converters/fold_norms.py from {args.config}',
        f'# {len(layers)} {"/".join(kinds)} layers -> BatchNorm2d (eval statistics); loads without '
        'mmnorm.'
    ] + [f'# {line}' for line in changes]
    atomic_write_bytes(('\n'.join(header) + '\n' + Config(folded_cfg).pretty_text + '\n').encode(),
                       args.out_config)
    print(f'folded {len(layers)} layers ({", ".join(kinds)}) into BatchNorm2d; max |folded - '
          f'original| {diff:.3g}')
    for line in changes:
        print(f'  {line}')
    print(f'wrote {args.out_checkpoint} and {args.out_config}')
    return dict(layers=layers, changes=changes, max_abs_diff=diff)


if __name__ == '__main__':
    main()
