"""SAR, EATA and CoTTA (TestTimeAdapter) on a small LayerNorm model, each against a direct
re-implementation of its paper's update written here (same data, same random draws), the
``params`` option on LN / GN models, exact reset and bad input."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.hooks import Hook

import mmnorm  # noqa: F401
from mmnorm.tta import TestTimeAdapter as Adapter
from mmnorm.tta import sar_top_blocks, select_parameters

K = 5


class Block(nn.Module):
    """Pre-norm residual MLP block on (N, H, W, C)."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x + torch.tanh(self.fc(self.norm(x)))


class TinyViT(nn.Module):
    """A per-pixel classifier with LayerNorm only: (N, 3, H, W) -> (N, K, H, W) logits; ViT-like
    names (``blocks``, final ``norm``) for SAR's default exclusion."""

    def __init__(self, dim=8, depth=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Conv2d(3, dim, 1)
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, K)
        with torch.no_grad():  # affine far from the identity
            for name, p in self.named_parameters():
                if 'norm' in name:
                    p.copy_((torch.rand_like(p) +
                             0.5) if name.endswith('weight') else torch.randn_like(p) * 0.2)
            self.head.weight.mul_(3)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)
        return self.head(self.norm(self.blocks(x))).permute(0, 3, 1, 2)


def batches(n=3, size=4, seed=1, hw=(6, 7)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, *hw, generator=g) * 1.5 + 0.3 for _ in range(n)]


def entropy(logits):
    logp = torch.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1)


def ln_params(model, exclude=()):
    return [(n, p) for n, p in model.named_parameters()
            if 'norm' in n and not n.startswith(tuple(exclude))]


# -- SAR ---------------------------------------------------------------------------------------------
def sar_reference(model, data, lr, rho, margin_fraction, reset=0.2, exclude=()):
    """SAR (arXiv 2302.12400, Alg. 1) written out: reliable entropy, SAM two-step with the filter
    again after the perturbation, SGD (momentum 0.9), recovery on the EMA (0.9) of the second
    loss."""
    named = ln_params(model, exclude)
    params = [p for _, p in named]
    source = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    margin = margin_fraction * math.log(K)
    ema, resets = None, 0
    for x in data:
        ent = entropy(model(x))
        keep1 = ent.detach() < margin
        opt.zero_grad()
        ent[keep1].mean().backward()
        with torch.no_grad():
            norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
            eps = [rho * p.grad / (norm + 1e-12) for p in params]
            for p, e in zip(params, eps):
                p.add_(e)
        ent2 = entropy(model(x))[keep1]
        keep2 = ent2.detach() < margin
        loss2 = ent2[keep2].mean()
        opt.zero_grad()
        loss2.backward()
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        opt.step()
        value = float(loss2.detach())
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        if ema < reset:
            with torch.no_grad():
                for p, s in zip(params, source):
                    p.copy_(s)
            opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
            ema, resets = None, resets + 1
    return [n for n, _ in named], [p.detach() for p in params], resets


def test_sar_matches_the_paper_update_and_skips_the_top_blocks():
    data = batches()
    ref_model = TinyViT()
    names, expected, _ = sar_reference(
        ref_model, data, lr=0.05, rho=0.05, margin_fraction=0.6, exclude=('blocks.3.', 'norm.'))
    model = TinyViT()
    adapter = Adapter(
        model,
        'sar',
        optimizer=dict(type='SGD', lr=0.05, momentum=0.9),
        sar_margin=0.6,
        logger=None)
    # SAR's default: the last quarter of the blocks (blocks.3) and the final norm are not tuned
    assert adapter.param_names == names
    assert not any(n.startswith(('blocks.3.', 'norm.')) for n in adapter.param_names)
    for x in data:
        out = adapter.adapt(x)
    assert out.shape == (4, K, 6, 7)
    for got, want in zip(adapter.params, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    source = TinyViT()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), source.parameters()))
    for (n, p), q in zip(model.named_parameters(), source.parameters()):
        if n not in adapter.param_names:
            assert torch.equal(p, q), n  # nothing else moves
    assert all(0 < h['selected'] < 1 for h in adapter.history)  # the filter took part


