"""Export an mmseg or mmdet model (any mmnorm layer) to ONNX and check it against onnxruntime.

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT --out model.onnx [--shape H W]
    [--dynamic-batch]
        [--batch-size N] [--tolerance T] [--overwrite] [--cfg-options k=v ...]
    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT --check model.onnx [--shape H W] ...

mmseg: the graph outputs the ``tensor``-mode logits; mmdet: the backbone + neck features. The input
is the preprocessed image (``(N, 3, H, W)``, normalised as the config's ``data_preprocessor`` does;
written next to the model in ``<out>.json``). After exporting (or with ``--check``, for an existing
file) the tool runs the checkpoint in torch and the ONNX file in onnxruntime on the same seeded
inputs, prints the max abs difference and exits 1 when it is above ``tolerance x max(1, max|torch
output|)`` (default 1e-4; reasoning in docs/deploy.md). Bad arguments exit 2.
"""
import argparse
import json
import os
import os.path as osp
import sys


def parse_args(argv=None):
    from mmengine.config import DictAction

    from mmnorm.deploy import DEFAULT_TOLERANCE
    parser = argparse.ArgumentParser(
        description='Export an mmseg / mmdet model with mmnorm layers to ONNX')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument('--out', help='ONNX file to write')
    target.add_argument(
        '--check', metavar='ONNX', help='only compare an existing ONNX file with the checkpoint')
    parser.add_argument(
        '--shape',
        nargs=2,
        type=int,
        metavar=('H', 'W'),
        help="input size; defaults to the data_preprocessor's size (mmseg demo configs)")
    parser.add_argument(
        '--batch-size', type=int, default=1, help='batch of the example input. Defaults to 1')
    parser.add_argument(
        '--dynamic-batch', action='store_true', help='export with a dynamic batch dimension')
    parser.add_argument(
        '--tolerance',
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f'allowed max abs diff per unit of output scale. Defaults to {DEFAULT_TOLERANCE}')
    parser.add_argument('--opset', type=int, default=18, help='ONNX opset. Defaults to 18')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing --out file')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config entries, key=value')
    from mmnorm_tools.checkpoints import add_strict_load_argument
    add_strict_load_argument(parser)
    args = parser.parse_args(argv)
    for path, name in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            parser.error(f'{name} not found: {path!r}')
    if args.check and not osp.isfile(args.check):
        parser.error(f'--check: ONNX file not found: {args.check!r}')
    if args.out and osp.exists(args.out) and not args.overwrite:
        parser.error(
            f'--out {args.out!r} exists; pass --overwrite to replace it or choose another path')
    if args.batch_size < 1 or (args.shape and min(args.shape) < 1):
        parser.error(
            f'--batch-size and --shape must be positive, got {args.batch_size} and {args.shape}')
    if not args.tolerance > 0:
        parser.error(f'--tolerance must be > 0, got {args.tolerance}')
    return parser, args


def input_shape(cfg, args, parser):
    if args.shape:
        return tuple(args.shape)
    size = (cfg.model.get('data_preprocessor') or {}).get('size')
    if not size:
        parser.error('the config has no model.data_preprocessor.size; pass --shape H W')
    return tuple(size)


def quiet_third_party() -> None:
    """Silences what the pinned stack prints while building and exporting (not about the user's
    model): mmseg's build_loss / avg_non_ignore notices, torch.onnx's list of torchvision ops it
    skips, a pytree deprecation."""
    import logging
    import warnings
    for message in ('``build_loss`` would be deprecated', 'Default ``avg_non_ignore``',
                    r'`isinstance\(treespec'):
        warnings.filterwarnings('ignore', message=message)
    logging.getLogger('torch.onnx._internal.exporter._registration').setLevel(logging.ERROR)


def main(argv=None):
    parser, args = parse_args(argv)
    quiet_third_party()
    import torch
    from mmengine.config import Config
    from mmnorm_tools import setup_runtime
    from mmnorm_tools.checkpoints import load_weights
    from mmnorm_tools.config import check_norm_types, describe_argument_error

    import mmnorm  # noqa: F401  (registers the mmnorm layers)
    from mmnorm.deploy import ExportWrapper, build_model, compare, export_onnx
    from mmnorm.runtime import CheckpointFileError, check_checkpoint_file, get_toolbox
    from mmnorm.validation import ArgumentError
    setup_runtime()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    try:
        scope = get_toolbox(cfg)
        check_norm_types(cfg)
        check_checkpoint_file(args.checkpoint)
        model = build_model(cfg, None)
        load_weights(model, args.checkpoint, strict=args.strict_load)
    except ArgumentError as err:  # an mmnorm layer's argument, named by its config key
        parser.error(describe_argument_error(err, cfg))
    except (ValueError, CheckpointFileError) as err:
        parser.error(str(err))
    height, width = input_shape(cfg, args, parser)
    wrapper = ExportWrapper(model.eval(), scope).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(args.batch_size, 3, height, width, generator=generator)
    onnx_file = args.check
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        names = export_onnx(
            wrapper, example, args.out, dynamic_batch=args.dynamic_batch, opset=args.opset)
        onnx_file = args.out
        preprocessor = {
            k: v
            for k, v in dict(cfg.model.get('data_preprocessor') or {}).items()
            if k in ('mean', 'std', 'bgr_to_rgb', 'rgb_to_bgr', 'pad_size_divisor', 'size')
        }
        with open(args.out + '.json', 'w') as f:
            json.dump(
                dict(
                    config=args.config,
                    checkpoint=args.checkpoint,
                    toolbox=scope,
                    input='input',
                    input_shape=['N' if args.dynamic_batch else args.batch_size, 3, height, width],
                    outputs=names,
                    preprocessing=preprocessor),
                f,
                indent=2)
        print(f'wrote {args.out} (outputs: {", ".join(names)}) and {args.out}.json')
    inputs = [example]
    if args.dynamic_batch:
        inputs.append(torch.randn(args.batch_size + 2, 3, height, width, generator=generator))
    result = compare(wrapper, onnx_file, inputs)
    limit = args.tolerance * result['scale']
    ok = result['max_abs_diff'] <= limit
    print(f'onnxruntime vs torch: max abs diff {result["max_abs_diff"]:.3g} (output scale '
          f'{result["scale"]:.3g}, limit {limit:.3g}) over batch sizes '
          f'{[x.shape[0] for x in inputs]}: {"OK" if ok else "FAILED"}')
    if not ok:
        print(
            f'error: {onnx_file} differs from the checkpoint by more than the tolerance',
            file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == '__main__':
    main()
