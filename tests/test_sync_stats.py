"""Synchronised statistics of RN and PBN (``sync_stats``): 2 gloo processes (torchrun) normalise as
ONE process on the concatenated batch -- outputs, input gradients, summed parameter gradients and
running statistics equal in float64 -- and the default stays per process; in one process the
option is a no-op.

Per rank the batches are those of a 2-GPU run; the reference concatenates them ([all sources | all
targets] for RN) and runs the unsynchronised layer (RN) or the released per-patch loop
(``mmnorm_tools.pbn_loop``, PBN) on one process.
"""
import os.path as osp
import subprocess
import textwrap

import pytest
import torch
import torch.nn as nn
from conftest import PYTHON, REPO, tool_env
from mmnorm_tools.pbn_loop import pbn_patch_loop

from mmnorm.models.norms import PBN, RN, domain_split
from mmnorm.models.norms.pbn import pbn_fixed, sample_pbn_plan
from mmnorm.stats import all_reduce_moments

C, H, W = 8, 6, 7
# (num_source, num_target) per forward and rank: equal, unequal, and a pure-source rank.
RN_SPLITS = {0: [(2, 2), (3, 1), (2, 0)], 1: [(2, 2), (1, 3), (1, 2)]}
PBN_BATCH = {0: 2, 1: 3}
PBN_STEPS = 2
SEED = 7


def rank_input(rank: int, step: int, n: int, what: int = 0) -> torch.Tensor:
    """A float64 ``(n, C, H, W)`` batch with per-channel offsets and scales (``what`` 1: the loss
    weights)."""
    g = torch.Generator().manual_seed(1000 * what + 100 * rank + step)
    scale = torch.rand(1, C, 1, 1, generator=g, dtype=torch.float64) * 3 + 0.5
    shift = torch.randn(1, C, 1, 1, generator=g, dtype=torch.float64) * 2
    return torch.randn(n, C, H, W, generator=g, dtype=torch.float64) * scale + shift


def init_layer(layer: nn.Module) -> nn.Module:
    """Deterministic non-trivial parameters (RN gates inside the gate range)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(
                torch.rand(p.shape, generator=g, dtype=p.dtype) * 0.5 +
                (0.5 if 'gate' in name else 0.75))
    return layer


def make_rn(sync: bool) -> RN:
    return init_layer(
        RN(C, group_channels=4, allow_single_domain=True, sync_stats=sync, dtype=torch.float64))


def make_pbn(**kwargs) -> PBN:
    return init_layer(PBN(C, dtype=torch.float64, **kwargs))


def record(layer: nn.Module, outputs, grads) -> dict:
    return dict(
        outputs=outputs,
        grads=grads,
        params={
            n: p.grad.clone()
            for n, p in layer.named_parameters()
        },
        buffers={
            n: b.clone()
            for n, b in layer.named_buffers()
        })


WORKER = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    sys.path[:0] = [{repo!r}, {tests!r}]
    dist.init_process_group('gloo')
    from mmengine.model import convert_sync_batchnorm
    from mmnorm.models.norms import domain_split
    from mmnorm.stats import all_reduce_moments, channel_moments
    from test_sync_stats import (PBN_BATCH, PBN_STEPS, RN_SPLITS, SEED, make_pbn, make_rn,
                                 rank_input, record)
    rank = dist.get_rank()
    out = {{}}

    x = rank_input(rank, 0, PBN_BATCH[rank])
    mean, var = channel_moments(x)
    count = x.numel() // x.shape[1]
    empty = torch.full_like(mean, float('nan'))  # a summary empty on rank 1
    out['moments'] = all_reduce_moments(
        torch.tensor([count, count if rank == 0 else 0]), torch.stack([mean, mean if rank == 0 else empty], 1),
        torch.stack([var * count, var * count if rank == 0 else empty], 1))

    def run(layer, inputs, split=None):
        ys, gs = [], []
        for step, x in enumerate(inputs):
            x = x.clone().requires_grad_()
            if split is None:
                y = layer(x)
            else:
                with domain_split(layer, split[step]):
                    y = layer(x)
            (y * rank_input(rank, step, x.shape[0], what=1)).sum().backward()
            ys.append(y.detach())
            gs.append(x.grad)
        return record(layer, ys, gs)

    rn_inputs = [rank_input(rank, s, sum(split)) for s, split in enumerate(RN_SPLITS[rank])]
    out['rn'] = run(make_rn(True), rn_inputs, RN_SPLITS[rank])
    out['rn_default'] = run(make_rn(False), rn_inputs[:1], RN_SPLITS[rank][:1])
    pbn_inputs = [rank_input(rank, s, PBN_BATCH[rank]) for s in range(PBN_STEPS)]
    torch.manual_seed(SEED)
    out['pbn_random'] = run(convert_sync_batchnorm(make_pbn()), pbn_inputs)  # SyncBN child: synced
    out['pbn_fixed'] = run(make_pbn(mode='fixed', lam=0.3, sync_stats=True), pbn_inputs)
    out['pbn_default'] = run(make_pbn(mode='fixed', lam=0.3), pbn_inputs[:1])  # BN child: per process
    torch.save(out, {out!r} + f'/rank{{rank}}.pt')
    dist.barrier()
    dist.destroy_process_group()
''')


def reference(layer: nn.Module, inputs, forward) -> dict:
    """One process: ``forward(layer, x, step)`` on each concatenated batch, loss = the sum of the
    ranks' losses."""
    ys, gs = [], []
    for step, (x, weights) in enumerate(inputs):
        x = x.clone().requires_grad_()
        y = forward(layer, x, step)
        (y * weights).sum().backward()
        ys.append(y.detach())
        gs.append(x.grad)
    return record(layer, ys, gs)


