"""MixStyle, EFDMix and DSU against direct re-implementations of the papers' formulas (as the
authors' code computes them), gradients, identities, randomness, dtypes / memory formats and bad
input."""
import math

import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS, DefaultScope

import mmnorm  # noqa: F401  (registration)
from mmnorm.models.norms.domain import domain_split
from mmnorm.models.perturb import (DSU, EFDMix, MixStyle, efdmix, mixing_partners, mixstyle,
                                   sample_beta, set_perturbation_active)

LAYERS = {'MixStyle': MixStyle, 'EFDMix': EFDMix, 'DSU': DSU}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def layer(name: str, seed: int = 0, **kw) -> nn.Module:
    return LAYERS[name](p=kw.pop('p', 1.0), generator=gen(seed), **kw).train()


def replay_mixing(seed: int, n: int, alpha: float = 0.1, mix: str = 'random', split=None):
    """The coin, lam and partners a mixing layer with ``generator=gen(seed)`` draws, in its
    order."""
    g = gen(seed)
    torch.rand((), generator=g)
    return sample_beta(alpha, n, g), mixing_partners(n, mix, split, g)


# ---- references: the papers' formulas written out as the authors' code computes them
# -------------------------
def mixstyle_reference(x, lam, perm, eps=1e-6):
    mu = x.mean(dim=[2, 3], keepdim=True)
    sig = (x.var(dim=[2, 3], keepdim=True) + eps).sqrt()
    mu, sig = mu.detach(), sig.detach()
    x_normed = (x - mu) / sig
    lmda = lam.view(-1, 1, 1, 1)
    return x_normed * (sig * lmda + sig[perm] * (1 - lmda)) + (mu * lmda + mu[perm] * (1 - lmda))


def efdmix_reference(x, lam, perm):
    b, c, h, w = x.shape
    x_view = x.view(b, c, -1)
    value_x, index_x = torch.sort(x_view)
    inverse_index = index_x.argsort(-1)
    x_view_copy = value_x[perm].gather(-1, inverse_index)
    new_x = x_view + (x_view_copy - x_view.detach()) * (1 - lam.view(-1, 1, 1))
    return new_x.view(b, c, h, w)


def dsu_reference(x, e1, e2, factor=1.0, eps=1e-6):
    b, c = x.shape[:2]
    mean = x.mean(dim=[2, 3])
    std = (x.var(dim=[2, 3]) + eps).sqrt()
    sqrtvar_mu = (mean.var(dim=0, keepdim=True) + eps).sqrt().repeat(b, 1)
    sqrtvar_std = (std.var(dim=0, keepdim=True) + eps).sqrt().repeat(b, 1)
    beta = mean + e1 * factor * sqrtvar_mu
    gamma = std + e2 * factor * sqrtvar_std
    x = (x - mean.reshape(b, c, 1, 1)) / std.reshape(b, c, 1, 1)
    return x * gamma.reshape(b, c, 1, 1) + beta.reshape(b, c, 1, 1)


def features(shape=(6, 4, 5, 7), seed=1, dtype=torch.float64):
    g = gen(seed)
    scale = torch.rand(shape[0], shape[1], 1, 1, generator=g, dtype=dtype) * 3 + 0.2
    shift = torch.randn(shape[0], shape[1], 1, 1, generator=g, dtype=dtype) * 2
    return torch.randn(*shape, generator=g, dtype=dtype) * scale + shift


@pytest.mark.parametrize('mix', ['random', 'crossdomain'])
@pytest.mark.parametrize('alpha', [0.1, 2.0])
def test_mixstyle_matches_reference(mix, alpha):
    x = features()
    lam, perm = replay_mixing(3, 6, alpha, mix)
    y = layer('MixStyle', 3, alpha=alpha, mix=mix)(x)
    torch.testing.assert_close(y, mixstyle_reference(x, lam, perm), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y, x)


@pytest.mark.parametrize('mix', ['random', 'crossdomain'])
def test_efdmix_matches_reference(mix):
    x = features()
    lam, perm = replay_mixing(4, 6, 0.1, mix)
    y = layer('EFDMix', 4, mix=mix)(x)
    torch.testing.assert_close(y, efdmix_reference(x, lam, perm), rtol=0, atol=0)
    # forward value lam * x + (1 - lam) * (partner's sorted values at x's ranks): same order
    # statistics per channel
    copy = (y - lam.view(-1, 1, 1, 1) * x) / (1 - lam.view(-1, 1, 1, 1))
    keep = (1 - lam) > 1e-3
    torch.testing.assert_close(copy[keep].flatten(2).sort(-1).values,
                               x[perm][keep].flatten(2).sort(-1).values)


