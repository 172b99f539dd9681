"""Stopping a run on SIGINT or SIGTERM at the next batch boundary, with a checkpoint there.

The first signal is only noted; a callback at ``batch_end`` turns it into a
stop (``state.stop``), so the loop ends after that batch, the checkpoint
writer saves the state, the ``training_end`` writers run (the summary says
why it stopped) and the command exits with the conventional status (130 for
SIGINT, 143 for SIGTERM). Exact mid-epoch resume makes this safe: ``resume``
clears the interruption and goes on to the same bits as a run never stopped.
A second signal exits at once::

    with on_signals() as caught:
        state = fit(state, loop.add(stop_on(caught)))
    if caught.signum: sys.exit(exit_status(caught.signum))
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Any, Iterator, Mapping

import attrs

from ..events import Callback
from ..state import Stop, TrainState

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a run at a batch boundary."""

MARK = "interrupt"
"""``state.callbacks[MARK]`` holds ``{"signal": "SIGTERM"}`` in a state stopped by a signal (a resumable stop)."""


@attrs.define
class Caught:
    """The first stopping signal received while :func:`on_signals` is active (None: none yet)."""

    signum: int | None = None


def exit_status(signum: int) -> int:
    """The conventional exit status of a process stopped by ``signum``: 128 + its number (130, 143)."""
    return 128 + int(signum)


@contextlib.contextmanager
def on_signals() -> Iterator[Caught]:
    """Note SIGINT and SIGTERM for the ``with`` block instead of dying; the second exits at once.

    Outside the main thread (where handlers cannot be set) nothing is installed.
    """
    caught = Caught()

    def handle(signum: int, _frame: Any) -> None:
        if caught.signum is not None:
            print(f"\n{signal.Signals(signum).name} again: stopping now, without a checkpoint of this point",
                  file=sys.stderr, flush=True)
            raise SystemExit(exit_status(signum))
        caught.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this batch and writing a checkpoint (send it "
              "again to stop at once)", file=sys.stderr, flush=True)

    previous = {}
    try:
        for s in SIGNALS:
            previous[s] = signal.signal(s, handle)
    except ValueError:  # not the main thread
        pass
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_on(caught: Caught, priority: int = -10_000) -> Callback:
    """A ``batch_end`` callback that stops the run once ``caught`` holds a signal (first, before any writer).

    ``loop.add(stop_on(caught))``
    """

    def check(state: TrainState) -> TrainState:
        if caught.signum is None or state.stop is not None:
            return state
        name = signal.Signals(caught.signum).name
        return state.replace(stop=Stop(f"interrupted by {name}"),
                             callbacks={**state.callbacks, MARK: {"signal": name}})

    return Callback("batch_end", check, priority=priority, name="stop_on_signal")


def interrupted(state: TrainState) -> bool:
    """Whether ``state`` was stopped by a signal (and so goes on when resumed)."""
    return state.stop is not None and not state.stop.failed and MARK in state.callbacks


def resumable(state: TrainState) -> TrainState:
    """``state`` without its interruption: no stop, no mark; as the run was just before the signal."""
    callbacks: Mapping[str, Any] = {k: v for k, v in state.callbacks.items() if k != MARK}
    return state.replace(stop=None, callbacks=callbacks)
