"""Instance whitening (IW / IRW / ISW, RobustNet arXiv 2103.15597): the losses against a direct
float64 re-implementation of the paper's equations, ISW's selection on a hand-computed case, exact
1-D k-means against brute force, gradcheck, the photometric twin's pairing, plain ResNet
checkpoints, the segmentor's ``loss_whitening`` and the statistics hook in a real Runner, the
2-process statistics pass (slow) and the bad-input errors."""
import copy
import itertools
import os.path as osp
import subprocess
import textwrap

import numpy as np
import pytest
import torch
from conftest import PYTHON, REPO, tool_env
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.structures import PixelData
from mmseg.registry import MODELS, TRANSFORMS
from mmseg.structures import SegDataSample

from mmnorm.engine.hooks import ISWStatisticsHook
from mmnorm.models.backbones import residual_sum, standardized_outputs
from mmnorm.models.whitening import (IRW, ISW, IW, collect_isw_variances, kmeans_1d, pair_variance,
                                     run_isw_selection, select_sensitive)
from mmnorm.validation import ArgumentError

DEMO_CONFIG = 'configs/demo/deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py'
TINY_BACKBONE = dict(
    type='WhiteningResNetV1c',
    depth=18,
    base_channels=16,
    stem_channels=16,
    strides=(1, 2, 1, 1),
    dilations=(1, 1, 2, 4),
    contract_dilation=True,
    whitening=dict(type='ISW'))


# ---------------------------------------------------------------- the paper's equations (float64)
def reference_loss(x, mask, margin, divisor, eps=1e-5):
    """Standardise each instance and channel over (H, W) (biased variance + eps), covariance
    ``X X^T / (HW - 1) + eps I``, then ``mean_b max(sum_{mask} |cov| - margin, 0) / divisor`` --
    written out element by element."""
    b, c, h, w = x.shape
    total = 0.0
    for n in range(b):
        feats = []
        for i in range(c):
            v = x[n, i].reshape(-1)
            mu = v.sum() / v.numel()
            var = ((v - mu)**2).sum() / v.numel()
            feats.append((v - mu) / torch.sqrt(var + eps))
        acc = 0.0
        for i in range(c):
            for j in range(c):
                if mask[i][j]:
                    cov = (feats[i] * feats[j]).sum() / (h * w - 1) + (eps if i == j else 0.0)
                    acc = acc + abs(cov)
        total = total + max(acc - margin, 0.0) / divisor
    return float(total / b)


def correlated(b=3, c=5, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, 1, h, w, generator=g, dtype=torch.float64)
    return (torch.randn(b, c, h, w, generator=g, dtype=torch.float64) +
            base * torch.linspace(-2, 2, c, dtype=torch.float64).view(1, c, 1, 1)) * 3 + 1