@pytest.mark.parametrize('factor', [1.0, 0.5])
def test_dsu_matches_reference(factor):
    x = features()
    g = gen(5)
    torch.rand((), generator=g)
    e1, e2 = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    y = layer('DSU', 5, factor=factor)(x)
    torch.testing.assert_close(y, dsu_reference(x, e1, e2, factor), rtol=1e-12, atol=1e-12)


def test_mixstyle_identity_partner_and_lam_one():
    x = features()
    n = x.shape[0]
    torch.testing.assert_close(mixstyle(x, torch.rand(n, dtype=x.dtype), torch.arange(n)), x)
    torch.testing.assert_close(mixstyle(x, torch.ones(n, dtype=x.dtype), torch.randperm(n)), x)
    torch.testing.assert_close(efdmix(x, torch.ones(n, dtype=x.dtype), torch.randperm(n)), x)


def paper_function(name: str, seed: int, x0: torch.Tensor):
    """The paper's map ``t -> y`` for the draws of ``layer(name, seed)``, with what the authors'
    code detaches frozen at ``x0`` (MixStyle: the statistics; EFDMix: the ``x.detach()`` term), so
    its true derivative is the gradient the layer must produce."""
    n, c = x0.shape[:2]
    if name == 'DSU':
        g = gen(seed)
        torch.rand((), generator=g)
        e1, e2 = torch.randn(2, n, c, generator=g, dtype=torch.float64)
        return lambda t: dsu_reference(t, e1, e2)
    lam, perm = replay_mixing(seed, n)
    if name == 'MixStyle':
        mu, sig = x0.mean((2, 3), keepdim=True), (x0.var((2, 3), keepdim=True) + 1e-6).sqrt()
        lmda = lam.view(-1, 1, 1, 1)
        return lambda t: (t - mu) / sig * (lmda * sig + (1 - lmda) * sig[perm]) + lmda * mu + (
            1 - lmda) * mu[perm]
    return lambda t: t + (efdmix_reference(t, torch.zeros(n, dtype=t.dtype), perm) - x0) * (
        1 - lam.view(-1, 1, 1, 1))


@pytest.mark.parametrize('name', list(LAYERS))
def test_gradcheck_float64(name):
    """gradcheck of ``layer(t) + (paper(t) - layer(t)).detach()``: numerically the paper's function,
    analytically the layer's backward."""
    x = features((3, 2, 3, 4), seed=7).requires_grad_()
    paper = paper_function(name, 11, x.detach().clone())  # gradcheck perturbs x in place
    with torch.no_grad():
        torch.testing.assert_close(layer(name, 11)(x), paper(x), rtol=1e-12, atol=1e-12)

    def checked(t):
        y = layer(name, 11)(t)
        return y + (paper(t) - y).detach()

    assert torch.autograd.gradcheck(checked, (x, ), eps=1e-6, atol=1e-6)


def test_mixstyle_statistics_are_detached():
    """With detached statistics the map is affine per sample: the Jacobian is diag(sig_mix /
    sig)."""
    x = features((4, 3, 4, 4), seed=2).requires_grad_()
    lam, perm = replay_mixing(1, 4)
    weights = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    (mixstyle(x, lam, perm) * weights).sum().backward()
    sig = (x.detach().var((2, 3), keepdim=True) + 1e-6).sqrt()
    sig_mix = lam.view(-1, 1, 1, 1) * sig + (1 - lam.view(-1, 1, 1, 1)) * sig[perm]
    torch.testing.assert_close(x.grad, weights * sig_mix / sig)


@pytest.mark.parametrize('name', list(LAYERS))
def test_eval_inactive_and_p0_are_identity(name):
    x = features()
    m = layer(name)
    assert m.eval()(x) is x
    m.train()
    assert set_perturbation_active(nn.Sequential(m), False) == 1
    assert m(x) is x
    set_perturbation_active(m, True)
    assert m(x) is not x
    zero = layer(name, p=0.0)
    assert all(zero(x) is x for _ in range(50))


@pytest.mark.parametrize('name', list(LAYERS))
def test_probability_per_forward(name):
    m = layer(name, p=0.3)
    x = features()
    hits = sum(m(x) is not x for _ in range(400))
    assert abs(hits / 400 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 400)


