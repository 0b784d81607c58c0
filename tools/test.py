"""Test an mmseg or mmdet checkpoint (the toolbox follows from the config's ``default_scope``) with
mmnorm loaded.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out OUT] [--show-dir DIR
    [--show-interval N]]
                         [--show] [--tta] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]
                         [--metrics-out FILE]

``--out``: mmseg writes the predicted label maps into the directory OUT; mmdet dumps its results
into OUT (.pkl). ``--metrics-out``: the metrics dict as JSON (rank 0), for scripts such as
``tools/demo.py``. ``--show-dir`` / ``--show``: every ``--show-interval``-th test batch is painted
(default: every batch). ``--tta``: test-time augmentation as mmseg / mmdet's own ``tools/test.py``
do it: the config's ``tta_model`` wraps the model and ``tta_pipeline`` replaces the test pipeline
(mmdet: flip TTA by default when the config has neither).

Bad input (a missing or unreadable config or checkpoint, an unknown norm / perturbation / IBN
type, an out-of-range argument of an mmnorm layer or hook, a work dir that cannot be written) ends
with a one-line message naming the value (and the config key) and exit status 2, not a traceback;
arguments are checked before any weights load.
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.dist import get_rank
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmnorm_tools import setup_runtime
from mmnorm_tools.checkpoints import add_strict_load_argument, use_safe_checkpoint_hook
from mmnorm_tools.config import (check_hook_arguments, check_layer_types, check_norm_types,
                                 describe_argument_error, merge_cfg_options)
from mmnorm_tools.launcher import LAUNCHERS, setup_launcher, teardown_launcher

import mmnorm  # noqa: F401  (registers the mmnorm modules)
from mmnorm.runtime import (CheckpointFileError, check_checkpoint_file, get_toolbox, user_errors,
                            write_metrics_json)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a segmentor or detector with mmnorm')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument(
        '--out', help='mmseg: dir for predicted label maps; mmdet: .pkl file of results')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='dir to save painted predictions')
    parser.add_argument(
        '--show-interval',
        type=int,
        default=1,
        help='with --show/--show-dir, paint every N-th test batch. Defaults to 1 (every batch)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--tta', action='store_true', help='test-time augmentation (tta_model, tta_pipeline)')
    parser.add_argument('--metrics-out', help='write the metrics dict to this JSON file')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, key=value; data_roots.<dataset>=PATH moves every path of '
        'one dataset (docs/datasets.md)')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_strict_load_argument(parser)
    args = parser.parse_args(argv)
    if args.show_interval < 1:
        parser.error(f'--show-interval must be >= 1, got {args.show_interval}')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def trigger_visualization_hook(cfg: Config, args, scope: str) -> None:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError(
            '--show/--show-dir need default_hooks.visualization (a SegVisualizationHook or '
            'DetVisualizationHook) in the config')
    hook = hooks['visualization']
    hook['draw'] = True
    hook['interval'] = args.show_interval
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if scope == 'mmdet':
            hook['test_out_dir'] = args.show_dir
        else:
            cfg.visualizer['save_dir'] = args.show_dir


def apply_tta(cfg: Config, scope: str) -> None:
    """Wraps the model in ``cfg.tta_model`` and gives the test dataset ``cfg.tta_pipeline`` (as
    mmseg/mmdet do)."""
    if scope == 'mmdet':
        if 'tta_model' not in cfg:
            cfg.tta_model = dict(
                type='DetTTAModel',
                tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        if 'tta_pipeline' not in cfg:
            test_pipeline = list(
                cfg.test_dataloader.dataset.get('pipeline', cfg.get('test_pipeline', [])))
            if len(test_pipeline) < 2:
                raise ValueError(
                    '--tta: the mmdet config has no tta_pipeline and its test pipeline has fewer '
                    'than two steps to build a flip TTA from; add tta_pipeline to the config')
            flip = [[dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)]]
            cfg.tta_pipeline = [
                *test_pipeline[:-1],
                dict(type='TestTimeAug', transforms=[*flip, [test_pipeline[-1]]])
            ]
    missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
    if missing:
        raise ValueError(
            f'--tta needs {" and ".join(missing)} in the config {cfg.filename!r} (mmseg configs '
            "define them next to the test pipeline, e.g. tta_model = dict(type='SegTTAModel'))")
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # dataset wrappers
        dataset = dataset['dataset']
    dataset.pipeline = cfg.tta_pipeline


def build_cfg(args) -> Config:
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config file not found: {args.config!r}')
    if osp.isdir(args.checkpoint):
        check_checkpoint_file(args.checkpoint)  # raises: names the folder and what to pass instead
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint!r}')
    cfg = Config.fromfile(args.config)
    merge_cfg_options(cfg, args.cfg_options)  # data_roots.<dataset>=PATH moves that dataset
    scope = get_toolbox(cfg)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    cfg.resume = False
    use_safe_checkpoint_hook(cfg, args.strict_load)  # refuses weights that do not fit the model
    if args.show or args.show_dir:
        trigger_visualization_hook(cfg, args, scope)
    if args.tta:
        apply_tta(cfg, scope)
    if args.out is not None and scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    if args.out is not None and scope == 'mmdet' and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out for an mmdet config must be a .pkl file, got {args.out!r}')
    return cfg


def main(argv=None):
    args = parse_args(argv)
    setup_runtime()  # checkpoint allow-list for torch.load, atomic checkpoint writes
    try:
        cfg = build_cfg(args)
        check_norm_types(cfg)
        check_layer_types(cfg)
        check_hook_arguments(cfg)  # e.g. TestTimeAdaptHook's method, before the model is built
        check_checkpoint_file(args.checkpoint)
    except (FileNotFoundError, ValueError, CheckpointFileError) as err:
        print(f'tools/test.py: error: {err}', file=sys.stderr)
        sys.exit(2)
    # a work dir that cannot be written, weights that do not fit, and the argument checks of the
    # mmnorm layers and hooks, which run when the Runner builds them (before any weights load)
    with user_errors('tools/test.py', describe=lambda err: describe_argument_error(err, cfg)):
        os.makedirs(osp.abspath(cfg.work_dir), exist_ok=True)
        setup_launcher(cfg, args.launcher)
        metrics = run_test(cfg, args.out)
    if args.metrics_out and get_rank() == 0:
        write_metrics_json(metrics, args.metrics_out)
    # only after success: a failed rank must not wait in a barrier for the others
    teardown_launcher()
    return metrics


def run_test(cfg: Config, out):
    """Builds the Runner and tests; returns the metrics. With ``out`` an mmdet run also dumps its
    detections there (a .pkl file).

    The Runner lives only in here: its DDP wrapper holds the process group, and it must be freed
    before ``teardown_launcher`` destroys the group.
    """
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if out is not None and cfg.default_scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    return runner.test()


if __name__ == '__main__':
    main()