def rn_reference() -> dict:
    """RN on one process: per forward ``[sources of ranks 0, 1 | targets of ranks 0, 1]``."""
    inputs, splits = [], []
    for step in range(len(RN_SPLITS[0])):
        parts = {what: [] for what in (0, 1)}
        for rank in (0, 1):
            n_s, n_t = RN_SPLITS[rank][step]
            for what in (0, 1):
                parts[what].append(rank_input(rank, step, n_s + n_t, what).split([n_s, n_t]))
        inputs.append(
            tuple(
                torch.cat([p[0] for p in parts[what]] + [p[1] for p in parts[what]])
                for what in (0, 1)))
        splits.append(tuple(sum(RN_SPLITS[r][step][d] for r in (0, 1)) for d in (0, 1)))

    def forward(layer, x, step):
        with domain_split(layer, splits[step]):
            return layer(x)

    return reference(make_rn(False), inputs, forward)


def rn_rank_rows(step: int, rank: int) -> torch.Tensor:
    """Rows of the concatenated RN batch of ``step`` that hold ``rank``'s samples, in its order."""
    (s0, t0), (s1, t1) = RN_SPLITS[0][step], RN_SPLITS[1][step]
    source = [torch.arange(s0), s0 + torch.arange(s1)][rank]
    target = [torch.arange(t0), t0 + torch.arange(t1)][rank] + s0 + s1
    return torch.cat([source, target])


def pbn_inputs():
    return [
        tuple(torch.cat([rank_input(r, s, PBN_BATCH[r], what) for r in (0, 1)]) for what in (0, 1))
        for s in range(PBN_STEPS)
    ]


def pbn_random_reference() -> dict:
    """The released per-patch loop on the concatenated batch with the plan every rank drew: from a
    generator seeded by rank 0's draw from its default generator (``pbn_random_train``)."""
    torch.manual_seed(SEED)

    def forward(layer, x, step):
        seed = int(torch.randint(2**62, (1, )))
        plan = sample_pbn_plan(C, H, W, layer.p, torch.Generator().manual_seed(seed))
        layer.bn.num_batches_tracked.add_(1)
        return pbn_patch_loop(x, layer, plan)

    return reference(make_pbn(), pbn_inputs(), forward)


def pbn_fixed_reference() -> dict:
    """Fixed-grid PBN (unsynchronised layer) on the concatenated batch."""
    return reference(make_pbn(mode='fixed', lam=0.3), pbn_inputs(), lambda layer, x, step: layer(x))


