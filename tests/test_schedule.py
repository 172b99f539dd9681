"""Schedules: the curves of torch's lr schedulers in closed form, and their properties.

torch steps its schedulers recursively (each lr is computed from the previous
one: StepLR multiplies by gamma again and again, CosineAnnealingLR and
LinearLR scale the last value by a ratio), while these schedules evaluate a
closed form at the update count. Both are the same function of the count in
exact arithmetic; in floats they differ by the rounding the recursion
accumulates, a few ulps after hundreds of steps. So the comparisons below
use a relative tolerance of 1e-9, far below any lr difference that could
matter and far above accumulated rounding. OneCycleLR is closed form in
torch too, and there the match is exact.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smartcash_fn import schedule as S

REL = 1e-9


def torch_lrs(make_scheduler, base_lr: float, n: int) -> list[float]:
    """The lr torch uses for updates 0..n-1: read before each optimizer.step(), then step the scheduler."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = make_scheduler(opt)
        lrs = []
        for _ in range(n):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
    return lrs


def assert_close_curve(ours, theirs: list[float], abs_tol: float = 0.0) -> None:
    for k, expected in enumerate(theirs):
        got = ours(k)
        assert math.isclose(got, expected, rel_tol=REL, abs_tol=abs_tol), (k, got, expected)


# --------------------------------------------------------------------------
# against torch


def test_constant():
    sched = S.constant(0.05)
    assert [sched(k) for k in (0, 1, 10**6)] == [0.05] * 3


@pytest.mark.parametrize("step_size,gamma", [(30, 0.1), (7, 0.5), (1, 0.97)])
def test_step_matches_steplr(step_size, gamma):
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size, gamma), 0.1, 300)
    assert_close_curve(S.step(0.1, step_size, gamma), theirs)


@pytest.mark.parametrize("milestones", [[30, 80, 200], [50, 50, 120], [0, 10]])
def test_multistep_matches_multisteplr(milestones):
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones, 0.3), 0.1, 300)
    assert_close_curve(S.multistep(0.1, milestones, 0.3), theirs)


@pytest.mark.parametrize("min_lr", [0.0, 1e-4])
def test_cosine_matches_cosineannealinglr(min_lr):
    total = 250
    # torch's curve climbs back after T_max; ours holds min_lr, so compare up to T_max.
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, total, min_lr), 0.1, total + 1)
    # Near the bottom the value is a difference of nearly equal numbers (1 + cos near -1),
    # where both forms lose relative precision; an absolute floor of 1e-15 * lr covers it.
    assert_close_curve(S.cosine(0.1, total, min_lr), theirs, abs_tol=1e-16)
    sched = S.cosine(0.1, total, min_lr)
    assert sched(0) == 0.1
    assert sched(total) == sched(total + 1) == sched(10 * total) == min_lr


def _decay(shape, opt, lr, min_lr, span):
    """torch's scheduler for the part after the warmup: a cosine or a line from ``lr`` to ``min_lr``."""
    if shape == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=span, eta_min=min_lr)
    return torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=min_lr / lr, total_iters=span)