@pytest.mark.parametrize('name', list(LAYERS))
def test_batch_of_one_is_identity(name):
    one = features((1, 4, 5, 5))
    assert layer(name)(one) is one


@pytest.mark.parametrize('name', ['MixStyle', 'DSU'])
def test_single_position_maps_are_identity_for_variance_layers(name):
    """MixStyle and DSU divide by the spatial standard deviation, undefined on a 1x1 map: identity
    there."""
    pixels = features((6, 4, 1, 1))
    assert layer(name)(pixels) is pixels


@pytest.mark.parametrize('mix', ['random', 'crossdomain'])
def test_efdmix_mixes_single_position_maps_as_the_authors(mix):
    """EFDMix needs no variance: on a 1x1 map (an image-pooling branch) each value is its own sorted
    row and the authors' code mixes it with the partner's value, lam * x + (1 - lam) * x[perm]."""
    x = features((6, 4, 1, 1)).requires_grad_()
    lam, perm = replay_mixing(7, 6, 0.1, mix)
    y = layer('EFDMix', 7, mix=mix)(x)
    assert y is not x
    torch.testing.assert_close(y, efdmix_reference(x, lam, perm), rtol=0, atol=0)
    lmda = lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(y, lmda * x + (1 - lmda) * x[perm])
    assert not torch.allclose(y, x)
    # gradient as the authors' code: weight 1 on x itself, (1 - lam) on the partner's value
    y.sum().backward()
    expected = torch.ones_like(x)
    expected.index_add_(0, perm, (1 - lmda).expand_as(x).detach())
    torch.testing.assert_close(x.grad, expected)


def test_dsu_resampled_moments_over_many_draws():
    """Over many draws the resampled moments beta, gamma (recovered from the output) have mean mu /
    sig and standard deviation factor * Sigma_mu / factor * Sigma_sig."""
    x = features((5, 3, 6, 6), seed=9)
    factor, eps, draws = 0.7, 1e-6, 4000
    m = layer('DSU', 21, factor=factor)
    ys = torch.stack([m(x) for _ in range(draws)])  # (draws, N, C, H, W)
    mu, sig = x.mean((2, 3)), (x.var((2, 3)) + eps).sqrt()
    sigma_mu, sigma_sig = (mu.var(0) + eps).sqrt(), (sig.var(0) + eps).sqrt()
    normed = (x - mu[..., None, None]) / sig[..., None, None]
    beta = ys.mean((3, 4))  # normed has zero spatial mean
    gamma = ((ys - beta[..., None, None]) * normed).sum((3, 4)) / (normed**2).sum((2, 3))
    se = 1 / math.sqrt(draws)
    for moment, centre, spread in ((beta, mu, factor * sigma_mu), (gamma, sig, factor * sigma_sig)):
        assert ((moment.mean(0) - centre).abs() / spread < 5 * se).all()
        assert ((moment.std(0) / spread - 1).abs()
                < 5 * se * math.sqrt(0.5)).all()  # SE of a std ~ 1/sqrt(2n)
        z = (moment - centre) / spread  # standard normal per (n, c)
        assert ((z.abs() < 1).double().mean(0) -
                0.6827).abs().max() < 5 * math.sqrt(0.6827 * 0.3173 / draws)


@pytest.mark.parametrize('alpha', [0.1, 1.0, 3.0])
def test_beta_sampler_matches_beta_distribution(alpha):
    n = 20000
    lam = sample_beta(alpha, n, gen(0))
    assert lam.dtype == torch.float64 and ((lam >= 0) & (lam <= 1)).all()
    var = 1 / (4 * (2 * alpha + 1))
    assert abs(lam.mean() - 0.5) < 5 * math.sqrt(var / n)
    assert abs(lam.var() / var - 1) < 0.05
    torch.manual_seed(0)
    ref = torch.distributions.Beta(alpha, alpha).sample((n, )).double()
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    cdf = (lam[None] <= grid[:, None]).double().mean(1)
    ref_cdf = (ref[None] <= grid[:, None]).double().mean(1)
    assert (cdf - ref_cdf).abs().max() < 1.63 * math.sqrt(2 / n)  # two-sample KS at 1 %