def test_losses_match_paper_equations():
    x = correlated()
    c = x.shape[1]
    upper = [[j > i for j in range(c)] for i in range(c)]
    n_off = c * (c - 1) // 2
    iw = IW(c)
    assert float(iw.loss(iw(x))) == pytest.approx(reference_loss(x, upper, 0, n_off), rel=1e-12)
    for denom in (2.0, 4.0):
        irw = IRW(c, relax_denom=denom)
        ref = reference_loss(x, upper, n_off // denom, n_off)
        assert float(irw.loss(irw(x))) == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert IRW(c, relax_denom=4.0).margin == 2.0  # floor(10 / 4)
    isw = ISW(c)
    assert float(isw.loss(isw(x))) == 0.0  # nothing selected yet
    chosen = torch.zeros(c, c, dtype=torch.bool)
    chosen[0, 3] = chosen[1, 2] = chosen[2, 4] = True
    isw.selected_mask.copy_(chosen)
    isw.is_selected.fill_(True)
    ref = reference_loss(x, chosen.tolist(), 0, 3)
    assert float(isw.loss(isw(x))) == pytest.approx(ref, rel=1e-12)


def test_standardisation_is_instance_norm_without_affine():
    x = correlated(seed=1)
    out = ISW(5)(x)
    ref = torch.nn.InstanceNorm2d(5, affine=False).double()(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_gradcheck():
    x = correlated(b=2, c=3, h=3, w=3, seed=2).requires_grad_(True)
    for module in (IW(3), IRW(3, relax_denom=3.0), ISW(3)):
        if isinstance(module, ISW):
            module.select(torch.tensor([[0, 2.0, 0.1], [0, 0, 2.1], [0, 0, 0]]))
        assert torch.autograd.gradcheck(lambda t: module.loss(module(t)), (x, ))


def test_loss_under_autocast_is_computed_in_float32():
    x = correlated(b=2, c=8, h=16, w=16, seed=3).float() * 50
    iw = IW(8)
    ref = iw.loss(iw(x))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = iw.loss(iw(x.bfloat16()))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=0)


# ---------------------------------------------------------------- ISW selection
def brute_force_sse(values, k):
    xs = np.sort(values)
    best = np.inf
    for cuts in itertools.combinations(range(1, len(xs)), k - 1):
        bounds = [0, *cuts, len(xs)]
        best = min(best,
                   sum(((xs[a:b] - xs[a:b].mean())**2).sum() for a, b in zip(bounds, bounds[1:])))
    return best


def test_kmeans_1d_is_the_optimum():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(3, 11))
        k = int(rng.integers(1, min(n, 4) + 1))
        x = rng.normal(size=n) if trial % 2 else rng.integers(0, 3, size=n).astype(float)
        labels = kmeans_1d(x, k)
        sse = sum(((x[labels == c] - x[labels == c].mean())**2).sum() for c in set(labels))
        assert sse == pytest.approx(brute_force_sse(x, k), abs=1e-9)
        centroids = [x[labels == c].mean() for c in sorted(set(labels))]
        assert centroids == sorted(centroids)  # clusters numbered by increasing centroid


