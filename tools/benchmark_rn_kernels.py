"""The kernels of RN's (and IBN's) fused paths against the alternatives they replace.

    python tools/benchmark_rn_kernels.py [--shapes 4x256x4096 4x1024x1024] [--repeats 20] [--threads 2]

RN's forward needs the per-channel mean and variance of each domain part ``(n, C, L)``, its backward the two
per-channel sums ``sum(dy * x)`` and ``sum(dy)`` and the elementwise ``dx = a * dy + k1 * x + k0``.

* statistics: ``torch.var_mean(x, dim=(0, 2))`` (public), ``torch.batch_norm_update_stats`` (BN's statistics kernel,
  what RN used before) and what RN uses now, :func:`mmnorm.models.norms.fused_kernels.sample_moments` (per
  (sample, channel) row: ``sum`` and ``vector_norm``, one pass each over contiguous rows) merged per domain;
* backward sums: ``((dy * x).sum((0, 2)), dy.sum((0, 2)))`` (public) and ``native_batch_norm_backward`` with
  identity statistics (``row_sums``: one fused pass, no ``dy * x`` temporary);
* dx pass: two out-of-place broadcast ``addcmul`` (what RN used before) and ``row_affine_grad`` (in place on one
  new map).

The shapes are one domain part (4 of 8 images) of the two RN benchmark shapes of docs/benchmarks.md. Each pair of
alternatives is timed interleaved (median of per-call times). Prints a Markdown table; checks the numbers agree.
"""
import argparse
import time
from typing import Callable, List

import torch

from mmnorm.models.norms.fused_kernels import merge_samples, row_affine_grad, row_sums, sample_moments


def median_ms(steps: List[Callable[[], object]], repeats: int) -> List[float]:
    """Median ms of each step, the steps called in turn (interleaved) ``repeats`` times after one warm-up."""
    for step in steps:
        step()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            start = time.perf_counter()
            step()
            times[i].append(time.perf_counter() - start)
    return [sorted(t)[len(t) // 2] * 1e3 for t in times]


def public_stats(x: torch.Tensor):
    return torch.var_mean(x, dim=(0, 2), correction=0)[::-1]


def bn_stats(x: torch.Tensor):
    return torch.batch_norm_update_stats(x, None, None, 0.0)


def row_stats(x: torch.Tensor):
    return merge_samples(*sample_moments(x))


def public_sums(grad: torch.Tensor, x: torch.Tensor):
    return (grad * x).sum((0, 2)), grad.sum((0, 2))


def fused_sums(grad: torch.Tensor, x: torch.Tensor):
    n, c = x.shape[:2]
    sums = row_sums(grad.view(1, n * c, -1), x.view(1, n * c, -1), x.new_zeros(n * c), x.new_ones(n * c), 0.0)
    return tuple(s.view(n, c).sum(0) for s in sums)


def addcmul_dx(grad, x, a, k1, k0):
    return torch.addcmul(k0[:, None], x, k1[:, None]).addcmul_(grad, a[:, None])


def inplace_dx(grad, x, a, k1, k0):
    n, c = x.shape[:2]
    rows = lambda v: v.repeat(n)  # noqa: E731
    return row_affine_grad(grad.view(1, n * c, -1), x.view(1, n * c, -1), rows(a), rows(k1), rows(k0)).view_as(x)


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shapes', nargs='+', default=['4x256x4096', '4x1024x1024'], help='n x C x L')
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print('| part (n x C x L) | var_mean | batch_norm_update_stats | row moments | (dy*x).sum, dy.sum '
          '| row_sums | 2 x addcmul dx | row_affine_grad dx |')
    print('|---|---|---|---|---|---|---|---|')
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split('x'))
        x, grad = torch.randn(shape), torch.randn(shape)
        coef = [torch.randn(shape[1]) for _ in range(3)]
        # same numbers: the kernels are exact replacements
        for stats in (bn_stats(x), row_stats(x)):
            for got, want in zip(stats, public_stats(x)):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        for got, want in zip(fused_sums(grad, x), public_sums(grad, x)):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-2)
        torch.testing.assert_close(inplace_dx(grad, x, *coef), addcmul_dx(grad, x, *coef), rtol=1e-5, atol=1e-5)
        stats_ms = median_ms([lambda: public_stats(x), lambda: bn_stats(x), lambda: row_stats(x)], args.repeats)
        sums_ms = median_ms([lambda: public_sums(grad, x), lambda: fused_sums(grad, x)], args.repeats)
        dx_ms = median_ms([lambda: addcmul_dx(grad, x, *coef), lambda: inplace_dx(grad, x, *coef)], args.repeats)
        print(f'| {text} | ' + ' | '.join(f'{t:.2f} ms' for t in stats_ms + sums_ms + dx_ms) + ' |')


if __name__ == '__main__':
    main()
