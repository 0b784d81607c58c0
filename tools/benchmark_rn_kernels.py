"""Why RN's autograd Function uses two undocumented torch ops: their time against the public ops they replace.

    python tools/benchmark_rn_kernels.py [--shapes 4x256x4096 4x1024x1024] [--repeats 20] [--threads 2]

RN's forward needs the per-channel mean and variance of each domain part ``(n, C, L)``, its backward the two
per-channel sums ``sum(dy * x)`` and ``sum(dy)``. Public ops: ``torch.var_mean(x, dim=(0, 2))`` and
``((dy * x).sum((0, 2)), dy.sum((0, 2)))``. What RN uses: ``torch.batch_norm_update_stats`` (BN's own one-pass
statistics kernel) and ``torch.ops.aten.native_batch_norm_backward`` with identity statistics, whose weight and bias
gradients are exactly those two sums, in one fused pass and without the ``dy * x`` temporary. The shapes are one
domain part (4 of 8 images) of the two RN benchmark shapes of docs/benchmarks.md. Prints a Markdown table.
"""
import argparse
import time
from typing import Callable, List

import torch


def median_ms(step: Callable[[], object], repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def bn_stats(x: torch.Tensor):
    return torch.batch_norm_update_stats(x, None, None, 0.0)


def public_stats(x: torch.Tensor):
    return torch.var_mean(x, dim=(0, 2), correction=0)


def bn_backward_sums(grad: torch.Tensor, x: torch.Tensor):
    ones = x.new_ones(x.shape[1])
    return torch.ops.aten.native_batch_norm_backward(grad, x, ones, torch.zeros_like(ones), ones, None, None, False,
                                                     0.0, [False, True, True])[1:]


def public_sums(grad: torch.Tensor, x: torch.Tensor):
    return (grad * x).sum((0, 2)), grad.sum((0, 2))


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shapes', nargs='+', default=['4x256x4096', '4x1024x1024'], help='n x C x L')
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print('| part (n x C x L) | var_mean | batch_norm_update_stats | ratio | (dy*x).sum, dy.sum '
          '| native_batch_norm_backward | ratio |')
    print('|---|---|---|---|---|---|---|')
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split('x'))
        x, grad = torch.randn(shape), torch.randn(shape)
        # same numbers: the fast ops are exact replacements
        torch.testing.assert_close(bn_stats(x)[0], public_stats(x)[1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn_backward_sums(grad, x)[0], public_sums(grad, x)[0], rtol=1e-3, atol=1e-2)
        pub_s, fast_s = median_ms(lambda: public_stats(x), args.repeats), median_ms(lambda: bn_stats(x), args.repeats)
        pub_b = median_ms(lambda: public_sums(grad, x), args.repeats)
        fast_b = median_ms(lambda: bn_backward_sums(grad, x), args.repeats)
        print(f'| {text} | {pub_s:.2f} ms | {fast_s:.2f} ms | {pub_s / fast_s:.2f}x | {pub_b:.2f} ms | '
              f'{fast_b:.2f} ms | {pub_b / fast_b:.2f}x |')


if __name__ == '__main__':
    main()
