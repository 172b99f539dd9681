"""Events and callbacks: state transformers bound to the moments of a run.

A callback is a function ``state -> state`` (it may do I/O) registered on one
of :data:`EVENTS` with a priority; lower priorities run first and ties keep
registration order. A callback keeps its own state in
``state.callbacks[name]``. It can queue another event for the loop with
:func:`emit` (the checkpoint writer emits ``checkpoint_saved``).

A *writer* (``writes=True``: files, logs, the console) observes: it returns
the state it was given, and may only queue events; :func:`fire` refuses one
that returns anything else. What a writer must remember lives outside the
state (in the callback, on disk), so a run with writers and a replay without
them reach the same bits. :func:`writer` makes one that runs on rank 0 only::

    @on("epoch_end", priority=10)
    def announce(state):
        print(state.history.last())
        return state
    fit(state, loop.add(announce, writer("epoch_end", lambda s: (print(s.progress), s)[1])))
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import attrs

from ._files import is_main_process
from .errors import OutputError, StateError
from .state import TrainState

EVENTS: tuple[str, ...] = (
    "training_start",
    "epoch_start",
    "batch_end",
    "validation_end",
    "epoch_end",
    "checkpoint_saved",
    "training_end",
)

CallbackFn = Callable[[TrainState], TrainState]


def _check_event(_: object, __: object, value: str) -> None:
    if value not in EVENTS:
        import difflib

        near = difflib.get_close_matches(value, EVENTS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; events are {', '.join(EVENTS)}"
        raise StateError(f"unknown event {value!r}{hint}")


@attrs.frozen
class Callback:
    """``fn`` bound to ``event``; ``writes`` marks a callback that does I/O (replay leaves those out).

    ``Callback("epoch_end", print_metrics, priority=10, name="printer")``
    """

    event: str = attrs.field(validator=_check_event)
    fn: CallbackFn
    priority: int = 0
    name: str = ""
    writes: bool = False

    def __attrs_post_init__(self) -> None:
        if not callable(self.fn):
            raise StateError(f"callback {self.name or self.event!r}: fn must be callable, got {type(self.fn).__name__}")
        if not self.name:
            object.__setattr__(self, "name", getattr(self.fn, "__name__", "callback"))


def on(event: str, priority: int = 0, name: str = "", writes: bool = False) -> Callable[[CallbackFn], Callback]:
    """Decorator form of :class:`Callback`: ``@on("epoch_end")`` above a ``state -> state`` function."""

    def wrap(fn: CallbackFn) -> Callback:
        return Callback(event, fn, priority=priority, name=name or fn.__name__, writes=writes)

    return wrap


def writer(event: str, fn: CallbackFn, priority: int = 0, name: str = "") -> Callback:
    """A callback that writes (``writes=True``) and runs on rank 0 only; on other ranks the state passes by.

    The one place the writers ask :func:`~smartcash_fn._files.is_main_process`
    (asked at each call, so a process group set up after building counts)::

        writer("training_end", lambda s: (write_text_atomic("done.txt", "ok"), s)[1], name="done")
    """
    if not callable(fn):
        raise StateError(f"writer {name or event!r}: fn must be callable, got {type(fn).__name__}")

    def on_rank_zero(state: TrainState) -> TrainState:
        return fn(state) if is_main_process() else state

    return Callback(event, on_rank_zero, priority=priority, name=name or getattr(fn, "__name__", "writer"),
                    writes=True)


def flatten(callbacks: Iterable[Callback | Iterable[Callback]]) -> tuple[Callback, ...]:
    """Callbacks and groups of callbacks (as built-in factories return) as one flat tuple."""
    out: list[Callback] = []
    for c in callbacks:
        if isinstance(c, Callback):
            out.append(c)
        elif isinstance(c, Iterable) and not isinstance(c, (str, bytes)):
            out.extend(flatten(c))
        else:
            raise StateError(f"not a callback: {c!r}; wrap a function with Callback(event, fn) or @on(event)")
    return tuple(out)


def by_event(callbacks: Iterable[Callback]) -> Mapping[str, tuple[Callback, ...]]:
    """Callbacks grouped by event, each group sorted by priority (stable: ties keep their order)."""
    flat = flatten(callbacks)
    return {e: tuple(sorted((c for c in flat if c.event == e), key=lambda c: c.priority)) for e in EVENTS}


@attrs.frozen
class Notice:
    """An event queued with a note for its listeners: while ``event`` fires, ``state.callbacks[by]`` is ``info``.

    Only then: the note is gone when the event is done, so it never reaches a
    checkpoint. The checkpoint writer tells ``checkpoint_saved`` which file it
    wrote this way: ``emit(state, "checkpoint_saved", by="checkpoint", info={"last": "runs/a/last.pt"})``.
    """

    event: str = attrs.field(validator=_check_event)
    by: str
    info: Mapping[str, Any]


def emit(state: TrainState, event: str, *, by: str = "", info: Mapping[str, Any] | None = None) -> TrainState:
    """Queue ``event``; the loop fires it right after the callback that queued it.

    With ``info`` the event's listeners find it in ``state.callbacks[by]``
    while it fires, and only then (a :class:`Notice`)::

        state = emit(state, "checkpoint_saved", by="checkpoint", info={"last": "checkpoints/last.pt", "is_best": False})
    """
    _check_event(None, None, event)
    if info is None:
        return state.replace(pending=state.pending + (event,))
    if not by:
        raise StateError(f"emit {event!r}: info needs by=<the callback's name> (where listeners find it)")
    return state.replace(pending=state.pending + (Notice(event, by, dict(info)),))


_OBSERVED = tuple(f.name for f in attrs.fields(TrainState) if f.name != "pending")


def changed_field(before: TrainState, after: TrainState) -> str | None:
    """The first field a writer changed between the state it got and the one it returned, or None.

    A writer may only queue events (``pending`` grows at its end); every other
    field must be the very object it was given::

        changed_field(state, emit(state, "checkpoint_saved"))   # None
    """
    if after is before:
        return None
    for name in _OBSERVED:
        if getattr(after, name) is not getattr(before, name):
            return name
    if after.pending[:len(before.pending)] != before.pending:
        return "pending"
    return None


def _fire_queued(state: TrainState, queued: str | Notice, table: Mapping[str, tuple[Callback, ...]]) -> TrainState:
    if not isinstance(queued, Notice):
        return fire(state, queued, table)
    before = state.callbacks
    out = fire(state.replace(callbacks={**before, queued.by: queued.info}), queued.event, table)
    after = out.callbacks
    if after.keys() - {queued.by} == before.keys() - {queued.by} and all(
            after[k] is v for k, v in before.items() if k != queued.by):
        callbacks = before  # no listener changed a callback state: keep the very mapping
    else:
        callbacks = {k: v for k, v in after.items() if k != queued.by}
        if queued.by in before:
            callbacks[queued.by] = before[queued.by]
    return out.replace(callbacks=callbacks)


def fire(state: TrainState, event: str, table: Mapping[str, tuple[Callback, ...]]) -> TrainState:
    """Run the callbacks of ``event`` in order; after each, the events it queued, in the order queued.

    A queued event runs to completion (its callbacks and whatever they queue)
    before the next queued event and before the next callback of ``event``.
    A writer (``writes=True``) that returns a changed state is an error naming it.
    A writer that cannot write (an ``OSError``: no space, a read-only folder)
    does not keep the writers after it from running — the checkpoint writer
    above all; its error is raised, as an :class:`~smartcash_fn.errors.OutputError`,
    once the event is done.
    """
    failed: tuple[Callback, OSError] | None = None
    for cb in table.get(event, ()):
        try:
            out = cb.fn(state)
        except OSError as e:
            if not cb.writes or isinstance(e, BrokenPipeError):  # a closed pipe ends the output, not a write
                raise
            failed = failed or (cb, e)
            continue
        if not isinstance(out, TrainState):
            raise StateError(
                f"callback {cb.name!r} on {event!r} returned {type(out).__name__}; a callback must return the state"
            )
        if cb.writes and out is not state:
            field = changed_field(state, out)
            if field is not None:
                raise StateError(
                    f"callback {cb.name!r} on {event!r} writes (writes=True) but changed the state's {field}; "
                    "a writer observes: return the state it was given (it may queue events with emit) and keep "
                    "what it must remember outside the state")
        state = out
        while state.pending:
            queued, rest = state.pending[0], state.pending[1:]
            state = _fire_queued(state.replace(pending=()), queued, table)
            state = state.replace(pending=rest + state.pending)
    if failed is not None:
        raise write_failure(failed[0], failed[1], event, state)
    return state


def write_failure(cb: Callback, e: OSError, event: str, state: TrainState) -> OutputError:
    """The error a writer's ``OSError`` becomes: the file (when known), why, where in the run, what came first."""
    what = f"{e.filename}: " if e.filename else ""
    p = state.progress
    where = f"epoch {p.epoch + 1}, batch {p.batch}" if p.batch else f"epoch {p.epoch}"  # epochs counted from 1
    return OutputError(f"{what}the {cb.name!r} writer could not write at {event} ({where}, step {p.step}): "
                       f"{e.strerror or e}; the writers after it ran, the checkpoint included. Free some space or "
                       "make the run folder writable, then resume")
