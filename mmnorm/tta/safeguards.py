"""Safeguards of continual test-time adaptation: reliable-sample selection and a collapse reset
rule.

* Reliable-sample selection (EATA: Niu et al., "Efficient Test-Time Model Adaptation without
  Forgetting", ICML 2022, arXiv 2204.02610): only elements (pixels, RoIs, samples) whose prediction
  entropy is below ``E_0 = reliable * ln K`` contribute to the loss; confident predictions carry the
  signal, uncertain ones the noise that drives collapse. EATA uses ``0.4 ln K``.
* Reset rule (RDumb: Press et al., "RDumb: A simple approach that questions our progress in
  continual test-time adaptation", NeurIPS 2023, arXiv 2306.05401, resets periodically): the adapter
  returns to the exact source state when the collapse signal fires. The signal is the entropy of the
  predicted-class marginal (the mean softmax over the valid pixels of a batch), which falls towards
  0 when the model collapses onto few classes: with ``m_0`` its value on the first batch after a
  (re)start and ``m_t`` its exponential moving average (``momentum``), the rule fires when ``m_t <
  threshold * m_0``. The mean prediction entropy can be the signal instead
  (``reset_signal='entropy'``): it falls as the model grows over-confident, which precedes the
  collapse (and forgetting) even while the marginal still covers the classes. Optionally also every
  ``every`` steps (RDumb).

Distributed, the monitor is fed sums reduced over the ranks, so every rank takes the same decision.
"""
import math
from typing import Optional

from ..validation import ArgumentError, check_positive_int

__all__ = ['entropy_margin', 'check_fraction', 'CollapseMonitor', 'RESET_SIGNALS']

RESET_SIGNALS = ('marginal', 'entropy')


def check_fraction(value,
                   name: str,
                   *,
                   closed_right: bool = False,
                   optional: bool = True) -> Optional[float]:
    """``value`` as a float in (0, 1) (or (0, 1] with ``closed_right``), or None when
    ``optional``; ValueError naming ``name`` and the value otherwise."""
    if value is None and optional:
        return None
    ok = not isinstance(value, bool) and isinstance(
        value, (int, float)) and 0 < value and (value <= 1 if closed_right else value < 1)
    if not ok:
        interval = '(0, 1]' if closed_right else '(0, 1)'
        raise ArgumentError(
            f'{name} must be a number in {interval}{" or None" if optional else ""}, got {value!r}')
    return float(value)


def entropy_margin(num_classes: int, reliable: Optional[float]) -> Optional[float]:
    """EATA's entropy margin ``E_0 = reliable * ln K`` in nats (None: no selection)."""
    if reliable is None:
        return None
    return reliable * math.log(num_classes)


class CollapseMonitor:
    """The reset rule: feeds on one signal value per step (marginal or mean entropy), says when to
    return to the source state.

    Args:
        threshold (float, optional): Fire when the running signal drops below ``threshold`` times
            its first value since the last (re)start; in (0, 1). None: no collapse signal.
        momentum (float): EMA momentum of the running signal, in (0, 1]. Defaults to 0.1.
        every (int, optional): Also fire every ``every`` steps (periodic reset). None: never.
    """

    def __init__(self,
                 threshold: Optional[float] = None,
                 momentum: float = 0.1,
                 every: Optional[int] = None):
        self.threshold = check_fraction(threshold, 'reset_threshold')
        self.momentum = check_fraction(
            momentum, 'reset_momentum', closed_right=True, optional=False)
        self.every = check_positive_int(every, 'reset_every', optional=True)
        self.restart()

    @property
    def enabled(self) -> bool:
        return self.threshold is not None or self.every is not None

    def restart(self) -> None:
        """Forgets the running statistic (after a reset)."""
        self.reference: Optional[float] = None
        self.running: Optional[float] = None
        self.steps = 0

    def update(self, value: float) -> Optional[str]:
        """Feeds one step's signal (nats); returns the reason to reset, or None."""
        self.steps += 1
        if self.reference is None:
            self.reference = self.running = value
        else:
            self.running += self.momentum * (value - self.running)
        if self.threshold is not None and self.running < self.threshold * self.reference:
            return (f'running signal {self.running:.3f} < {self.threshold} x {self.reference:.3f} '
                    '(first value since the last reset)')
        if self.every is not None and self.steps >= self.every:
            return f'periodic reset after {self.steps} steps'
        return None