@pytest.mark.parametrize('name', list(LAYERS))
def test_generator_and_global_seed_reproducibility(name):
    x = features()
    torch.testing.assert_close(layer(name, 5)(x), layer(name, 5)(x), rtol=0, atol=0)
    assert not torch.equal(layer(name, 5)(x), layer(name, 6)(x))
    m = LAYERS[name](p=1.0).train()
    torch.manual_seed(3)
    a = m(x)
    torch.manual_seed(3)
    torch.testing.assert_close(m(x), a, rtol=0, atol=0)


def test_crossdomain_partners():
    for _ in range(20):
        halves = mixing_partners(8, 'crossdomain', None, None)
        assert (halves[:4] >= 4).all() and (halves[4:] < 4).all() and sorted(
            halves.tolist()) == list(range(8))
        uneven = mixing_partners(8, 'crossdomain', (3, 5), None)
        assert (uneven[:3] >= 3).all() and (uneven[3:] < 3).all()


def test_crossdomain_uses_the_declared_split():
    x = features((5, 4, 3, 3))
    m = layer('MixStyle', 2, mix='crossdomain')
    with pytest.raises(ValueError, match='odd batch of 5'):
        m(x)
    with domain_split(nn.Sequential(m), (2, 3)):
        y = m(x)
    lam, perm = replay_mixing(2, 5, mix='crossdomain', split=(2, 3))
    assert (perm[:2] >= 2).all() and (perm[2:] < 2).all()
    torch.testing.assert_close(y, mixstyle_reference(x, lam, perm))
    with domain_split(nn.Sequential(m), (5, 0)), pytest.raises(
            ValueError, match=r'both domains.*\(5, 0\)'):
        m(x)
    with domain_split(nn.Sequential(m), (2, 2)), pytest.raises(ValueError, match='sums to 4'):
        m(x)


@pytest.mark.parametrize('name', list(LAYERS))
def test_bf16_autocast_computes_in_float32(name):
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(4, 3, 12, 12) * 3 + 1
    with torch.autocast('cpu', dtype=torch.bfloat16):
        h = conv(x)
        y = layer(name, 8)(h)
    assert h.dtype == y.dtype == torch.bfloat16
    expected = layer(name, 8)(h.double()).to(torch.bfloat16)
    # float32 statistics: the output is the exact result rounded to bf16 (<= 1 ulp of bf16 apart)
    torch.testing.assert_close(y.float(), expected.float(), rtol=2**-7, atol=1e-2)


@pytest.mark.parametrize('name', list(LAYERS))
def test_channels_last(name):
    x = features((4, 6, 5, 5), dtype=torch.float32)
    xc = x.contiguous(memory_format=torch.channels_last)
    y = layer(name, 4)(xc)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, layer(name, 4)(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('scope', [None, 'mmseg', 'mmdet'])
@pytest.mark.parametrize('name', list(LAYERS))
def test_registry_and_no_state(scope, name):
    cfg = dict(type=name, p=0.25)
    if scope is None:
        m = MODELS.build(cfg)
    else:
        with DefaultScope.overwrite_default_scope(scope):
            m = MODELS.build(cfg)
    assert type(m) is LAYERS[name] and m.p == 0.25
    assert m.state_dict() == {} and not list(m.parameters())
    assert 'p=0.25' in repr(m)


@pytest.mark.parametrize('kwargs, match', [
    (dict(p=1.5), r'p .*\[0, 1\], got p=1.5'),
    (dict(p=-0.1), r'got p=-0.1'),
    (dict(p='0.5'), r"got p='0.5'"),
    (dict(alpha=0), r'alpha must be .* > 0, got alpha=0'),
    (dict(alpha=-1.0), r'got alpha=-1.0'),
    (dict(mix='domain'), r"mix must be one of .*got mix='domain'"),
    (dict(generator=0), r'generator must be a torch.Generator'),
])
@pytest.mark.parametrize('name', ['MixStyle', 'EFDMix'])
def test_bad_mixing_arguments(name, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LAYERS[name](**kwargs)


def test_bad_dsu_arguments_and_inputs():
    with pytest.raises(ValueError, match=r'got p=2'):
        DSU(p=2)
    with pytest.raises(ValueError, match=r'factor .* >= 0, got factor=-1'):
        DSU(factor=-1)
    with pytest.raises(TypeError, match='unexpected keyword'):
        DSU(alpha=0.1)
    with pytest.raises(ValueError, match=r'\(N, C, H, W\) feature map, got shape \(2, 3, 4\)'):
        DSU().train()(torch.randn(2, 3, 4))
