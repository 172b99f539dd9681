"""``train.max_time``: the first epoch is timed, the epochs that fit are planned and recorded, the run stops on time.

A callback that sleeps at every batch makes an epoch of the tiny recipe take
a known time (0.48 s for its 8 batches, plus the little the model costs), so
a budget of 2 s plans a handful of epochs out of the recipe's 20. Resume and
replay follow the recorded plan: they reach the same bits as the run that
never stopped::

    recipe = load("recipes/tiny.toml", sets=["train.max_time=2", "train.epochs=20"])
"""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import pytest
import torch

import smartcash_fn as sf
from smartcash_fn.callbacks import LATER_EPOCHS, time_budget
from smartcash_fn.errors import RecipeError, StateError
from smartcash_fn.events import Callback
from smartcash_fn.report.console import clock_lines, end_lines, plain_text, plan_lines
from smartcash_fn.report.sinks import read_jsonl
from smartcash_fn.run.build import build
from smartcash_fn.run.recipe import load, seconds_of
from smartcash_fn.state import Clock

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"
PAUSE = 0.06  # seconds slept per batch: an epoch is mostly sleep, so its time hardly varies

pytestmark = pytest.mark.usefixtures("one_thread")


def _slow(state: sf.TrainState) -> sf.TrainState:
    time.sleep(PAUSE)
    return state


def _built(tmp_path: Path | None, *sets: str):
    recipe = load(TINY, sets=["train.epochs=20", "train.max_time=2", "loggers.tensorboard=false",
                              "loggers.plots=false", "loggers.console=false", *sets])
    built = build(recipe, tmp_path, quiet=True)
    return built, built.loop.add(Callback("batch_end", _slow, name="slow"))


def test_durations_read_as_seconds():
    assert seconds_of(90) == seconds_of("90s") == seconds_of("1m30s") == 90.0
    assert seconds_of("1h30m") == 5400.0 and seconds_of("10m") == 600.0 and seconds_of(2.5) == 2.5
    assert seconds_of("soon") is None and seconds_of("") is None and seconds_of(True) is None
    with pytest.raises(RecipeError, match="max_time"):
        load(TINY, sets=["train.max_time='ten minutes'"])
    with pytest.raises(RecipeError, match="max_time"):
        load(TINY, sets=["train.max_time=0"])
    with pytest.raises(StateError, match="seconds must be a number > 0"):
        time_budget(-1.0)


