"""Train an mmseg or mmdet model (the toolbox follows from the config's ``default_scope``) with
mmnorm loaded.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]
                          [--launcher none|pytorch|slurm] [--test-last [--metrics-out FILE]]

``--amp``: mmengine's ``AmpOptimWrapper`` (float16, dynamic loss scale) on a GPU, mmnorm's
``CPUAmpOptimWrapper`` (bfloat16 autocast) without one. ``--cfg-options compile=True`` (or
``compile.backend=...``) is mmengine's ``torch.compile`` switch (the model's ``train_step`` is
compiled). ``--test-last``: after training, the final weights are tested in the same process with
the config's ``test_dataloader`` / ``test_evaluator`` (as ``tools/test.py`` would test the last
checkpoint, without a second start-up); ``--metrics-out`` writes that test's metrics as JSON.

Bad input (a missing or unreadable config or checkpoint, an unknown norm / perturbation / IBN
type, an out-of-range argument of an mmnorm layer or hook, a work dir that cannot be written) ends
with a one-line message naming the value (and the config key) and exit status 2, not a traceback;
arguments are checked before any weights load.
"""
import argparse
import os
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction
from mmengine.dist import get_rank
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmnorm_tools import setup_runtime
from mmnorm_tools.checkpoints import (add_strict_load_argument, resolve_auto_resume,
                                      use_safe_checkpoint_hook)
from mmnorm_tools.config import (check_hook_arguments, check_layer_types, check_norm_types,
                                 describe_argument_error, merge_cfg_options)
from mmnorm_tools.launcher import LAUNCHERS, setup_launcher, teardown_launcher

import mmnorm  # noqa: F401  (registers the mmnorm modules)
from mmnorm.runtime import (CheckpointFileError, check_checkpoint_file, get_toolbox, user_errors,
                            write_metrics_json)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a segmentor or detector with mmnorm')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and checkpoints')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from CKPT; without a value, from the latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision training')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, key=value (e.g. model.backbone.norm_cfg.type=IBN); '
        'data_roots.<dataset>=PATH moves every path of one dataset (docs/datasets.md)')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument(
        '--test-last',
        action='store_true',
        help="after training, test the final weights with the config's test_dataloader")
    parser.add_argument(
        '--metrics-out', help='with --test-last: write the test metrics dict to this JSON file')
    add_strict_load_argument(parser)
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if args.metrics_out and not args.test_last:
        parser.error('--metrics-out writes the metrics of --test-last: pass --test-last too')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_cfg(args) -> Config:
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config file not found: {args.config!r}')
    cfg = Config.fromfile(args.config)
    merge_cfg_options(cfg, args.cfg_options)  # data_roots.<dataset>=PATH moves that dataset
    get_toolbox(cfg)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        optim_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if optim_type == 'OptimWrapper' and torch.cuda.is_available():
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
        # mmengine's AmpOptimWrapper needs a GPU: bfloat16 autocast on CPU
        elif optim_type == 'OptimWrapper':
            cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'
            cfg.optim_wrapper.dtype = 'bfloat16'
        elif optim_type not in ('AmpOptimWrapper', 'CPUAmpOptimWrapper'):
            raise ValueError('--amp needs optim_wrapper.type OptimWrapper or AmpOptimWrapper, got '
                             f'{optim_type!r}')
    use_safe_checkpoint_hook(cfg, args.strict_load)
    if args.resume == 'auto':
        resolve_auto_resume(cfg)
    elif args.resume is not None:
        if osp.isdir(args.resume):
            check_checkpoint_file(args.resume, '--resume checkpoint')  # raises: names the folder
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f'--resume checkpoint not found: {args.resume!r}')
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def check_inputs(cfg: Config, args) -> None:
    """Norm / perturbation / IBN types, mmnorm hook arguments and the checkpoints to load,
    checked before anything is built."""
    check_norm_types(cfg)
    check_layer_types(cfg)
    check_hook_arguments(cfg)
    if args.resume not in (None, 'auto'):
        check_checkpoint_file(args.resume, '--resume checkpoint')
    elif cfg.get('load_from') and not cfg.get('resume') and '://' not in str(cfg.load_from):
        check_checkpoint_file(cfg.load_from, 'load_from checkpoint')


def main(argv=None):
    args = parse_args(argv)
    setup_runtime()  # checkpoint allow-list for torch.load, atomic checkpoint writes
    try:
        cfg = build_cfg(args)
        check_inputs(cfg, args)
    except (FileNotFoundError, ValueError, CheckpointFileError) as err:
        print(f'tools/train.py: error: {err}', file=sys.stderr)
        sys.exit(2)
    # a work dir that cannot be written, weights that do not fit, and the argument checks of the
    # mmnorm layers and hooks, which run when the Runner builds them (before any weights load)
    with user_errors('tools/train.py', describe=lambda err: describe_argument_error(err, cfg)):
        os.makedirs(osp.abspath(cfg.work_dir), exist_ok=True)
        setup_launcher(cfg, args.launcher)
        metrics = train_and_test(cfg, args.test_last)
    if metrics is not None and args.metrics_out and get_rank() == 0:
        write_metrics_json(metrics, args.metrics_out)
    # only after success: a failed rank must not wait in a barrier for the others
    teardown_launcher()


def train_and_test(cfg: Config, test_last: bool):
    """Trains; with ``test_last`` tests the weights in memory (the last checkpoint's: Runner.test
    does not load them again). Returns the test metrics or None.

    The Runner lives only in here: its DDP wrapper holds the process group, and it must be freed
    before ``teardown_launcher`` destroys the group.
    """
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    return runner.test() if test_last else None


if __name__ == '__main__':
    main()