@pytest.mark.parametrize("shape,factory", [("cosine", S.warmup_cosine), ("linear", S.warmup_linear)])
@pytest.mark.parametrize("warmup,start_factor,min_lr", [(20, 0.1, 0.0), (50, 1 / 3, 1e-4), (1, 0.5, 0.0)])
def test_warmup_then_decay_matches_torchs_sequential_schedulers(shape, factory, warmup, start_factor, min_lr):
    total = 300
    lr = 0.02

    def make(opt):
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=start_factor, total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(opt, [warm, _decay(shape, opt, lr, min_lr, total - warmup)],
                                                     milestones=[warmup])

    theirs = torch_lrs(make, lr, total + 1)
    sched = factory(lr, warmup, total, min_lr=min_lr, start_factor=start_factor)
    assert_close_curve(sched, theirs, abs_tol=1e-16)
    assert sched(warmup) == lr
    assert sched(total) == sched(total + 5) == min_lr
    middle = (lr + min_lr) / 2                                  # half-way down: a line is there, a cosine too
    assert sched((warmup + total) // 2) == pytest.approx(middle, rel=1e-2)
    quarter = sched(warmup + (total - warmup) // 4)             # a quarter down: the cosine still near lr
    assert quarter > 0.8 * lr if shape == "cosine" else quarter == pytest.approx(lr - (lr - min_lr) / 4, rel=1e-2)
    with pytest.raises(ValueError, match="warmup_steps"):       # an ArgumentError
        factory(lr, total, total)


def test_warmup_cosine_default_starts_at_zero():
    sched = S.warmup_cosine(1e-3, warmup_steps=100, total_steps=1000)
    assert sched(0) == 0.0
    assert sched(50) == pytest.approx(5e-4, rel=1e-15)
    assert sched(100) == 1e-3
    assert sched(1000) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(anneal="linear"),
        dict(three_phase=True),
        dict(three_phase=True, anneal="linear", pct_start=0.25),
        dict(pct_start=0.1, div_factor=10.0, final_div_factor=100.0),
    ],
)
def test_one_cycle_matches_onecyclelr_exactly(kwargs):
    total = 300
    torch_kwargs = {("anneal_strategy" if k == "anneal" else k): v for k, v in kwargs.items()}
    theirs = torch_lrs(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.1, total_steps=total, cycle_momentum=False, **torch_kwargs
        ),
        0.1,
        total,
    )
    sched = S.one_cycle(0.1, total, **kwargs)
    # torch computes OneCycleLR in closed form as well: the same expression, the same bits.
    assert [sched(k) for k in range(total)] == theirs
    assert sched(total) == sched(total + 100) == sched(total - 1)  # held after the run


def test_one_cycle_zero_length_rise_does_not_divide_by_zero():
    sched = S.one_cycle(1.0, total_steps=10, pct_start=0.1)  # torch raises ZeroDivisionError here
    assert sched(0) == 1.0
    assert sched(9) == pytest.approx(1.0 / 25 / 1e4)


def test_scaled():
    shape = S.cosine(1.0, total_steps=100)
    head = S.scaled(shape, 1e-3)
    assert [head(k) for k in range(0, 120, 7)] == [shape(k) * 1e-3 for k in range(0, 120, 7)]


def test_schedules_are_comparable_records():
    assert S.cosine(0.1, 100) == S.cosine(0.1, 100)
    assert S.cosine(0.1, 100) != S.cosine(0.1, 101)
    assert hash(S.multistep(0.1, [80, 30])) == hash(S.multistep(0.1, (30, 80)))
    assert "Cosine(lr=0.1, total_steps=100" in repr(S.cosine(0.1, 100))


# --------------------------------------------------------------------------
# bad arguments


@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: S.constant(-1.0), "lr"),
        (lambda: S.constant(float("nan")), "lr"),
        (lambda: S.constant("0.1"), "lr"),
        (lambda: S.step(0.1, 0), "step_size"),
        (lambda: S.step(0.1, 2.5), "step_size"),
        (lambda: S.step(0.1, 10, gamma=-0.1), "gamma"),
        (lambda: S.multistep(0.1, [10, -1]), "milestones"),
        (lambda: S.multistep(0.1, 10), "milestones"),
        (lambda: S.cosine(0.1, 0), "total_steps"),
        (lambda: S.cosine(0.1, 100, min_lr=0.2), "min_lr"),
        (lambda: S.cosine(-0.1, 100), "lr"),
        (lambda: S.warmup_cosine(0.1, 100, 100), "warmup_steps"),
        (lambda: S.warmup_cosine(0.1, -1, 100), "warmup_steps"),
        (lambda: S.warmup_cosine(0.1, 10, 100, start_factor=1.5), "start_factor"),
        (lambda: S.one_cycle(0.1, 0), "total_steps"),
        (lambda: S.one_cycle(0.1, 100, pct_start=1.2), "pct_start"),
        (lambda: S.one_cycle(0.1, 100, anneal="exp"), "anneal"),
        (lambda: S.one_cycle(0.1, 100, div_factor=0.0), "div_factor"),
        (lambda: S.one_cycle(0.1, 100, final_div_factor=-1.0), "final_div_factor"),
        (lambda: S.one_cycle(0.1, 100, pct_start=0.6, three_phase=True), "pct_start"),
        (lambda: S.scaled(0.1, 2.0), "schedule"),
        (lambda: S.scaled(S.constant(0.1), -2.0), "factor"),
    ],
)
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_negative_count_is_rejected():
    with pytest.raises(ValueError, match="count"):
        S.cosine(0.1, 10)(-1)


