"""Distributed test-time adaptation with 2 CPU processes (gloo, torchrun): one model on every
rank, equal to one process over the same batches in the same grouping (a torch Adam reference),
unequal batch counts without deadlock (TestTimeAdapter.idle_step, and TestTimeAdaptHook under
tools/dist_test.sh)."""
import math
import os.path as osp
import subprocess
import textwrap

import pytest
import torch
import torch.nn as nn
from conftest import PYTHON, REPO, run_tool, tiny_seg_options, tool_env
from test_tta import K, batches, make_net
from test_tta_models import probed_config

from mmnorm import tta

WORKER = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    sys.path[:0] = [{repo!r}, {tests!r}]
    dist.init_process_group('gloo')
    from mmnorm import TestTimeAdapter
    from test_tta import K, batches, make_net
    rank = dist.get_rank()
    net = make_net('BN')
    adapter = TestTimeAdapter(net, 'tent', num_classes=K, reliable=0.9, optimizer=dict(type='Adam', lr=0.05),
                              logger=None)
    mine = {{0: batches(3, size=4, seed=1), 1: batches(2, size=3, seed=2)}}[rank]  # rank 1 runs out first
    for x in mine:
        adapter.adapt(x)
    for _ in range(3 - len(mine)):
        adapter.idle_step()
    state = dict(params=[p.detach() for p in adapter.params], history=adapter.history)
    torch.save(state, {out!r} + f'/rank{{rank}}.pt')
    dist.barrier()  # both ranks leave together: a rank exiting while the other tears down gloo can abort it
    dist.destroy_process_group()
''')


def reference_params():
    """One process: step t forwards rank 0's and rank 1's t-th batches separately (each with its
    own batch statistics, torch BN in train mode without running stats) and minimises the mean
    entropy of all their selected pixels with torch Adam."""
    net = make_net('BN')
    for i in (1, 4):
        bn = nn.BatchNorm2d(8, track_running_stats=False)
        bn.load_state_dict({'weight': net[i].weight, 'bias': net[i].bias})
        net[i] = bn.train()
    params = [net[1].weight, net[1].bias, net[4].weight, net[4].bias]
    opt = torch.optim.Adam(params, lr=0.05)
    grouping = list(zip(batches(3, size=4, seed=1), batches(2, size=3, seed=2) + [None]))
    margin = 0.9 * math.log(K)
    for group in grouping:
        total, count = 0.0, 0
        for x in (x for x in group if x is not None):
            logp = torch.log_softmax(net(x), 1)
            ent = -(logp.exp() * logp).sum(1)
            keep = ent.detach() < margin
            total = total + ent[keep].sum()
            count += int(keep.sum())
        opt.zero_grad()
        (total / count).backward()
        opt.step()
    return [p.detach() for p in params]


def test_two_ranks_keep_one_model_equal_to_one_process(tmp_path, port):
    worker = tmp_path / 'worker.py'
    worker.write_text(WORKER.format(repo=REPO, tests=osp.join(REPO, 'tests'), out=str(tmp_path)))
    cmd = [
        PYTHON, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
        str(worker)
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in (0, 1)]
    for a, b in zip(ranks[0]['params'], ranks[1]['params']):
        assert torch.equal(a, b)  # bit-identical on both ranks
    assert ranks[0]['history'] == ranks[1][
        'history']  # the same global statistics (and reset decisions)
    assert [h['selected'] < 1 for h in ranks[0]['history']] == [True] * 3  # the selection took part
    for got, expected in zip(ranks[0]['params'], reference_params()):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ranks[0]['params'][0], make_net('BN')[1].weight.detach())


@pytest.mark.slow  # ~25 s; the default run covers idle_step in the 2-process adapter test above
def test_dist_test_sh_with_unequal_batches(tiny_demo_data, tmp_path, port):
    """3 target frames, batch 1, round_up=False: rank 0 tests 2 batches, rank 1 one; the hook
    pads rank 1."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(
        osp.join(
            REPO, 'configs/demo/deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-'
            '64x128.py'))
    cfg.work_dir = str(tmp_path / 'init')
    cfg.test_dataloader.dataset.data_root = osp.join(tiny_demo_data, 'cityscapes')
    ckpt = tmp_path / 'bn.pth'
    torch.save(dict(meta=dict(), state_dict=Runner.from_cfg(cfg).model.state_dict()), ckpt)
    config = 'configs/demo/deeplabv3plus_r18-mini-d8-bn-tta-tent_1xb8-1k_demo-gta5-cityscapes-64x128.py'
    options = [
        o for o in tiny_seg_options(tiny_demo_data, batch_size=1) if o.startswith('test_dataloader')
    ]
    options += [
        'test_dataloader.dataset.indices=3', 'test_dataloader.sampler.round_up=False',
        'custom_hooks.0.episodic=False', 'custom_hooks.0.steps=1'
    ]
    probed, pythonpath = probed_config(tmp_path, config)
    run_tool(
        [
            'tools/dist_test.sh', probed, ckpt, 2, '--work-dir', tmp_path / 'test', '--metrics-out',
            tmp_path / 'metrics.json', '--cfg-options'
        ] + options,
        timeout=600,
        PORT=port,
        PYTHONPATH=pythonpath)
    ranks = [torch.load(tmp_path / f'probe_rank{r}.pt') for r in (0, 1)]
    assert [len(r['logits']) for r in ranks] == [2, 1]  # rank 1 tested one batch ...
    assert [r['steps'] for r in ranks] == [2, 2]  # ... and took the missing step idle
    assert len(ranks[0]['history']) == 2 and ranks[0]['history'] == ranks[1]['history']
    source = torch.load(ckpt)['state_dict']
    assert ranks[0]['params'].keys() == ranks[1]['params'].keys()
    for name, param in ranks[0]['params'].items():
        assert torch.equal(param, ranks[1]['params'][name]), name  # one model on both ranks
    assert any(not torch.equal(p, source[n]) for n, p in ranks[0]['params'].items())
    assert (tmp_path / 'metrics.json').exists()


METHODS_WORKER = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    sys.path[:0] = [{repo!r}, {tests!r}]
    dist.init_process_group('gloo')
    from mmnorm.tta import TestTimeAdapter
    from test_tta_methods import K, TinyViT, batches
    from test_tta_dist import METHOD_ARGS
    rank = dist.get_rank()
    state = {{}}
    for method, args in METHOD_ARGS.items():
        model = TinyViT()
        adapter = TestTimeAdapter(model, method, num_classes=K, logger=None, **args)
        mine = {{0: batches(3, size=3, seed=1), 1: batches(2, size=2, seed=2)}}[rank]
        for x in mine:
            adapter.adapt(x)
        for _ in range(3 - len(mine)):
            adapter.idle_step()  # rank 1 ran out of batches
        state[method] = dict(params=[p.detach() for p in model.parameters()],
                             history=adapter.history)
    torch.save(state, {out!r} + f'/rank{{rank}}.pt')
    dist.barrier()
    dist.destroy_process_group()
''')