def test_isw_selection_hand_case():
    # the authors' pair variance is torch.var over [twin, original] (a batch of one image)
    a, b = torch.randn(2, 4, 4, 4, dtype=torch.float64).unbind(0)
    var = pair_variance(a[None], b[None])[0]
    torch.testing.assert_close(var, torch.var(torch.stack([a, b]), dim=0).triu(1))
    # C = 3: six zeros (diagonal and lower triangle) and 0.1, 5.0, 5.2 above the diagonal. Three
    # groups: {0 x6, 0.1} {5.0} {5.2} has SSE 0.1^2 * 6/7 = 0.0086 < {0 x6} {0.1} {5.0, 5.2} (0.02),
    # so group 0 holds the zeros and 0.1; (0, 2) and (1, 2) are selected.
    v = torch.tensor([[0, 0.1, 5.0], [0, 0, 5.2], [0, 0, 0]], dtype=torch.float64)
    expected = torch.tensor([[0, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    assert torch.equal(select_sensitive(v, 3), expected)
    # 1.0 joins the high group with two groups, but forms its own group with three
    v = torch.tensor([[0, 0.1, 5.0], [0, 0, 1.0], [0, 0, 0]], dtype=torch.float64)
    assert select_sensitive(v, 2).sum() == 1
    assert torch.equal(
        select_sensitive(v, 3), torch.tensor([[0, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool))
    # trials intersect; the mask then stays as selected (frozen) and drives the loss
    isw = ISW(3)
    isw.select(torch.tensor([[0, 0.1, 5.0], [0, 0, 5.2], [0, 0, 0]]))
    # {0 x6, 0.1} {4} {6}: (0, 1) and (0, 2); intersected with (0, 2) and (1, 2)
    isw.select(torch.tensor([[0, 4.0, 6.0], [0, 0, 0.1], [0, 0, 0]]), intersect=True)
    assert isw.selected_mask.nonzero().tolist() == [[0, 2]]
    _, margin, divisor = isw.mask_margin_divisor()
    assert (margin, divisor) == (0.0, 1.0)


# ---------------------------------------------------------------- models
def build(cfg):
    init_default_scope('mmseg')
    torch.manual_seed(0)
    return MODELS.build(copy.deepcopy(cfg))


def test_plain_checkpoint_loads_and_isw_mask_round_trips():
    plain_cfg = {k: v for k, v in TINY_BACKBONE.items() if k != 'whitening'}
    plain = build(dict(plain_cfg, type='ResNetV1c'))
    for whitening in (dict(type='IW'), dict(type='IRW'), dict(type='ISW')):
        model = build(dict(TINY_BACKBONE, whitening=whitening))
        model.load_state_dict(plain.state_dict(), strict=True)
        names = sorted(n for n, m in model.named_modules()
                       if n.endswith('whitening_stem') or n.endswith('.whitening'))
        assert names == ['layer1.1.whitening', 'layer2.1.whitening', 'whitening_stem']
        assert not any(True for _ in model.whitening_stem.parameters())
    # the mask is saved and restored; the standardised stem is IN of the stem BN's output
    model.whitening_stem.select(torch.rand(16, 16).triu(1))
    other = build(TINY_BACKBONE)
    other.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(other.whitening_stem.selected_mask, model.whitening_stem.selected_mask)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with standardized_outputs(model) as maps:
        model(x)
    with torch.no_grad():
        stem_norm = model.stem[:-2](x)
        stem_norm = torch.nn.functional.batch_norm(stem_norm, model.stem[-2].running_mean,
                                                   model.stem[-2].running_var,
                                                   model.stem[-2].weight, model.stem[-2].bias)
        torch.testing.assert_close(maps[0][1], torch.nn.functional.instance_norm(stem_norm))
        # a stage position: the last block's residual sum, standardised, before its ReLU
        before = torch.nn.Sequential(*list(model.layer1)[:-1])(model.maxpool(model.stem(x)))
        torch.testing.assert_close(
            maps[1][1], torch.nn.functional.instance_norm(residual_sum(model.layer1[-1], before)))


def test_composes_with_ibn_a_and_norm_cfg():
    model = build(dict(TINY_BACKBONE, ibn=dict(type='a')))
    assert type(model.layer1[0].bn1).__name__ == 'IBN'
    gn = build(dict(TINY_BACKBONE, norm_cfg=dict(type='GN', num_groups=4)))
    assert type(gn.stem[-2]).__name__ == 'GroupNorm'
    for m in (model, gn):
        with standardized_outputs(m) as maps:
            m(torch.randn(2, 3, 32, 32))
        assert [out.shape[1] for _, out in maps] == [16, 16, 32]


def test_every_position_survives_the_sync_bn_revert():
    """mmengine reverts SyncBN to new BN modules on one process (and mmnorm's CPU launcher on a
    CPU process group): the three positions still standardise, the stem one included."""
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(build(dict(TINY_BACKBONE, norm_cfg=dict(type='SyncBN'))))
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with standardized_outputs(model) as maps:
        model(x)
    assert [pos for pos in model.whitening_modules()] == ['stem', 0, 1]
    assert [out.shape[1] for _, out in maps] == [16, 16, 32]
    with torch.no_grad():
        stem_norm = model.stem[:-1](x)
    torch.testing.assert_close(maps[0][1], torch.nn.functional.instance_norm(stem_norm))


def tiny_segmentor(whitening, **backbone):
    """The demo's DeepLabV3+ with TINY_BACKBONE (``backbone`` overrides, e.g. ``after_stages``)."""
    cfg = Config.fromfile(osp.join(REPO, DEMO_CONFIG)).model
    cfg.type = 'WhiteningEncoderDecoder'
    cfg.backbone = dict(
        TINY_BACKBONE, whitening=whitening, norm_cfg=cfg.backbone.norm_cfg, **backbone)
    return build(cfg.to_dict())


def packed(seed, hw=(32, 32)):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, *hw), generator=g, dtype=torch.uint8)
    sample = SegDataSample(metainfo=dict(img_shape=hw, ori_shape=hw, pad_shape=hw))
    return dict(inputs=img, data_samples=sample)


def test_segmentor_adds_loss_whitening():
    for whitening in (dict(type='IW'), dict(type='IRW', relax_denom=64.0)):
        model = tiny_segmentor(whitening)
        samples = []
        for s in range(2):
            sample = packed(s)['data_samples']
            sample.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, 32, 32)))
            samples.append(sample)
        inputs = torch.randn(2, 3, 32, 32)
        losses = model.loss(inputs, samples)
        assert losses['loss_whitening'] > 0 and 'decode.loss_ce' in losses
        with standardized_outputs(model.backbone) as maps:
            model.backbone(inputs)
        expected = torch.stack([m.loss(out) for m, out in maps]).mean() * maps[0][0].loss_weight
        torch.testing.assert_close(losses['loss_whitening'], expected)
        losses['loss_whitening'].backward()
        assert model.backbone.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_photometric_twin_pairing():
    twin = TRANSFORMS.build(dict(type='PhotometricTwin'))
    np.random.seed(0)
    out = twin.transform(packed(0, (24, 40)))
    t = out['data_samples'].twin_inputs
    assert t.shape == out['inputs'].shape and t.dtype == torch.uint8
    assert not torch.equal(t, out['inputs'])
    np.random.seed(0)
    assert torch.equal(twin.transform(packed(0, (24, 40)))['data_samples'].twin_inputs, t)
    # without jitter and with a sub-pixel blur the twin is the image itself
    identity = TRANSFORMS.build(
        dict(
            type='PhotometricTwin',
            brightness=0,
            contrast=0,
            saturation=0,
            hue=0,
            blur_sigma=(1e-3, 1e-3)))
    same = identity.transform(packed(1))
    assert torch.equal(same['data_samples'].twin_inputs, same['inputs'])
    # the statistics pass pairs each image with its own twin: identical twins give zero variance
    model = tiny_segmentor(dict(type='ISW'))
    batch = [identity.transform(packed(s)) for s in (2, 3)]
    batches = iter([
        dict(inputs=[b['inputs'] for b in batch], data_samples=[b['data_samples'] for b in batch])
    ])
    variances = collect_isw_variances(model, batches, num_images=2)
    assert len(variances) == 3 and all(float(v.abs().max()) == 0 for v in variances.values())
    assert model.training  # mode restored


