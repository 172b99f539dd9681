"""Events and callbacks: state transformers bound to the moments of a run.

A callback is a function ``state -> state`` (it may do I/O) registered on one
of :data:`EVENTS` with a priority; lower priorities run first and ties keep
registration order. A callback keeps its own state in
``state.callbacks[name]``. It can queue another event for the loop with
:func:`emit` (the checkpoint writer emits ``checkpoint_saved``)::

    @on("epoch_end", priority=10)
    def announce(state):
        print(state.history.last())
        return state
    fit(state, loop.add(announce))
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import attrs

from .errors import StateError
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


def emit(state: TrainState, event: str) -> TrainState:
    """Queue ``event``; the loop fires it right after the callback that queued it."""
    _check_event(None, None, event)
    return state.replace(pending=state.pending + (event,))


def fire(state: TrainState, event: str, table: Mapping[str, tuple[Callback, ...]]) -> TrainState:
    """Run the callbacks of ``event`` in order; after each, the events it queued, in the order queued.

    A queued event runs to completion (its callbacks and whatever they queue)
    before the next queued event and before the next callback of ``event``.
    """
    for cb in table.get(event, ()):
        out = cb.fn(state)
        if not isinstance(out, TrainState):
            raise StateError(
                f"callback {cb.name!r} on {event!r} returned {type(out).__name__}; a callback must return the state"
            )
        state = out
        while state.pending:
            queued, rest = state.pending[0], state.pending[1:]
            state = fire(state.replace(pending=()), queued, table)
            state = state.replace(pending=rest + state.pending)
    return state