def assert_same_run(ranks, expected, rows_of) -> None:
    """Per rank: outputs and input gradients are the reference's rows; parameter gradients summed
    over the ranks and every rank's running statistics equal the reference's."""
    tol = dict(rtol=1e-9, atol=1e-10)
    for rank, got in enumerate(ranks):
        for step, (y, g) in enumerate(zip(got['outputs'], got['grads'])):
            rows = rows_of(step, rank)
            torch.testing.assert_close(y, expected['outputs'][step][rows], **tol)
            torch.testing.assert_close(g, expected['grads'][step][rows], **tol)
        for name, buf in got['buffers'].items():
            torch.testing.assert_close(buf, expected['buffers'][name], **tol, msg=name)
    for name, grad in expected['params'].items():
        torch.testing.assert_close(ranks[0]['params'][name] + ranks[1]['params'][name], grad, **tol)


def test_two_ranks_normalise_as_one_batch(tmp_path, port):
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

    # all_reduce_moments: the float64 statistics of torch.cat; a summary empty on a rank adds 0.
    xs = [rank_input(r, 0, PBN_BATCH[r]) for r in (0, 1)]
    whole, first = torch.cat(xs), xs[0]
    counts, mean, m2 = ranks[1]['moments']
    assert counts.tolist() == [whole.numel() // C, first.numel() // C]
    for k, x in enumerate((whole, first)):
        torch.testing.assert_close(mean[:, k], x.mean((0, 2, 3)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            m2[:, k], x.var((0, 2, 3), correction=0) * counts[k], rtol=1e-10, atol=1e-10)

    def pbn_rows(step, rank):
        return slice(0, PBN_BATCH[0]) if rank == 0 else slice(PBN_BATCH[0], None)

    assert_same_run([r['rn'] for r in ranks], rn_reference(), rn_rank_rows)
    assert_same_run([r['pbn_random'] for r in ranks], pbn_random_reference(), pbn_rows)
    assert_same_run([r['pbn_fixed'] for r in ranks], pbn_fixed_reference(), pbn_rows)

    # Defaults (RN; PBN with a plain BN child): each rank normalises its own batch.
    for rank, got in enumerate(ranks):
        n_s, n_t = RN_SPLITS[rank][0]
        x = rank_input(rank, 0, n_s + n_t)
        layer = make_rn(False)
        with domain_split(layer, (n_s, n_t)):
            torch.testing.assert_close(got['rn_default']['outputs'][0], layer(x).detach())
        pbn = make_pbn(mode='fixed', lam=0.3)
        x = rank_input(rank, 0, PBN_BATCH[rank])
        expected = pbn_fixed(x, pbn.weight, pbn.bias, pbn.running_mean.clone(),
                             pbn.running_var.clone(), pbn.grid, pbn.lam, pbn.momentum, pbn.eps)
        torch.testing.assert_close(got['pbn_default']['outputs'][0], expected.detach())
    assert not torch.allclose(ranks[0]['pbn_random']['outputs'][0],
                              ranks[0]['pbn_default']['outputs'][0])


def test_one_process_sync_is_a_no_op():
    """No process group: ``sync_stats=True`` gives the unsynchronised layer's output and
    statistics bit for bit, and ``all_reduce_moments`` returns its input."""
    counts, mean, m2 = torch.tensor([3, 4]), torch.randn(5, 2), torch.rand(5, 2)
    got = all_reduce_moments(counts, mean, m2)
    assert torch.equal(got[0], counts.double()) and got[1] is mean and got[2] is m2
    x = rank_input(0, 0, 4)
    for make in (lambda s: make_rn(s), lambda s: make_pbn(mode='fixed', sync_stats=s)):
        synced, plain = make(True), make(False)
        with domain_split(synced, (2, 2)), domain_split(plain, (2, 2)):
            assert torch.equal(synced(x), plain(x))
        for a, b in zip(synced.buffers(), plain.buffers()):
            assert torch.equal(a, b)


def test_sync_stats_must_be_a_bool():
    from mmnorm.validation import ArgumentTypeError
    for bad in ('yes', 1, None):
        with pytest.raises(ArgumentTypeError, match='RN sync_stats must be True or False'):
            RN(8, sync_stats=bad)
    for bad in ('yes', 1):
        with pytest.raises(ArgumentTypeError, match='PBN sync_stats must be True, False or None'):
            PBN(8, sync_stats=bad)
    assert 'sync_stats=None' in repr(PBN(8)) and 'sync_stats=True' in repr(RN(8, sync_stats=True))