def twin_batches(seeds, hw=(32, 32)):
    twin = TRANSFORMS.build(dict(type='PhotometricTwin'))
    np.random.seed(0)
    for s in seeds:
        b = twin.transform(packed(s, hw))
        yield dict(inputs=[b['inputs']], data_samples=[b['data_samples']])


def test_statistics_match_direct_computation():
    model = tiny_segmentor(dict(type='ISW'))
    batches = list(twin_batches(range(3)))
    variances = collect_isw_variances(model, iter(batches), num_images=3)
    stem = model.backbone.whitening_stem
    model.eval()
    ref = 0
    with torch.no_grad():
        for b in batches:
            pair = [b['inputs'][0], b['data_samples'][0].twin_inputs]
            x = model.data_preprocessor(dict(inputs=pair), False)['inputs']
            # the stem norm's output, standardised
            f = torch.nn.functional.instance_norm(model.backbone.stem[:-1](x)).double()
            f = f.flatten(2)
            cov = f @ f.transpose(1, 2) / (f.shape[-1] - 1)
            ref = ref + torch.var(cov, dim=0).triu(1)
    torch.testing.assert_close(variances[stem], ref / 3, rtol=1e-4, atol=1e-9)


class LossRecorder(Hook):

    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss_whitening'].detach()))