METHOD_ARGS = dict(
    sar=dict(optimizer=dict(type='SGD', lr=0.5, momentum=0.9), sar_margin=0.8),
    eata=dict(optimizer=dict(type='SGD', lr=0.5), eata_margin=0.8, eata_redundancy=0.999),
    cotta=dict(
        optimizer=dict(type='Adam', lr=1e-2),
        cotta_scales=(0.5, 1.0),
        cotta_threshold=0.9,
        cotta_restore=0.2,
        cotta_momentum=0.9))


@pytest.mark.slow  # ~15 s idle, ~40 s on loaded cores; the default run covers the reductions (tent)
def test_two_ranks_keep_one_model_under_sar_eata_cotta(tmp_path, port):
    """Every rank one model, equal to one process adapting on both ranks' batches of each step
    together (the LayerNorm model normalises per sample, so the concatenation changes nothing but
    the grouping; CoTTA's restore draws come from one seed on every rank)."""
    from test_tta_methods import K, TinyViT
    from test_tta_methods import batches as ln_batches
    worker = tmp_path / 'worker.py'
    worker.write_text(
        METHODS_WORKER.format(repo=REPO, tests=osp.join(REPO, 'tests'), out=str(tmp_path)))
    cmd = [
        PYTHON, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
        str(worker)
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in (0, 1)]
    joint = [
        torch.cat([a, b])
        for a, b in zip(ln_batches(3, size=3, seed=1), ln_batches(2, size=2, seed=2))
    ] + ln_batches(
        3, size=3, seed=1)[2:]
    for method, args in METHOD_ARGS.items():
        for a, b in zip(ranks[0][method]['params'], ranks[1][method]['params']):
            assert torch.equal(a, b), method  # bit-identical on both ranks
        assert ranks[0][method]['history'] == ranks[1][method]['history']
        model = TinyViT()
        adapter = tta.TestTimeAdapter(model, method, num_classes=K, logger=None, **args)
        for x in joint:
            adapter.adapt(x)
        source = TinyViT()
        moved = False
        for got, want, src in zip(ranks[0][method]['params'], model.parameters(),
                                  source.parameters()):
            torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
            moved = moved or not torch.equal(got, src)
        assert moved, method
