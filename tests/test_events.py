"""Events: callback order by priority, queued events, and the errors a user meets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smartcash_fn.data import Batches
from smartcash_fn.errors import StateError, UserError
from smartcash_fn.events import EVENTS, Callback, by_event, emit, fire, on
from smartcash_fn.loop import Loop, Validation, fit
from smartcash_fn.optim import sgd
from smartcash_fn.state import TrainState
from smartcash_fn.step import classification_loss, make_step


def tiny_state() -> TrainState:
    return TrainState.create(lambda: nn.Linear(3, 2), sgd(0.1), seed=0)


def tiny_loop(*callbacks, epochs: int = 1, validation: Validation | None = None) -> Loop:
    """Two batches an epoch."""
    g = torch.Generator().manual_seed(0)
    data = Batches([(torch.randn(4, 3, generator=g), torch.tensor([0, 1, 0, 1])) for _ in range(2)])
    return Loop(step=make_step(classification_loss), data=data, epochs=epochs, validation=validation,
                callbacks=callbacks)


def recorder(log: list, tag: str):
    def fn(state: TrainState) -> TrainState:
        log.append(tag)
        return state

    fn.__name__ = f"record_{tag}"
    return fn


def test_callbacks_run_by_priority_ties_in_registration_order():
    log: list[str] = []
    prios = {"a": 5, "b": -1, "c": 5, "d": 0, "e": -1, "f": 5}
    cbs = [Callback("epoch_end", recorder(log, t), priority=p) for t, p in prios.items()]
    table = by_event(cbs)
    assert [c.name for c in table["epoch_end"]] == [f"record_{t}" for t in "bedacf"]
    assert table["batch_end"] == ()

    fit(tiny_state(), tiny_loop(*cbs, epochs=2))
    assert log == list("bedacf") * 2


def test_registration_order_holds_across_loop_add():
    log: list[str] = []
    loop = tiny_loop(Callback("training_end", recorder(log, "first"), priority=1))
    loop = loop.add(Callback("training_end", recorder(log, "second"), priority=1),
                    [Callback("training_end", recorder(log, "early"), priority=0)])
    fit(tiny_state(), loop)
    assert log == ["early", "first", "second"]


def test_every_event_fires_in_its_place():
    log: list[str] = []
    cbs = [Callback(e, recorder(log, e)) for e in EVENTS if e != "checkpoint_saved"]
    g = torch.Generator().manual_seed(1)
    val = Validation(Batches([(torch.randn(4, 3, generator=g), torch.tensor([0, 1, 1, 0]))]))
    fit(tiny_state(), tiny_loop(*cbs, epochs=2, validation=val))
    epoch = ["epoch_start", "batch_end", "batch_end", "validation_end", "epoch_end"]
    assert log == ["training_start", *epoch, *epoch, "training_end"]


def test_emit_fires_the_queued_event_right_after_the_callback():
    log: list[str] = []

    @on("epoch_end", priority=0)
    def saver(state):
        log.append("saver")
        return emit(emit(state, "checkpoint_saved"), "validation_end")

    @on("checkpoint_saved")
    def announce(state):
        log.append("saved")
        return emit(state, "training_start")  # a queued event may queue another

    cbs = [
        saver,
        announce,
        Callback("checkpoint_saved", recorder(log, "saved-too"), priority=1),
        Callback("validation_end", recorder(log, "queued-2")),
        Callback("training_start", recorder(log, "nested")),
        Callback("epoch_end", recorder(log, "after"), priority=1),
    ]
    out = fire(tiny_state(), "epoch_end", by_event(cbs))
    # each queued event runs to completion, with what it queues, before the next one
    assert log == ["saver", "saved", "nested", "saved-too", "queued-2", "after"]
    assert out.pending == ()


def test_emit_in_a_fit_reaches_the_listener_before_the_next_callback():
    log: list[str] = []
    cbs = [
        Callback("batch_end", lambda s: (log.append("emit"), emit(s, "checkpoint_saved"))[1], priority=0),
        Callback("checkpoint_saved", lambda s: (log.append(f"saved@{s.progress.step}"), s)[1]),
        Callback("batch_end", recorder(log, "next"), priority=10),
    ]
    fit(tiny_state(), tiny_loop(*cbs))
    assert log == ["emit", "saved@1", "next", "emit", "saved@2", "next"]


@pytest.mark.parametrize("make", [
    lambda: Callback("epoch_ned", lambda s: s),
    lambda: on("batchend")(lambda s: s),
    lambda: emit(tiny_state(), "trainig_end"),
])
def test_an_unknown_event_name_suggests_the_near_one(make):
    with pytest.raises(StateError) as err:
        make()
    msg = str(err.value)
    assert "unknown event" in msg and "did you mean" in msg
    assert any(f"'{e}'" in msg for e in ("epoch_end", "batch_end", "training_end"))


def test_an_unknown_event_far_from_any_lists_the_events():
    with pytest.raises(StateError) as err:
        Callback("zzz", lambda s: s)
    assert "did you mean" not in str(err.value)
    assert all(e in str(err.value) for e in EVENTS)


def test_a_callback_returning_no_state_names_the_callback():
    def forgetful(state):
        state.replace(lr_scale=0.5)  # forgot the return

    loop = tiny_loop(Callback("batch_end", forgetful, name="lr_tweak"))
    with pytest.raises(StateError) as err:
        fit(tiny_state(), loop)
    assert isinstance(err.value, UserError)
    msg = str(err.value)
    assert "'lr_tweak'" in msg and "'batch_end'" in msg and "NoneType" in msg and "must return the state" in msg


def test_a_callback_name_defaults_to_the_function_name():
    def my_logger(state):
        return state

    assert Callback("epoch_end", my_logger).name == "my_logger"
    assert on("epoch_end")(my_logger).name == "my_logger"
    with pytest.raises(StateError, match="callable"):
        Callback("epoch_end", "not a function")


def test_a_loop_rejects_something_that_is_not_a_callback():
    with pytest.raises(StateError, match="not a callback"):
        tiny_loop(lambda s: s)


# --------------------------------------------------------------------------- writers observe


def test_fire_rejects_a_writer_that_changes_the_state():
    from smartcash_fn.events import writer

    def sneaky(state):
        return state.replace(lr_scale=0.5)

    table = by_event([writer("epoch_end", sneaky, name="sneaky_log")])
    with pytest.raises(StateError, match=r"'sneaky_log' on 'epoch_end' writes .* changed the state's lr_scale"):
        fire(tiny_state(), "epoch_end", table)
    # the same function as a plain callback is a transition, and allowed
    assert fire(tiny_state(), "epoch_end", by_event([Callback("epoch_end", sneaky)])).lr_scale == 0.5


def test_a_writer_may_queue_events_and_its_notice_is_seen_only_while_the_event_fires():
    from smartcash_fn.events import writer

    seen = []
    table = by_event([
        writer("epoch_end", lambda s: emit(s, "checkpoint_saved", by="ck", info={"last": "a.pt"}), name="ck"),
        Callback("checkpoint_saved", lambda s: (seen.append(dict(s.callbacks)), s)[1]),
    ])
    state = tiny_state()
    out = fire(state, "epoch_end", table)
    assert seen == [{"ck": {"last": "a.pt"}}]
    assert out.callbacks is state.callbacks and out.pending == ()


def test_a_writer_runs_on_rank_zero_only(monkeypatch):
    from smartcash_fn import events

    calls = []
    cb = events.writer("epoch_end", lambda s: (calls.append(1), s)[1], name="w")
    assert cb.writes and cb.name == "w"
    fire(tiny_state(), "epoch_end", by_event([cb]))
    monkeypatch.setattr(events, "is_main_process", lambda: False)
    fire(tiny_state(), "epoch_end", by_event([cb]))
    assert calls == [1]