def test_statistics_hook_in_runner(tiny_demo_data, tmp_path):
    cfg = Config.fromfile(osp.join(REPO, DEMO_CONFIG))
    cfg.model.type = 'WhiteningEncoderDecoder'
    cfg.model.backbone = dict(TINY_BACKBONE, norm_cfg=cfg.model.backbone.norm_cfg)
    cfg.train_dataloader.dataset.data_root = osp.join(tiny_demo_data, 'gta5')
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    stats_set = copy.deepcopy(cfg.train_dataloader.dataset)
    stats_set.pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='PackSegInputs'),
        dict(type='PhotometricTwin')
    ]
    recorder = LossRecorder()
    cfg.custom_hooks = [
        dict(
            type='ISWStatisticsHook',
            after_iter=2,
            num_images=3,
            trials=2,
            dataloader=dict(
                batch_size=1,
                num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=True),
                dataset=stats_set))
    ]
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=3, val_interval=100)
    cfg.param_scheduler = []
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=3, by_epoch=False)
    cfg.work_dir = str(tmp_path)
    cfg.pop('visualizer', None)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(recorder)
    runner.train()
    late = ISWStatisticsHook(after_iter=3, dataloader=cfg.custom_hooks[0]['dataloader'])
    with pytest.raises(ArgumentError, match='after_iter=3 is not before the end of training'):
        late.before_train(runner)
    assert recorder.losses[:2] == [0.0, 0.0] and recorder.losses[2] > 0
    for module in runner.model.backbone.isw_modules().values():
        assert bool(module.is_selected) and 0 < int(module.selected_mask.sum())
        assert not module.selected_mask.tril().any()
    saved = torch.load(osp.join(str(tmp_path), 'iter_3.pth'), weights_only=False)['state_dict']
    assert torch.equal(saved['backbone.whitening_stem.selected_mask'],
                       runner.model.backbone.whitening_stem.selected_mask)


# ---------------------------------------------------------------- 2 processes
WORKER = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    import torch.distributed as dist
    from test_whitening import tiny_segmentor, twin_batches
    from mmnorm.models.whitening import collect_isw_variances, run_isw_selection
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    model = tiny_segmentor(dict(type='ISW', clusters=3))
    seeds = [rank * 2, rank * 2 + 1]  # rank r holds images 2r, 2r + 1
    var = collect_isw_variances(model, twin_batches(seeds), num_images=4)
    run_isw_selection(model, list(twin_batches(seeds)), num_images=4, trials=1)
    torch.save(dict(var=[v for v in var.values()],
                    masks=[m.selected_mask for m in model.backbone.isw_modules().values()]),
               {out!r} + f'/rank{{rank}}.pt')
