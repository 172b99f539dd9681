"""Learning-rate schedules: pure functions from update count to learning rate.

A schedule is any ``Callable[[int], float]``. Its argument is the number of
optimizer updates already applied (0 for the first update), its result the
learning rate that update uses. Nothing is stepped or mutated, so a schedule
can be evaluated at any point of a run, which is what makes resuming and
replaying from a checkpoint trivial::

    sched = warmup_cosine(1e-3, warmup_steps=500, total_steps=20_000)
    sched(0), sched(500), sched(20_000)   # 0.0, 1e-3, 0.0

The factories below return small frozen attrs records with ``__call__``:
they print, compare and hash, and check their arguments when built
(``ArgumentError``, a ``ValueError``, naming the argument). Each one follows the curve of the
matching ``torch.optim.lr_scheduler`` class, but in closed form: torch's
recursive updates and these formulas agree to within float rounding.
Reduce-on-plateau is not a schedule (it depends on metrics); it is a
callback that scales the learning rate through the optimizer's ``lr_scale``.
"""

from __future__ import annotations

import math
import numbers
from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import Literal

import attrs

from .errors import ArgumentError

__all__ = [
    "Schedule",
    "Constant",
    "StepDecay",
    "MultiStep",
    "Cosine",
    "WarmupCosine",
    "WarmupLinear",
    "OneCycle",
    "Scaled",
    "constant",
    "step",
    "multistep",
    "cosine",
    "warmup_cosine",
    "warmup_linear",
    "one_cycle",
    "scaled",
]

Schedule = Callable[[int], float]
"""Update count (0-based) -> learning rate."""


# --------------------------------------------------------------------------
# argument checks (attrs converters and validators)


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number and not a bool: ``is_real(1e-3)`` is True, ``is_real(True)`` False."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_float(value: object) -> object:
    """Turn any real number into a float; leave anything else for the validator to reject."""
    return float(value) if is_real(value) else value


