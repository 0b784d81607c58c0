"""The timing core of the benchmark scripts: wall or CPU seconds of one call, CUDA work included."""
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch

__all__ = ['synchronize', 'timed', 'paired_seconds', 'round_robin']

CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def synchronize(device='cpu') -> None:
    """Waits for queued CUDA work when ``device`` is a GPU (timings then include it)."""
    if str(device).startswith('cuda') and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device='cpu', clock: str = 'wall') -> float:
    """Seconds ``fn()`` takes on ``clock`` (``'wall'`` or ``'cpu'``), synchronised on ``device``."""
    now = CLOCKS[clock]
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return now() - start


def paired_seconds(ref_step: Callable[[], None],
                   step: Callable[[], None],
                   repeats: int,
                   warmup: int,
                   device='cpu') -> Tuple[float, float, float]:
    """Interleaved timing of ``ref_step`` and ``step``: medians of each and of the per-pair ratio.

    The pairs alternate which side runs first, so a slowdown of the machine in the middle of a pair
    is shared.
    """
    for _ in range(warmup):
        ref_step()
        step()
    ref_times, times, ratios = [], [], []
    for i in range(repeats):
        order = (('ref', ref_step), ('case', step))
        pair = {side: timed(fn, device) for side, fn in (order if i % 2 == 0 else order[::-1])}
        ref_times.append(pair['ref'])
        times.append(pair['case'])
        ratios.append(pair['case'] / pair['ref'])
    return statistics.median(ref_times), statistics.median(times), statistics.median(ratios)


def round_robin(fns: Dict[str, Callable[[], object]],
                repeats: Union[int, Dict[str, int]],
                device='cpu',
                clocks: Sequence[str] = ('wall', ),
                warmup: int = 1) -> Dict[str, List[tuple]]:
    """Times the functions in turns, so that load from other processes on a shared machine hits all
    of them.

    Args:
        fns: name -> function. repeats: Rounds, for all functions or per name (a function leaves the
        turns after its count). device: Synchronised around every call when a GPU. clocks:
        ``'wall'`` and / or ``'cpu'`` (this process's CPU time, all threads). warmup: Untimed calls
        of each function first.

    Returns:
        dict: name -> one tuple of seconds (one per clock) per timed call.
    """
    counts = repeats if isinstance(repeats, dict) else {name: repeats for name in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for r in range(max(counts.values(), default=0)):
        for name, fn in fns.items():
            if r < counts[name]:
                synchronize(device)
                starts = [CLOCKS[c]() for c in clocks]
                fn()
                synchronize(device)
                times[name].append(tuple(CLOCKS[c]() - s for c, s in zip(clocks, starts)))
    return times