''')


@pytest.mark.slow
def test_two_process_statistics_equal_one_process(tmp_path, port):
    """Ranks holding halves of the images reach the variance matrices of one process over all of
    them, and the same masks."""
    worker = tmp_path / 'worker.py'
    worker.write_text(WORKER.format(tests=osp.join(REPO, 'tests'), out=str(tmp_path)))
    cmd = [
        PYTHON, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
        str(worker)
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in (0, 1)]
    # twin_batches seeds numpy once per call, so each rank's twins are those of its own call
    model = tiny_segmentor(dict(type='ISW', clusters=3))
    whole = {}
    for r in (0, 1):
        for m, v in collect_isw_variances(
                model, twin_batches([2 * r, 2 * r + 1]), num_images=2).items():
            whole[m] = whole.get(m, 0) + v / 2
    for got0, got1, ref in zip(ranks[0]['var'], ranks[1]['var'], whole.values()):
        torch.testing.assert_close(got0, got1, rtol=0, atol=0)
        torch.testing.assert_close(got0, ref, rtol=1e-10, atol=1e-12)
    for m0, m1, ref in zip(ranks[0]['masks'], ranks[1]['masks'], whole.values()):
        assert torch.equal(m0, m1) and torch.equal(m0, select_sensitive(ref, 3))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize('kwargs, match', [
    (dict(after_stages=('stem', 4)), r"4 is not a whitening position .*0\.\.3"),
    (dict(after_stages=()), 'non-empty'),
    (dict(whitening=dict(type='ISW', clusters=1)), 'clusters must be an int >= 2.*clusters=1'),
    (dict(whitening=dict(type='IW', loss_weight=-0.5)), 'loss_weight must be a number >= 0'),
    (dict(whitening=dict(type='IRW', relax_denom=-1)), 'relax_denom must be a number >= 0'),
    (dict(whitening=dict(type='BN')), "whitening must be dict\\(type='IW'"),
    (dict(ibn=dict(type='b')), "ibn=dict\\(type='b'\\) use the same positions"),
])
def test_bad_backbone_arguments(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        build(dict(TINY_BACKBONE, **kwargs))


def test_isw_without_twin_is_refused():
    with pytest.raises(ArgumentError, match="add dict\\(type='PhotometricTwin'\\)"):
        ISWStatisticsHook(
            after_iter=10,
            dataloader=dict(
                dataset=dict(
                    type='GTA5Dataset',
                    pipeline=[dict(type='LoadImageFromFile'),
                              dict(type='PackSegInputs')])))
    model = tiny_segmentor(dict(type='ISW'))
    plain = packed(0)
    batch = dict(inputs=[plain['inputs']], data_samples=[plain['data_samples']])
    with pytest.raises(ArgumentError, match='PhotometricTwin'):
        run_isw_selection(model, [batch], num_images=1, trials=1)
    with pytest.raises(ArgumentError, match='need a segmentor whose backbone has ISW'):
        run_isw_selection(tiny_segmentor(dict(type='IW')), [batch], num_images=1, trials=1)
    with pytest.raises(ArgumentError, match='yields no batch'):
        run_isw_selection(model, [], num_images=1, trials=1)
    with pytest.raises(ArgumentError, match='after_iter must be an int >= 0'):
        ISWStatisticsHook(after_iter=-1, dataloader=[])


def test_tools_config_check_names_the_key():
    from mmnorm_tools.config import UserError, check_layer_types
    backbone = dict(TINY_BACKBONE, whitening=dict(type='ISX'))
    cfg = Config(dict(model=dict(type='WhiteningEncoderDecoder', backbone=backbone)))
    with pytest.raises(UserError, match=r"model.backbone.whitening.type='ISX' .*'ISW'"):
        check_layer_types(cfg)
    cfg.model.backbone.whitening = dict(type='IRW', relax_denom=-2)
    with pytest.raises(UserError, match=r'model.backbone.whitening \(IRW\): .*relax_denom'):
        check_layer_types(cfg)
    cfg.model.backbone.whitening = dict(type='ISW', clusters=3)
    assert check_layer_types(cfg) == 1


@pytest.mark.slow
def test_benchmark_tool_tiny(tmp_path):
    """tools/benchmark_whitening.py at a tiny size: every loss against the network without it."""
    from tool_loader import load_tool
    bench = load_tool('benchmark_whitening')
    out = tmp_path / 'bench.md'
    result = bench.main(
        ['--input', '2x3x64x64', '--repeats', '1', '--stat-images', '1', '--out',
         str(out)])
    rows = result['rows']
    assert [r['variant'] for r in rows] == ['none (ResNetV1c)', 'IW', 'IRW', 'ISW', 'SAW']
    assert [r['cpu_ratio']
            for r in rows] == [pytest.approx(r['cpu_s'] / rows[0]['cpu_s']) for r in rows]
    assert result['stats'][0]['pair_s'] > 0
    text = out.read_text()
    for r in rows:
        assert f"| {r['variant']} | 2x3x64x64 | {r['iter_s']:.3f} | {r['ratio']:.3f} |" in text