# --------------------------------------------------------------------------
# properties

lrs = st.floats(min_value=1e-8, max_value=10.0, allow_nan=False)
fractions = st.floats(min_value=0.0, max_value=1.0)
counts = st.integers(min_value=0, max_value=5000)


@settings(max_examples=200, deadline=None)
@given(lr=lrs, frac=fractions, total=st.integers(1, 2000), count=counts)
def test_cosine_stays_between_min_lr_and_lr(lr, frac, total, count):
    min_lr = lr * frac
    value = S.cosine(lr, total, min_lr)(count)
    assert min_lr <= value <= lr


@settings(max_examples=100, deadline=None)
@given(
    lr=lrs,
    frac=fractions,
    start_factor=fractions,
    warmup=st.integers(0, 60),
    extra=st.integers(1, 200),
)
def test_warmup_cosine_rises_then_falls(lr, frac, start_factor, warmup, extra):
    total = warmup + extra
    sched = S.warmup_cosine(lr, warmup, total, min_lr=lr * frac, start_factor=start_factor)
    curve = [sched(k) for k in range(total + 3)]
    rise, fall = curve[: warmup + 1], curve[warmup:]
    assert all(a <= b for a, b in zip(rise, rise[1:]))
    assert all(a >= b for a, b in zip(fall, fall[1:]))
    assert curve[warmup] == lr
    assert all(0.0 <= v <= lr for v in curve)


@settings(max_examples=100, deadline=None)
@given(
    max_lr=lrs,
    total=st.integers(1, 400),
    pct_start=st.floats(0.0, 0.5),
    anneal=st.sampled_from(["cos", "linear"]),
    three_phase=st.booleans(),
    count=counts,
)
def test_one_cycle_stays_between_its_extremes(max_lr, total, pct_start, anneal, three_phase, count):
    sched = S.one_cycle(max_lr, total, pct_start=pct_start, anneal=anneal, three_phase=three_phase)
    low = max_lr / 25.0 / 1e4
    # Interpolating between max_lr and the tiny final value rounds relative to
    # max_lr (torch's formula, kept for its bits), hence the slack in units of max_lr.
    slack = 1e-15 * max_lr
    value = sched(count)
    assert low - slack <= value <= max_lr + slack
    assert sched(total - 1) == pytest.approx(low, abs=slack)


@settings(max_examples=100, deadline=None)
@given(lr=lrs, step_size=st.integers(1, 50), gamma=fractions, a=counts, b=counts)
def test_step_never_increases_with_gamma_at_most_one(lr, step_size, gamma, a, b):
    sched = S.step(lr, step_size, gamma)
    lo, hi = min(a, b), max(a, b)
    assert sched(hi) <= sched(lo) <= lr


@settings(max_examples=100, deadline=None)
@given(lr=lrs, milestones=st.lists(st.integers(0, 300), max_size=5), count=st.integers(0, 400))
def test_multistep_counts_milestones_reached(lr, milestones, count):
    reached = sum(1 for m in milestones if m <= count)
    assert S.multistep(lr, milestones, 0.5)(count) == lr * 0.5**reached
