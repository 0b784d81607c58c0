"""recalibrate_bn: exact pooled statistics against float64 references, state restoration,
distributed merging.

References are independent of the implementation: a float64 copy of the model run with torch's own
BN (train mode for the one-pass order, eval mode with the written buffers for the layerwise order),
the features of all batches concatenated (``torch.cat``) and reduced once.
"""
import copy
import os.path as osp

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from mmengine.dataset import DefaultSampler
from torch.utils.data import DataLoader, TensorDataset

from mmnorm import recalibrate_bn
from mmnorm.models.norms import IBN, RN, AdaBN
from mmnorm.recalibration import find_bn_layers
from mmnorm.stats import batch_moments, chan_merge

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """conv-BN-ReLU-conv-BN-dropout-conv-GN: two BNs whose inputs depend on the first BN, a GN
    left alone."""

    def __init__(self, sync=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.bn1 = nn.BatchNorm2d(6, momentum=0.3)
        self.conv2 = nn.Conv2d(6, 5, 3)
        self.bn2 = sync(5) if sync is not None else nn.BatchNorm2d(5)
        self.drop = nn.Dropout(0.5)
        self.conv3 = nn.Conv2d(5, 4, 1)
        self.gn = nn.GroupNorm(2, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.gn(self.conv3(self.drop(self.bn2(self.conv2(x)))))


def make_batches(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(sum(sizes), 3, 9, 9, generator=g) * 2.0 + 0.7
    return list(torch.split(data, list(sizes)))


def reference_stats(model, batches, names, bn_train):
    """float64 mean / unbiased var of the inputs of ``names`` over all batches, torch BN in train
    or eval mode."""
    ref = copy.deepcopy(model).double()
    ref.eval()
    feats = {name: [] for name in names}
    modules = dict(ref.named_modules())
    handles = [
        modules[n].register_forward_pre_hook(lambda m, i, n=n: feats[n].append(i[0])) for n in names
    ]
    for name in names:
        modules[name].train(bn_train)
    with torch.no_grad():
        for batch in batches:
            ref(batch.double())
    for h in handles:
        h.remove()
    out = {}
    for name, chunks in feats.items():
        x = torch.cat(chunks)
        dims = [0] + list(range(2, x.dim()))
        out[name] = (x.mean(dims), x.var(dims, unbiased=True))
    return out


def assert_buffers(module, mean, var, rtol=1e-5):
    torch.testing.assert_close(module.running_mean.double(), mean, rtol=rtol, atol=1e-6)
    torch.testing.assert_close(module.running_var.double(), var, rtol=rtol, atol=1e-6)


def test_chan_merge_and_batch_moments_match_closed_form():
    x = torch.randn(10, 4, 3, 3, dtype=torch.float64) * 3 + 1
    n_a, mean_a, var_a = batch_moments(x[:3])
    n_b, mean_b, var_b = batch_moments(x[3:])
    count, mean, m2 = chan_merge(n_a, mean_a, var_a * n_a, n_b, mean_b, var_b * n_b)
    assert count == 90
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(m2 / (count - 1), x.var((0, 2, 3)))
    assert chan_merge(0, None, None, n_b, mean_b, var_b)[0] == n_b


@pytest.mark.parametrize('mode', ['one_pass', 'layerwise'])
def test_resplit_batches_give_closed_form_statistics(mode):
    torch.manual_seed(0)
    model = TinyNet().eval()
    results = {}
    for sizes in [(3, 5, 2, 6), (7, 1, 8), (16, )]:
        m = copy.deepcopy(model)
        batches = make_batches(sizes)
        recalibrate_bn(m, batches, mode=mode, progress=False)
        if mode == 'one_pass':  # torch train-mode BN on the same batches
            ref = reference_stats(model, batches, ['bn1', 'bn2'], bn_train=True)
        else:  # fixed point: eval-mode features with the written statistics
            ref = reference_stats(m, batches, ['bn1', 'bn2'], bn_train=False)
        for name in ('bn1', 'bn2'):
            assert_buffers(getattr(m, name), *ref[name])
        results[sizes] = m
    # bn1's input does not depend on any BN: identical whatever the batch sizes; in the layerwise
    # order bn2 too
    first, *others = results.values()
    for m in others:
        torch.testing.assert_close(m.bn1.running_var, first.bn1.running_var, rtol=1e-5, atol=1e-7)
        if mode == 'layerwise':
            torch.testing.assert_close(
                m.bn2.running_mean, first.bn2.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                m.bn2.running_var, first.bn2.running_var, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(first.bn1.running_mean, model.bn1.running_mean)


def test_modes_momentum_hooks_restored_and_only_norms_switched():
    model = TinyNet().train()
    model.bn2.eval()  # a norm_eval-style lock
    model.bn1.momentum = None
    hook_counts = {
        n: (len(m._forward_hooks), len(m._forward_pre_hooks))
        for n, m in model.named_modules()
    }
    seen = {}

    def record(name):

        def hook(module, inputs):  # returns None: the input is unchanged
            seen.setdefault(name, module.training)

        return hook

    model.drop.register_forward_pre_hook(record('drop'))
    model.bn2.register_forward_pre_hook(record('bn2'))
    hook_counts['drop'] = (0, 1)
    hook_counts['bn2'] = (0, 1)
    batches = make_batches((4, 4))
    result = recalibrate_bn(model, batches, progress=False)
    assert seen['drop'] is True  # dropout stayed in train mode
    assert model.training and model.drop.training and model.bn1.training and not model.bn2.training
    assert model.bn1.momentum is None and model.bn2.momentum == 0.1
    assert {
        n: (len(m._forward_hooks), len(m._forward_pre_hooks))
        for n, m in model.named_modules()
    } == hook_counts
    assert result.layers == ['bn1', 'bn2'] and result.samples == 8 and result.batches == 2
    assert 'gn' in result.left_alone and 'GroupNorm' in result.left_alone['gn']
    assert int(model.bn1.num_batches_tracked) == 0  # the pass's own EMA steps are not counted


class FailingLoader:
    """Yields two good batches, then raises (a corrupt file, an OOM...)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        yield from self.batches[:2]
        raise OSError('corrupt image file 0003.png')


@pytest.mark.parametrize('mode', ['one_pass', 'layerwise'])
def test_state_restored_after_exception_mid_pass(mode):
    model = TinyNet().train()
    model.bn2.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = FailingLoader(make_batches((2, 2, 2)))
    with pytest.raises(OSError, match='corrupt image file'):
        recalibrate_bn(model, loader, mode=mode, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.bn1.training and not model.bn2.training and model.bn1.momentum == 0.3
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_mmdet_resnet_with_norm_eval_and_frozen_stages_is_recalibrated():
    from mmdet.models.backbones import ResNet
    torch.manual_seed(0)
    model = ResNet(depth=18, norm_eval=True, frozen_stages=1, init_cfg=None, out_indices=(3, ))
    model.train(
    )  # norm_eval: every BN in eval, frozen stem + layer1 in eval with requires_grad=False
    bn_names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not dict(model.named_modules())[n].training for n in bn_names)
    before = {n: dict(model.named_modules())[n].running_mean.clone() for n in bn_names}
    batches = [torch.randn(2, 3, 32, 32) * 0.5 + 0.2 for _ in range(3)]
    result = recalibrate_bn(model, batches, mode='layerwise', progress=False)
    assert sorted(result.layers) == sorted(bn_names) and len(bn_names) == 20
    ref = reference_stats(model, batches, bn_names, bn_train=False)
    modules = dict(model.named_modules())
    for name in bn_names:
        assert not torch.allclose(modules[name].running_mean, before[name]), name
        # 20 float32 layers deep against a float64 reference: the mean is compared in units of the
        # channel's std (a near-zero mean has no meaningful relative error), the variance relatively
        mean, var = ref[name]
        assert ((modules[name].running_mean.double() - mean).abs() / var.sqrt()).max() < 1e-4, name
        torch.testing.assert_close(modules[name].running_var.double(), var, rtol=1e-4, atol=1e-6)
        assert not modules[name].training  # the norm_eval lock is back
    assert not model.layer1.training and model.layer2.training


def test_composite_layers_recalibrated_once_into_their_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), AdaBN(8, eval_domain='target'), nn.ReLU(), nn.Conv2d(8, 8, 1),
        IBN(8, ratio=0.5), nn.Conv2d(8, 8, 1), RN(8), nn.Conv2d(8, 6, 1), nn.InstanceNorm2d(6))
    model.eval()
    layers, left_alone = find_bn_layers(model)
    assert list(layers) == ['1', '4.BN', '6']  # AdaBN's per-domain BNs and RN are not visited twice
    assert set(left_alone) == {'4.IN', '8'}
    source = model[1].domain_bn('source').running_mean.clone()
    batches = make_batches((3, 4))
    recalibrate_bn(model, batches, mode='layerwise', progress=False)
    ref = reference_stats(model, batches, ['1', '4', '6'], bn_train=False)
    torch.testing.assert_close(
        model[1].domain_bn('target').running_mean.double(), ref['1'][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        model[1].domain_bn('target').running_var.double(), ref['1'][1], rtol=1e-5, atol=1e-6)
    assert torch.equal(model[1].domain_bn('source').running_mean, source)  # other domain untouched
    bn_half = ref['4'][0][4:], ref['4'][1][4:]  # IBN: the last C - h channels go to its BN child
    assert_buffers(model[4].BN, *bn_half)
    torch.testing.assert_close(
        model[6].running_mean_target.double(), ref['6'][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        model[6].running_var_target.double(), ref['6'][1], rtol=1e-5, atol=1e-6)


def test_limits_and_warnings():
    model = TinyNet().eval()
    batches = make_batches((4, 4, 4))
    result = recalibrate_bn(copy.deepcopy(model), batches, num_iters=2, progress=False)
    assert result.batches == 2 and result.samples == 8
    result = recalibrate_bn(
        model, batches, num_samples=6, progress=False)  # 4 + the first 2 of the second batch
    ref = reference_stats(
        model, [torch.cat(batches)[:6]], ['bn1'], bn_train=True)  # bn1: input from conv1 only
    assert result.samples == 6 and result.batches == 2
    assert_buffers(model.bn1, *ref['bn1'])
    with pytest.warns(UserWarning, match='gave 3 batches'):
        recalibrate_bn(copy.deepcopy(model), batches, num_iters=5, progress=False)
    with pytest.warns(UserWarning, match='12 samples in total'):
        recalibrate_bn(copy.deepcopy(model), batches, num_samples=20, progress=False)


def test_bad_inputs_name_the_value():
    model = TinyNet()
    batches = make_batches((2, 2))
    with pytest.raises(ValueError, match='no batches'):
        recalibrate_bn(model, [], progress=False)
    with pytest.raises(ValueError, match=r'num_iters must be a positive int or None, got 0'):
        recalibrate_bn(model, batches, num_iters=0)
    with pytest.raises(ValueError, match=r'num_samples must be a positive int or None, got -3'):
        recalibrate_bn(model, batches, num_samples=-3)
    with pytest.raises(ValueError, match=r"mode must be one of .*got 'twopass'"):
        recalibrate_bn(model, batches, mode='twopass')
    with pytest.raises(TypeError, match='data_loader must be an iterable of batches .*got str'):
        recalibrate_bn(model, 'test')
    with pytest.raises(TypeError, match='data_loader must be an iterable of batches .*got int'):
        recalibrate_bn(model, 5)
    with pytest.raises(TypeError, match='must be re-iterable .*generator'):
        recalibrate_bn(model, (b for b in batches), mode='layerwise')
    assert all(not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------------------------------
# Two gloo processes
# ---------------------------------------------------------------------------------------------------------------
def _loader(dataset, batch_size, round_up):
    sampler = DefaultSampler(dataset, shuffle=False, round_up=round_up)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def _dist_worker(rank, world_size, init_file, out_dir, state):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group(
        'gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    from mmcv.ops import SyncBatchNorm as MMSyncBN
    data = torch.cat(make_batches((7, )))
    dataset = TensorDataset(data)
    results = {}
    for case, (mode, batch_size, round_up, sync) in CASES.items():
        model = TinyNet(sync=dict(torch=nn.SyncBatchNorm, mmcv=MMSyncBN, none=None)[sync]).eval()
        model.load_state_dict(state)
        loader = _loader(dataset, batch_size, round_up)
        res = recalibrate_bn(model, loader, mode=mode, progress=False)
        results[case] = dict(
            state={
                k: v.clone()
                for k, v in model.state_dict().items()
            },
            samples=res.samples,
            batches=res.batches)
    # a failure on one rank reaches every rank (no hang)
    model = TinyNet().eval()
    batches = make_batches((2, 2, 2))
    try:
        recalibrate_bn(model, FailingLoader(batches) if rank == 1 else batches, progress=False)
    except Exception as exc:  # noqa: BLE001
        results['failure'] = f'{type(exc).__name__}: {exc}'
    torch.save(results, osp.join(out_dir, f'rank{rank}.pth'))
    dist.destroy_process_group()


# mode, batch size, DefaultSampler round_up (pads 7 samples to 8), BN type of bn2
CASES = {
    'layerwise_padded': ('layerwise', 2, True, 'none'),  # rank 1 ends with a repeat of sample 0
    'layerwise_uneven':
    ('layerwise', 3, False, 'torch'),  # rank 0: 2 batches, rank 1: 1 batch; torch SyncBN
    'one_pass_padded':
    ('one_pass', 2, True, 'mmcv'),  # mmcv MMSyncBN (eval + injected statistics on CPU)
    'one_pass_uneven': ('one_pass', 3, False, 'torch'),
}


def test_two_gloo_processes_equal_one_process(tmp_path):
    torch.manual_seed(0)
    model = TinyNet().eval()
    state = copy.deepcopy(model.state_dict())
    mp.spawn(
        _dist_worker, args=(2, str(tmp_path / 'init'), str(tmp_path), state), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pth', weights_only=False) for r in range(2)]
    data = make_batches((7, ))
    for case, (mode, batch_size, _, _) in CASES.items():
        single = copy.deepcopy(model)
        recalibrate_bn(single, list(torch.split(data[0], batch_size)), mode=mode, progress=False)
        for rank in ranks:
            assert rank[case]['samples'] == 7, case  # the padded repeat is not counted
            for key, value in rank[case]['state'].items():
                assert torch.equal(value,
                                   ranks[0][case]['state'][key]), (case, key
                                                                   )  # identical on all ranks
        got = ranks[0][case]['state']
        names = ['bn1', 'bn2'
                 ] if mode == 'layerwise' else ['bn1']  # one pass: bn2 depends on the batching
        for name in names:
            for buf in ('running_mean', 'running_var'):
                torch.testing.assert_close(
                    got[f'{name}.{buf}'],
                    getattr(single, name).__getattr__(buf),
                    rtol=1e-5,
                    atol=1e-6,
                    msg=f'{case} {name}.{buf}')
    assert [r['layerwise_uneven']['batches'] for r in ranks] == [2, 1]
    assert ranks[0][
        'failure'] == 'RuntimeError: recalibrate_bn: the pass failed on rank(s) [1]; see their logs'
    assert ranks[1]['failure'] == 'OSError: corrupt image file 0003.png'


def test_one_value_per_channel_batch_is_measured_not_refused():
    # DeepLabV3+'s image-pool BN sees one value per channel when the last batch holds one image:
    # train-mode BN would raise; recalibration normalises that call with the buffers and still
    # counts the value exactly.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    batches = [torch.randn(3, 3, 5, 5), torch.randn(1, 3, 5, 5)]
    recalibrate_bn(model, batches, progress=False, logger=None)
    feats = torch.cat([model[1](model[0](b)) for b in batches]).double()
    torch.testing.assert_close(
        model[2].running_mean.double(), feats.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        model[2].running_var.double(),
        feats.var(dim=(0, 2, 3), unbiased=True),
        rtol=1e-5,
        atol=1e-6)
    assert model[2].training  # mode restored