def _finite_at_least_zero(_instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not (isinstance(value, float) and math.isfinite(value) and value >= 0.0):
        raise ArgumentError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _finite_positive(_instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not (isinstance(value, float) and math.isfinite(value) and value > 0.0):
        raise ArgumentError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _fraction(_instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not (isinstance(value, float) and 0.0 <= value <= 1.0):
        raise ArgumentError(f"{attribute.name} must be a number in [0, 1], got {value!r}")


def _positive_int(_instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ArgumentError(f"{attribute.name} must be an int > 0, got {value!r}")


def _int_at_least_zero(_instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise ArgumentError(f"{attribute.name} must be an int >= 0, got {value!r}")


def _sorted_milestones(value: object) -> object:
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        items = tuple(value)
        if all(isinstance(m, int) and not isinstance(m, bool) for m in items):
            return tuple(sorted(items))
        return items
    return value


def _milestones_valid(_instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not (
        isinstance(value, tuple)
        and all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in value)
    ):
        raise ArgumentError(f"{attribute.name} must be a sequence of ints >= 0, got {value!r}")


def _check_count(count: int) -> None:
    if count < 0:
        raise ArgumentError(f"a schedule takes the count of updates already applied (>= 0), got {count!r}")


def _float_field(validator=_finite_at_least_zero, **kwargs):
    return attrs.field(converter=_as_float, validator=validator, **kwargs)


# --------------------------------------------------------------------------
# records


@attrs.frozen
class Constant:
    """The same learning rate for every update: ``Constant(0.1)(k) == 0.1``."""

    lr: float = _float_field()

    def __call__(self, count: int) -> float:
        _check_count(count)
        return self.lr


@attrs.frozen
class StepDecay:
    """``lr * gamma ** (count // step_size)``: decay by ``gamma`` every ``step_size`` updates (torch StepLR)."""

    lr: float = _float_field()
    step_size: int = attrs.field(validator=_positive_int)
    gamma: float = _float_field(default=0.1)

    def __call__(self, count: int) -> float:
        _check_count(count)
        return self.lr * self.gamma ** (count // self.step_size)


@attrs.frozen
class MultiStep:
    """``lr`` times ``gamma`` once for every milestone reached (torch MultiStepLR).

    A milestone ``m`` first applies to update ``m``; a milestone listed twice
    applies twice, as in torch.
    """

    lr: float = _float_field()
    milestones: tuple[int, ...] = attrs.field(converter=_sorted_milestones, validator=_milestones_valid)
    gamma: float = _float_field(default=0.1)

    def __call__(self, count: int) -> float:
        _check_count(count)
        return self.lr * self.gamma ** bisect_right(self.milestones, count)


def _cosine_between(high: float, low: float, t: int, span: int) -> float:
    """Half a cosine from ``high`` (t = 0) to ``low`` (t = span), held at ``low`` after.

    Same expression as torch's closed form for CosineAnnealingLR, except at
    the ends: ``t = 0`` gives ``high`` itself and ``t >= span`` gives ``low``
    (the formula may miss either by an ulp), and values in between are
    clamped into ``[low, high]`` for the same reason.
    """
    if t <= 0:
        return high
    if t >= span:
        return low
    value = low + (high - low) * (1 + math.cos(math.pi * t / span)) / 2
    return min(high, max(low, value))


@attrs.frozen
class Cosine:
    """Cosine annealing from ``lr`` to ``min_lr`` over ``total_steps`` updates, then ``min_lr``.

    The curve of torch's CosineAnnealingLR with ``T_max=total_steps`` up to
    ``total_steps``; torch's curve then climbs back up, this one stays at
    ``min_lr``. ``Cosine(lr, n)(0)`` is exactly ``lr``.
    """

    lr: float = _float_field()
    total_steps: int = attrs.field(validator=_positive_int)
    min_lr: float = _float_field(default=0.0)

    def __attrs_post_init__(self) -> None:
        if self.min_lr > self.lr:
            raise ArgumentError(f"min_lr must be <= lr, got min_lr={self.min_lr!r} > lr={self.lr!r}")

    def __call__(self, count: int) -> float:
        _check_count(count)
        return _cosine_between(self.lr, self.min_lr, count, self.total_steps)


@attrs.frozen
class WarmupCosine:
    """Linear warmup for ``warmup_steps`` updates, then cosine annealing until ``total_steps``.

    Warmup: ``lr * (start_factor + (1 - start_factor) * count / warmup_steps)``,
    the closed form of torch's LinearLR (``end_factor=1``). From update
    ``warmup_steps`` on, half a cosine from ``lr`` to ``min_lr`` over the
    remaining ``total_steps - warmup_steps`` updates, then ``min_lr``: the
    curve of ``SequentialLR([LinearLR, CosineAnnealingLR], milestones=[warmup_steps])``.
    With the default ``start_factor=0.0`` it is the common
    "cosine schedule with warmup" that starts from zero (torch's LinearLR
    itself refuses a zero start factor; this closed form does not need to).
    """

    lr: float = _float_field()
    warmup_steps: int = attrs.field(validator=_int_at_least_zero)
    total_steps: int = attrs.field(validator=_positive_int)
    min_lr: float = _float_field(default=0.0)
    start_factor: float = _float_field(default=0.0, validator=_fraction)

    def __attrs_post_init__(self) -> None:
        if self.warmup_steps >= self.total_steps:
            raise ArgumentError(
                f"warmup_steps must be < total_steps, got warmup_steps={self.warmup_steps!r}, "
                f"total_steps={self.total_steps!r}"
            )
        if self.min_lr > self.lr:
            raise ArgumentError(f"min_lr must be <= lr, got min_lr={self.min_lr!r} > lr={self.lr!r}")

    def __call__(self, count: int) -> float:
        _check_count(count)
        if count < self.warmup_steps:
            factor = self.start_factor + (1.0 - self.start_factor) * count / self.warmup_steps
            return self.lr * factor
        return self._decay(count - self.warmup_steps, self.total_steps - self.warmup_steps)

    def _decay(self, t: int, span: int) -> float:
        """The rate ``t`` updates after the warmup, of ``span``: half a cosine from ``lr`` to ``min_lr``."""
        return _cosine_between(self.lr, self.min_lr, t, span)


def _linear_between(high: float, low: float, t: int, span: int) -> float:
    """A straight line from ``high`` (t = 0) to ``low`` (t = span), held at ``low`` after; exact at both ends."""
    if t <= 0:
        return high
    if t >= span:
        return low
    return min(high, max(low, high + (low - high) * t / span))


@attrs.frozen
class WarmupLinear(WarmupCosine):
    """:class:`WarmupCosine`'s warmup, then a straight line from ``lr`` down to ``min_lr`` at ``total_steps``.

    The curve of ``SequentialLR([LinearLR, LinearLR(1, min_lr / lr)], milestones=[warmup_steps])``.
    A short run spends more of its updates at a useful rate than under the
    cosine, which lingers near ``lr`` and then near ``min_lr``.
    """

    def _decay(self, t: int, span: int) -> float:
        return _linear_between(self.lr, self.min_lr, t, span)


def _anneal(anneal: str, start: float, end: float, pct: float) -> float:
    if anneal == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


@attrs.frozen
class OneCycle:
    """The 1cycle learning-rate curve of torch's OneCycleLR (momentum cycling left out).

    Starts at ``max_lr / div_factor``, rises to ``max_lr`` over the first
    ``pct_start`` of ``total_steps``, then falls to
    ``max_lr / div_factor / final_div_factor`` at update ``total_steps - 1``
    and stays there (torch raises past ``total_steps``). With ``three_phase``
    it first falls back to the start value and only then to the minimum.
    Where torch would divide by zero (a first phase of length zero,
    ``pct_start * total_steps == 1``) the phase counts as finished.
    """

    max_lr: float = _float_field()
    total_steps: int = attrs.field(validator=_positive_int)
    pct_start: float = _float_field(default=0.3, validator=_fraction)
    div_factor: float = _float_field(default=25.0, validator=_finite_positive)
    final_div_factor: float = _float_field(default=1e4, validator=_finite_positive)
    anneal: Literal["cos", "linear"] = attrs.field(default="cos")
    three_phase: bool = attrs.field(default=False)

    @anneal.validator
    def _check_anneal(self, attribute: attrs.Attribute, value: object) -> None:
        if value not in ("cos", "linear"):
            raise ArgumentError(f"anneal must be 'cos' or 'linear', got {value!r}")

    @three_phase.validator
    def _check_three_phase(self, attribute: attrs.Attribute, value: object) -> None:
        if not isinstance(value, bool):
            raise ArgumentError(f"three_phase must be a bool, got {value!r}")
        if value and self.pct_start > 0.5:
            raise ArgumentError(
                f"pct_start must be <= 0.5 with three_phase=True (the rise and the fall "
                f"back each take pct_start of the run), got {self.pct_start!r}"
            )

    def _phases(self) -> tuple[tuple[float, float, float], ...]:
        """(end_step, start_lr, end_lr) per phase, the step arithmetic of torch."""
        initial = self.max_lr / self.div_factor
        minimum = initial / self.final_div_factor
        rise_end = float(self.pct_start * self.total_steps) - 1
        last = self.total_steps - 1
        if self.three_phase:
            fall_end = float(2 * self.pct_start * self.total_steps) - 2
            return (
                (rise_end, initial, self.max_lr),
                (fall_end, self.max_lr, initial),
                (last, initial, minimum),
            )
        return ((rise_end, initial, self.max_lr), (last, self.max_lr, minimum))

    def __call__(self, count: int) -> float:
        _check_count(count)
        count = min(count, self.total_steps - 1)
        phases = self._phases()
        start_step = 0.0
        for i, (end_step, start_lr, end_lr) in enumerate(phases):
            if count <= end_step or i == len(phases) - 1:
                span = end_step - start_step
                pct = (count - start_step) / span if span != 0 else 1.0
                return _anneal(self.anneal, start_lr, end_lr, pct)
            start_step = end_step
        raise AssertionError("unreachable: the last phase always matches")


@attrs.frozen
class Scaled:
    """Another schedule times a constant ``factor``: ``Scaled(cosine(1.0, 100), 1e-3)``."""

    schedule: Schedule = attrs.field()
    factor: float = _float_field()

    @schedule.validator
    def _check_schedule(self, attribute: attrs.Attribute, value: object) -> None:
        if not callable(value):
            raise ArgumentError(f"schedule must be callable (count -> lr), got {value!r}")

    def __call__(self, count: int) -> float:
        return self.schedule(count) * self.factor


# --------------------------------------------------------------------------
# factories


def constant(lr: float) -> Constant:
    """The same learning rate for every update.

        sched = constant(1e-3)
        sched(0) == sched(10_000) == 1e-3
    """
    return Constant(lr)


def step(lr: float, step_size: int, gamma: float = 0.1) -> StepDecay:
    """Multiply the learning rate by ``gamma`` every ``step_size`` updates (torch StepLR).

        sched = step(0.1, step_size=30)
        sched(29), sched(30)   # 0.1, 0.01 (up to rounding)
    """
    return StepDecay(lr, step_size, gamma)


def multistep(lr: float, milestones: Iterable[int], gamma: float = 0.1) -> MultiStep:
    """Multiply the learning rate by ``gamma`` at each milestone (torch MultiStepLR).

        sched = multistep(0.1, milestones=[30, 80])
        sched(29), sched(30), sched(80)   # 0.1, 0.01, 0.001 (up to rounding)
    """
    return MultiStep(lr, milestones, gamma)


def cosine(lr: float, total_steps: int, min_lr: float = 0.0) -> Cosine:
    """Cosine annealing from ``lr`` to ``min_lr`` over ``total_steps`` updates, then ``min_lr``.

        sched = cosine(1e-3, total_steps=1000)
        sched(0), sched(500), sched(1000)   # 1e-3, 5e-4, 0.0
    """
    return Cosine(lr, total_steps, min_lr)


def warmup_cosine(
    lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
    start_factor: float = 0.0,
) -> WarmupCosine:
    """Linear warmup from ``lr * start_factor`` to ``lr``, then cosine down to ``min_lr``.

        sched = warmup_cosine(1e-3, warmup_steps=100, total_steps=1000)
        sched(0), sched(50), sched(100), sched(1000)   # 0.0, 5e-4, 1e-3, 0.0
    """
    return WarmupCosine(lr, warmup_steps, total_steps, min_lr, start_factor)


def warmup_linear(
    lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
    start_factor: float = 0.0,
) -> WarmupLinear:
    """Linear warmup from ``lr * start_factor`` to ``lr``, then a straight line down to ``min_lr``.

        sched = warmup_linear(1e-3, warmup_steps=100, total_steps=1100)
        sched(0), sched(100), sched(600), sched(1100)   # 0.0, 1e-3, 5e-4, 0.0
    """
    return WarmupLinear(lr, warmup_steps, total_steps, min_lr, start_factor)


def one_cycle(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal: Literal["cos", "linear"] = "cos",
    three_phase: bool = False,
) -> OneCycle:
    """The 1cycle policy's learning rate (torch OneCycleLR without momentum cycling).

        sched = one_cycle(0.1, total_steps=1000)
        sched(0), sched(299), sched(999)   # 0.004, 0.1, 4e-7
    """
    return OneCycle(max_lr, total_steps, pct_start, div_factor, final_div_factor, anneal, three_phase)


def scaled(schedule: Schedule, factor: float) -> Scaled:
    """A schedule multiplied by a constant, e.g. one shape reused for several param groups.

        shape = cosine(1.0, total_steps=1000)
        head, backbone = scaled(shape, 1e-3), scaled(shape, 1e-5)
    """
    return Scaled(schedule, factor)