def test_the_run_plans_the_epochs_that_fit_and_stops_within_one_epoch_of_the_budget():
    built, loop = _built(None)
    ends: list[float] = []
    loop = loop.add(Callback("epoch_end", lambda s: (ends.append(time.perf_counter()), s)[1], priority=2000))
    start = time.perf_counter()
    state = sf.fit(built.template, loop)
    took = time.perf_counter() - start
    plan = state.callbacks["time_budget"]
    assert set(plan) == {"max_time", "cap", "epochs"}  # the decision, not the measurement
    assert plan["max_time"] == 2.0 and plan["cap"] == 20 and 1 <= plan["epochs"] < 20
    first = ends[0] - start  # as this test saw it, a little later than the callback
    assert abs(plan["epochs"] - max(1, int(2.0 // (LATER_EPOCHS * first)))) <= 1, (plan, first)
    assert len(state.history.epochs) == plan["epochs"]
    assert state.stop is not None and not state.stop.failed and "time budget" in state.stop.reason
    # within one epoch of the budget (the longest epoch seen, on a machine others share)
    longest = max(b - a for a, b in zip([start] + ends, ends))
    assert took <= 2.0 + longest + 0.2, (took, longest, plan)
    # the schedule spans the planned epochs: after the last planned update the lr is warmup_cosine's end, 0
    assert state.optimizer.lrs(state.opt_state)[""] == 0.0
    assert built.template.optimizer.lrs(state.opt_state)[""] > 0.0  # the 20-epoch schedule would go on


def test_a_budget_larger_than_the_epochs_changes_nothing_but_the_record():
    built, loop = _built(None, "train.max_time='1h'", "train.epochs=2")
    state = sf.fit(built.template, loop)
    assert state.callbacks["time_budget"]["epochs"] == 2 and state.stop is None
    plain, plain_loop = _built(None, "train.max_time='1h'", "train.epochs=2")
    plain_loop = attrs.evolve(plain_loop, callbacks=tuple(c for c in plain_loop.callbacks if c.name != "time_budget"))
    other = sf.fit(plain.template, plain_loop)
    assert "time_budget" not in other.callbacks
    assert sf.verify(state, other, ignore=("time_budget",)) is None  # same schedule, same bits


def test_resume_of_a_budgeted_run_reaches_the_same_bits(tmp_path):
    built, loop = _built(tmp_path)
    full = sf.fit(built.template, loop)
    plan = full.callbacks["time_budget"]
    assert plan["epochs"] >= 2, plan
    files = tmp_path / "checkpoints"
    # resumed from the first epoch's checkpoint (plan recorded there): no new timing, same plan, same bits
    again, again_loop = _built(tmp_path / "again")
    resumed = sf.resume(files / "epoch-0001.pt", again_loop, like=again.template)
    assert resumed.callbacks["time_budget"] == plan
    assert sf.verify(resumed, full) is None, sf.verify(resumed, full)
    # a replay (writers left out) from there reaches the final checkpoint too
    replayed = sf.replay(files / "epoch-0001.pt", again_loop, like=again.template)
    assert sf.verify(replayed, full) is None


def test_the_run_folder_says_where_the_time_went_and_what_the_budget_planned(tmp_path):
    built, loop = _built(tmp_path, "train.epochs=3", "train.max_time='1h'")
    state = sf.fit(built.template, loop)
    lines = read_jsonl(tmp_path / "metrics.jsonl")
    times = [r for r in lines if r["kind"] == "time"]
    assert [t["epoch"] for t in times] == [1, 2, 3]   # the file counts epochs from 1
    for t in times:  # the sleeping callback runs at batch_end: outside the step, so neither data nor step
        assert t["time/step"] > 0 and t["time/val"] > 0 and t["time/checkpoint"] > 0 and t["time/data"] >= 0
    # timings stay out of the state: the history has no time keys, the checkpoint verifies as it is
    assert not any(k.startswith("time/") for e in state.history.epochs for k in e)
    assert sf.verify(sf.load(tmp_path / "checkpoints" / "last.pt", like=built.template), state) is None
    summary = (tmp_path / "summary.md").read_text()
    assert "| time budget | max_time 1h00m: 3 of at most 3 epochs planned; used " in summary
    assert "## Time" in summary and "| data wait |" in summary and "| checkpoint |" in summary


def test_console_says_when_the_loader_is_the_bottleneck_and_what_the_budget_planned():
    state = sf.TrainState.create(lambda: torch.nn.Linear(2, 2), sf.sgd(0.1))
    assert clock_lines(state.replace(clock=Clock(data=1.0, step=2.0))) == []
    (line,) = clock_lines(state.replace(clock=Clock(data=3.0, step=1.0)))
    assert "data loader is the bottleneck: waited 3.0 s for batches, 1.0 s in steps" in plain_text(line[1])
    (line,) = plan_lines({"max_time": 600.0, "epochs": 5, "cap": 8}, first=118.0)
    assert plain_text(line[1]) == "time budget 10m00s: the first epoch took 1m58s, so 5 of at most 8 epochs"
    done = state.replace(callbacks={"time_budget": {"max_time": 600.0, "epochs": 5, "cap": 8}})
    assert any("time budget 10m00s, used 9m50s" in plain_text(segs) for _, segs, _ in end_lines(done, wall=590.0))


def test_every_rank_plans_with_the_slowest_ranks_first_epoch(monkeypatch):
    """Under torchrun each rank times its own first epoch; the plan (and so the schedule) must be one."""
    from smartcash_fn import distributed
    gathered = []

    def slower_peer(mine):  # a second rank whose first epoch (and its training) took ten times as long
        took, training, checking = mine
        gathered.append(took)
        return [mine, (10 * took, 10 * training, 10 * checking)]

    monkeypatch.setattr(distributed, "gather_objects", slower_peer)
    built, loop = _built(None)
    state = sf.fit(built.template, attrs.evolve(loop, epochs=1))
    plan = state.callbacks["time_budget"]
    assert len(gathered) == 1 and plan["epochs"] == max(1, int(2 // (LATER_EPOCHS * 10 * gathered[0])))
    assert plan["epochs"] < int(2 // gathered[0])  # planned alone, this rank would have planned more


def test_the_plan_leaves_room_for_later_epochs_running_slower(monkeypatch):
    """Later epochs run slower than the first (the default recipe's by up to 14 %): 2 s over a 0.32-s first
    epoch is 6.25 epochs, but 6 at 0.35 s would overrun; the plan is 5."""
    from smartcash_fn import distributed

    monkeypatch.setattr(distributed, "gather_objects", lambda mine: [(0.32, 0.2, 0.05)])  # the first epoch, as measured
    built, loop = _built(None)
    state = sf.fit(built.template, loop)  # a cap of 20 epochs
    assert int(2.0 // 0.32) == 6 and state.callbacks["time_budget"]["epochs"] == 5
    assert len(state.history.epochs) == 5


def test_the_plan_counts_the_dearer_steps_of_the_epochs_after_a_small_start():
    """With a Start's small first epochs timed, the later epochs' steps cost 1 / cost as much: fewer fit."""
    from smartcash_fn.callbacks import _epochs_that_fit
    from smartcash_fn.data import Start, epoch_cost

    x = torch.rand(16, 3)
    data = Start(sf.TensorData((x,), 8), sf.TensorData((x,), 8), share=0.5, cost=0.5)

    def cost(epoch, planned):
        return epoch_cost(data, epoch, planned)

    def need(planned):  # a first epoch of 40 s, 30 of them in steps: a later one is 10 s + 60 s of steps
        return LATER_EPOCHS * sum(10 + 30 * cost(e, planned) / 0.5 for e in range(planned))

    plan = _epochs_that_fit(600.0, 50, 40.0, 30.0, cost)
    assert need(plan) <= 600.0 < need(plan + 1) and plan == 9  # 5 small, 4 dear: 528 s; 5 and 5: 605 s
    assert int(600.0 // (LATER_EPOCHS * 40.0)) == 13  # planned as if every epoch were the first: 13
    assert _epochs_that_fit(600.0, 50, 40.0, 30.0, None) == 13
    assert _epochs_that_fit(600.0, 50, 40.0, 30.0, lambda e, n: 1.0) == 13  # equal costs: the same plan
    assert _epochs_that_fit(600.0, 7, 40.0, 30.0, cost) == 7 and _epochs_that_fit(10.0, 50, 40.0, 30.0, cost) == 1
    for seconds in (100.0, 333.0, 1000.0, 5000.0):  # bisection finds what a scan finds
        scan = max([n for n in range(1, 51) if need(n) <= seconds], default=1)
        assert _epochs_that_fit(seconds, 50, 40.0, 30.0, cost) == scan


def test_the_plan_counts_validation_only_in_the_epochs_that_validate():
    """A first epoch of 40 s, 10 of them validating: where only the first and the last 3 of the plan validate,
    a later epoch that does not costs 30 s, and more epochs fit than when every one validates."""
    from smartcash_fn.callbacks import _epochs_that_fit

    v = sf.Validation(sf.TensorData((torch.rand(4, 3),), 4), every=99, first=True, last=3)

    def need(planned, due):
        return LATER_EPOCHS * sum(30.0 + (10.0 if due(e, planned) else 0.0) for e in range(planned))

    plan = _epochs_that_fit(600.0, 50, 40.0, 25.0, None, 10.0, v.due)
    assert need(plan, v.due) <= 600.0 < need(plan + 1, v.due) and plan == 16  # 4 validations: 572 s
    every = sf.Validation(sf.TensorData((torch.rand(4, 3),), 4)).due
    assert _epochs_that_fit(600.0, 50, 40.0, 25.0, None, 10.0, every) == 13  # as the plan without `validated`
    assert _epochs_that_fit(600.0, 50, 40.0, 25.0, None) == 13
    for seconds in (50.0, 333.0, 1000.0, 5000.0):  # bisection finds what a scan finds
        scan = max([n for n in range(1, 51) if need(n, v.due) <= seconds], default=1)
        assert _epochs_that_fit(seconds, 50, 40.0, 25.0, None, 10.0, v.due) == scan


def test_a_budgeted_run_validates_the_first_and_its_last_planned_epochs(monkeypatch):
    """`last` counts from the end of the plan: the epochs validated are the first and the planned run's last two."""
    from smartcash_fn import distributed

    monkeypatch.setattr(distributed, "gather_objects", lambda mine: [(0.32, 0.2, 0.05)])
    built, loop = _built(None, "validation.every=99", "validation.first=true", "validation.last=2")
    state = sf.fit(built.template, loop)  # a cap of 20: 0.27 s an epoch, 0.05 s more for each of 3 validations
    planned = state.callbacks["time_budget"]["epochs"]
    assert planned == 6 and len(state.history.epochs) == 6
    assert [e["epoch"] for e in state.history.epochs if "val/loss" in e] == [0, 4, 5]  # 0-based


def test_timed_costs_time_the_small_and_the_full_steps_and_leave_even_data_alone():
    """A Start's first epochs cost what one step of each source takes here; other data costs 1 untimed."""
    from smartcash_fn.data import Start
    from smartcash_fn.run.build import timed_costs

    x = torch.rand(16, 3)
    data = Start(sf.TensorData((x,), 8), sf.TensorData((x * 0.5,), 8), share=0.5, cost=0.25)
    slept: list[float] = []

    def step(state, batch):  # a full batch's step sleeps 40 ms, a small one's 10 ms
        pause = 0.04 if float(batch[0].max()) > 0.5 else 0.01
        slept.append(pause)
        time.sleep(pause)
        return state

    state = sf.TrainState.create(lambda: torch.nn.Linear(3, 2), sf.sgd(0.1), seed=0)
    costs = timed_costs(data, step)(state)
    assert sorted(slept) == [0.01, 0.01, 0.04, 0.04]  # two rounds of each source, results discarded
    ratio = costs(0, 0)
    assert 0.15 < ratio < 0.3, ratio  # 10 / 40 ms, give or take the machine's sleeping
    assert [costs(e, 10) for e in range(10)] == [ratio] * 5 + [1.0] * 5
    slept.clear()
    even = timed_costs(sf.TensorData((x,), 8), step)(state)
    assert [even(e, 4) for e in range(4)] == [1.0] * 4 and slept == []  # nothing to time