def test_sar_recovery_resets_to_the_source():
    data = batches(4)
    _, expected, resets = sar_reference(
        TinyViT(), data, lr=0.5, rho=0.05, margin_fraction=0.6, reset=0.75)
    model = TinyViT()
    adapter = Adapter(
        model,
        'sar',
        params='norm',
        optimizer=dict(type='SGD', lr=0.5, momentum=0.9),
        sar_margin=0.6,
        sar_reset=0.75,
        logger=None)
    for x in data:
        adapter.adapt(x)
    assert adapter.num_resets == resets == 1  # once, and adaptation went on after it
    for got, want in zip(adapter.params, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


# -- EATA --------------------------------------------------------------------------------------------
def fisher_reference(model, params, data):
    sums = [torch.zeros_like(p) for p in params]
    for x in data:
        logits = model(x)
        loss = F.cross_entropy(logits, logits.detach().argmax(1))
        grads = torch.autograd.grad(loss, params)
        for s, g in zip(sums, grads):
            s += g**2
    return [s / len(data) for s in sums]


def eata_reference(model, data, lr, margin_fraction, redundancy, fisher_data=None, alpha=0.0):
    """EATA (arXiv 2204.02610, Eq. 3-9) with pixels as elements and images as samples of the
    redundancy filter (an image's prediction: mean softmax of its reliable pixels)."""
    named = ln_params(model)
    params = [p for _, p in named]
    source = [p.detach().clone() for p in params]
    fisher = fisher_reference(model, params, fisher_data) if fisher_data else None
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    margin = margin_fraction * math.log(K)
    running, cosines = None, []
    for x in data:
        logits = model(x)
        ent = entropy(logits)
        probs = logits.detach().softmax(1)
        terms, kept_preds, step_cos = [], [], []
        for i in range(x.shape[0]):
            rel = ent[i].detach() < margin
            if not rel.any():
                continue
            pred = probs[i][:, rel].mean(1)
            if running is not None:
                cos = float(F.cosine_similarity(running, pred, dim=0))
                step_cos.append(abs(cos))
                if abs(cos) >= redundancy:
                    continue
            e = ent[i][rel]
            terms.append(torch.exp(margin - e.detach()) * e)
            kept_preds.append(pred)
        cosines.append(step_cos)
        if terms:
            loss = torch.cat(terms).mean()
            if fisher is not None:
                loss = loss + alpha * sum(
                    (f * (p - s)**2).sum() for f, p, s in zip(fisher, params, source))
            opt.zero_grad()
            loss.backward()
            opt.step()
            mean = torch.stack(kept_preds).mean(0)
            running = mean if running is None else 0.9 * running + 0.1 * mean
    return [p.detach() for p in params], cosines


def test_eata_matches_the_paper_update_with_redundancy_and_fisher():
    data, fisher_data = batches(3), batches(2, seed=7)
    _, cosines = eata_reference(TinyViT(), data, lr=0.05, margin_fraction=0.8, redundancy=1.1)
    eps = sorted(cosines[1])[len(cosines[1]) // 2]  # the median |cos| of step 2: a split
    expected, cosines = eata_reference(
        TinyViT(),
        data,
        lr=0.05,
        margin_fraction=0.8,
        redundancy=eps,
        fisher_data=fisher_data,
        alpha=50.0)
    model = TinyViT()
    adapter = Adapter(
        model,
        'eata',
        optimizer=dict(type='SGD', lr=0.05, momentum=0.9),
        eata_margin=0.8,
        eata_redundancy=eps,
        fisher_loader=fisher_data,
        fisher_alpha=50.0,
        num_classes=K,
        logger=None)
    assert adapter.param_names == [n for n, _ in ln_params(model)]
    for x in data:
        adapter.adapt(x)
    for got, want in zip(adapter.params, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    kept = [h['samples_kept'] for h in adapter.history]
    assert kept[0] == 4 and 0 < kept[1] < 4  # the redundancy filter dropped some images


def test_eata_without_fisher_is_eta():
    data = batches(2)
    expected, _ = eata_reference(TinyViT(), data, lr=0.05, margin_fraction=0.8, redundancy=0.99)
    adapter = Adapter(
        TinyViT(),
        'eata',
        optimizer=dict(type='SGD', lr=0.05, momentum=0.9),
        eata_margin=0.8,
        eata_redundancy=0.99,
        num_classes=K,
        logger=None)
    for x in data:
        adapter.adapt(x)
    for got, want in zip(adapter.params, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


# -- CoTTA -------------------------------------------------------------------------------------------
def cotta_reference(model, data, lr, scales, threshold, restore, seed, momentum=0.999):
    """CoTTA (arXiv 2203.13591, Sec. 3) written out: EMA teacher, anchor confidence, teacher views
    over scales x flips, soft cross-entropy, Adam, EMA, stochastic restore."""
    teacher, anchor = copy.deepcopy(model), copy.deepcopy(model)
    params = list(model.parameters())
    source = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(seed)
    outputs = []
    for x in data:
        with torch.no_grad():
            plain = teacher(x)
            q = plain.softmax(1)
            conf = anchor(x).softmax(1).max(1, keepdim=True).values
            views = []
            for s in scales:
                size = (round(x.shape[2] * s), round(x.shape[3] * s))
                xs = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
                for flip in (False, True):
                    out = teacher(xs.flip(3) if flip else xs)
                    out = out.flip(3) if flip else out
                    out = F.interpolate(
                        out, size=plain.shape[2:], mode='bilinear', align_corners=False)
                    views.append(out.softmax(1))
            q = torch.where(conf < threshold, torch.stack(views).mean(0), q)
        outputs.append(q)
        loss = -(q * torch.log_softmax(model(x), 1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for t, p in zip(teacher.parameters(), params):
                t.copy_(momentum * t + (1 - momentum) * p)
            for p, s in zip(params, source):
                mask = torch.rand(p.shape, generator=gen) < restore
                p.copy_(torch.where(mask, s, p))
    return params, list(teacher.parameters()), outputs


def test_cotta_matches_the_paper_update_with_the_same_draws():
    data = batches(3, hw=(8, 8))
    scales = (0.5, 1.0, 1.5)
    ref_student, ref_teacher, ref_out = cotta_reference(
        TinyViT(), data, lr=1e-2, scales=scales, threshold=0.8, restore=0.3, seed=5, momentum=0.9)
    model = TinyViT()
    adapter = Adapter(
        model,
        'cotta',
        optimizer=dict(type='Adam', lr=1e-2),
        cotta_scales=scales,
        cotta_threshold=0.8,
        cotta_restore=0.3,
        cotta_momentum=0.9,
        seed=5,
        logger=None)
    assert adapter.param_names == [n for n, _ in model.named_parameters()]  # params='all'
    outs = [adapter.adapt(x) for x in data]
    for got, want in zip(outs, ref_out):  # predictions: the teacher's pseudo-labels (as log p)
        torch.testing.assert_close(got.exp(), want, rtol=1e-5, atol=1e-6)
    for got, want in zip(model.parameters(), ref_student):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    for got, want in zip(adapter.teacher.parameters(), ref_teacher):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    assert all(0 < h['augmented'] < 1 for h in adapter.history)  # both kinds of pixels


def test_cotta_without_augmentation_uses_the_teacher_alone():
    model = TinyViT()
    adapter = Adapter(model, 'cotta', cotta_augment=False, logger=None)
    assert adapter.anchor is None
    x = batches(1)[0]
    with torch.no_grad():
        expected = TinyViT()(x).softmax(1)
    torch.testing.assert_close(adapter.adapt(x).exp(), expected, rtol=1e-5, atol=1e-6)


# -- params, reset, errors ---------------------------------------------------------------------------
class GNNet(nn.Module):

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.cls = nn.Conv2d(8, K, 1)

    def forward(self, x):
        return self.cls(self.inorm(torch.relu(self.gn(self.conv(x)))))


@pytest.mark.parametrize('params, expected', [
    (None, [
        'blocks.0.norm.weight', 'blocks.0.norm.bias', 'blocks.1.norm.weight', 'blocks.1.norm.bias',
        'blocks.2.norm.weight', 'blocks.2.norm.bias', 'blocks.3.norm.weight', 'blocks.3.norm.bias',
        'norm.weight', 'norm.bias'
    ]),
    (dict(exclude=[r'^blocks\.[0-2]\.']),
     ['blocks.3.norm.weight', 'blocks.3.norm.bias', 'norm.weight', 'norm.bias']),
    (dict(select='all', include=['head', 'embed.bias']), ['embed.bias', 'head.weight', 'head.bias'
                                                          ]),
])
def test_ln_model_tunes_only_what_params_says(params, expected):
    model = TinyViT()
    source = copy.deepcopy(model.state_dict())
    adapter = Adapter(model, 'tent', params=params, optimizer=dict(type='SGD', lr=1.0), logger=None)
    assert adapter.param_names == expected
    adapter.adapt(batches(1)[0])
    for name, value in model.state_dict().items():
        assert torch.equal(value, source[name]) != (name in expected), name


def test_gn_and_instance_norm_affine_are_tuned():
    adapter = Adapter(GNNet(), 'eata', num_classes=K, logger=None)
    assert adapter.param_names == ['gn.weight', 'gn.bias', 'inorm.weight', 'inorm.bias']


def test_sar_top_blocks_of_mmseg_backbones():
    from mmseg.models.backbones import MixVisionTransformer, ResNetV1c
    mit = MixVisionTransformer(embed_dims=8, num_layers=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])
    resnet = ResNetV1c(depth=18)
    assert sar_top_blocks(nn.ModuleDict(dict(backbone=mit))) == [r'^backbone\.layers\.3\.']
    assert sar_top_blocks(nn.ModuleDict(dict(backbone=resnet))) == [r'^backbone\.layer4\.']
    names = [
        n for n, _ in select_parameters(
            nn.ModuleDict(dict(backbone=mit)), {}, dict(exclude=[r'^backbone\.layers\.3\.']))
    ]
    assert names and all('layers.3.' not in n for n in names)
    assert any(n.startswith('backbone.layers.2.') for n in names)  # LN of the lower stages


@pytest.mark.parametrize('method', ['tent', 'sar', 'eata', 'cotta'])
def test_reset_restores_the_source_state_exactly(method):
    model = TinyViT()
    source = copy.deepcopy(model.state_dict())
    adapter = Adapter(
        model,
        method,
        num_classes=K,
        cotta_scales=[1.0],
        logger=None,
        optimizer=dict(type='Adam', lr=0.05))
    data = batches(2)
    first = [adapter.adapt(x) for x in data]
    assert any(not torch.equal(v, source[n]) for n, v in model.state_dict().items())
    adapter.reset()
    for name, value in model.state_dict().items():
        assert torch.equal(value, source[name]), name
    if method == 'cotta':
        for name, value in adapter.teacher.state_dict().items():
            assert torch.equal(value, source[name]), name
    again = [adapter.adapt(x) for x in data]  # the same run again, bit for bit
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize('method', ['sar', 'eata', 'cotta'])
def test_adapts_under_no_grad_as_the_test_loop_calls_it(method):
    models = [TinyViT(), TinyViT()]
    adapters = [
        Adapter(
            m,
            method,
            num_classes=K,
            cotta_scales=[1.0],
            optimizer=dict(type='SGD', lr=0.5),
            logger=None) for m in models
    ]
    x = batches(1)[0]
    adapters[0].adapt(x)
    with torch.no_grad():
        adapters[1].adapt(x)
    changed = False
    for a, b, s in zip(models[0].parameters(), models[1].parameters(), TinyViT().parameters()):
        assert torch.equal(a, b)
        changed = changed or not torch.equal(a, s)
    assert changed


@pytest.mark.parametrize('method', ['sar', 'eata', 'cotta'])
def test_episodic_returns_to_the_source_after_every_batch(method):
    model = TinyViT()
    source = copy.deepcopy(model.state_dict())
    adapter = Adapter(model, method, episodic=True, num_classes=K, cotta_scales=[1.0], logger=None)
    x = batches(1)[0]
    first = adapter.adapt(x)
    for name, value in model.state_dict().items():
        assert torch.equal(value, source[name]), name
    assert torch.equal(adapter.adapt(x), first)


@pytest.mark.parametrize('kwargs, match', [
    (dict(method='memo'), "method must be one of .*'cotta'\\), got 'memo'"),
    (dict(params=dict(exclude=['layer9'])), "params exclude pattern 'layer9' matches none"),
    (dict(params=dict(include=['decoder'])), "params include pattern 'decoder' matches none"),
    (dict(params='affine'), "params must be one of \\('norm', 'all'\\).*got 'affine'"),
    (dict(method='cotta', cotta_scales=[1.0, 0]), 'cotta_scales must be .* > 0.*got \\[1.0, 0\\]'),
    (dict(method='cotta', cotta_scales=[]), 'cotta_scales must be a non-empty'),
    (dict(method='sar', sar_rho=0), 'sar_rho must be a number > 0.*got 0'),
    (dict(method='sar', sar_rho=-0.05), 'sar_rho must be a number > 0.*got -0.05'),
    (dict(method='eata'), "method='eata' needs the number of classes.*num_classes=K"),
    (dict(method='eata', num_classes=K, eata_redundancy=0), 'eata_redundancy must be a number'),
    (dict(method='cotta', cotta_restore=1.5), 'cotta_restore must be a number in \\[0, 1\\]'),
])
def test_bad_input_names_the_value(kwargs, match):
    kwargs = dict(dict(method='tent'), **kwargs)
    with pytest.raises(ValueError, match=match):
        Adapter(TinyViT(), kwargs.pop('method'), logger=None, **kwargs)


def test_model_without_a_tunable_norm_layer_is_refused():
    net = nn.Sequential(nn.Conv2d(3, K, 1), nn.ReLU())
    for method in ('tent', 'sar', 'eata'):
        with pytest.raises(ValueError, match='Sequential: no affine parameters to tune'):
            Adapter(net, method, num_classes=K)
    with pytest.raises(ValueError, match='has no BN-like norm layer to adapt'):
        Adapter(TinyViT(), 'bn')  # LN only: nothing for the statistics methods


# -- segmentors in the test loop ---------------------------------------------------------------------
SEGFORMER_MINI = dict(
    backbone=dict(
        type='MixVisionTransformer',
        in_channels=3,
        embed_dims=8,
        num_stages=4,
        num_layers=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
        mlp_ratio=2,
        qkv_bias=True),
    decode_head=dict(
        type='SegformerHead',
        in_channels=[8, 8, 8, 8],
        in_index=[0, 1, 2, 3],
        channels=16,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=dict(type='BN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))


class OutputsHook(Hook):
    """Keeps what the test loop's ``test_step`` returned for every batch."""
    priority = 'LOWEST'

    def __init__(self):
        self.outputs = []

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.outputs.append(torch.stack([o.seg_logits.data for o in outputs]))


@pytest.mark.parametrize('method, args', [
    ('sar', dict(optimizer=dict(type='SGD', lr=0.5, momentum=0.9), sar_margin=1.0)),
    ('eata', dict(optimizer=dict(type='SGD', lr=0.5), eata_margin=1.0, eata_redundancy=None)),
    ('cotta', dict(optimizer=dict(type='Adam', lr=1e-2), cotta_threshold=0.9)),
])
def test_segformer_hook_predictions_and_updates_equal_the_adapter(method, args, tiny_demo_data,
                                                                  tmp_path):
    """A SegFormer (MixVisionTransformer: LN only; SegformerHead: BN) in the real test loop: the
    hook's predictions (the adapter's, through the session's forward hook) and parameters equal
    TestTimeAdapter.adapt on the same batches; the LN of the backbone moved."""
    import os.path as osp

    from conftest import DEMO_CONFIG, REPO
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(osp.join(REPO, DEMO_CONFIG))
    cfg.test_dataloader.dataset.data_root = osp.join(tiny_demo_data, 'cityscapes')
    cfg.test_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.work_dir = str(tmp_path)
    cfg.model.backbone = copy.deepcopy(SEGFORMER_MINI['backbone'])  # replaced, not merged
    cfg.model.decode_head = copy.deepcopy(SEGFORMER_MINI['decode_head'])
    if method == 'eata':  # the hook builds EATA's Fisher loader from its config
        args = dict(
            args,
            fisher_alpha=100.0,
            fisher_loader=dict(
                batch_size=2,
                num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=False),
                dataset=copy.deepcopy(cfg.test_dataloader.dataset)))
    cfg.custom_hooks = [
        dict(type='TestTimeAdaptHook', method=method, restore=False, logger=None, **args)
    ]
    torch.manual_seed(0)
    runner = Runner.from_cfg(cfg)
    model = copy.deepcopy(runner.model)
    source = copy.deepcopy(model.state_dict())
    captured = OutputsHook()
    runner.register_hook(captured)
    runner.test()
    if method == 'eata':
        args['fisher_loader'] = runner.build_dataloader(args['fisher_loader'])
    adapter = Adapter(model, method, logger=None, **args)
    assert method != 'eata' or adapter.algorithm.fisher is not None
    ln = [n for n in adapter.param_names if '.norm' in n or 'ln' in n]
    assert ln and any(n.startswith('backbone.') for n in adapter.param_names)
    expected = [
        torch.stack([o.seg_logits.data for o in adapter.adapt(b)]) for b in runner.test_dataloader
    ]
    assert len(captured.outputs) == len(expected) == 2
    for got, want in zip(captured.outputs, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    adapted = dict(runner.model.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(adapted[name], param, rtol=1e-5, atol=1e-6)
    moved = [n for n in adapter.param_names if not torch.equal(adapted[n], source[n])]
    assert any(n.startswith('backbone.') for n in moved)
    if method == 'sar':  # the last stage is SAR's excluded top block
        assert not any(n.startswith('backbone.layers.3.') for n in adapter.param_names)
