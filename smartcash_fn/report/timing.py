"""Where an epoch's time went: data wait, step, validation and checkpoint seconds, as records for writers.

The loop measures the first three into ``state.clock`` (transient: never in
a checkpoint, never compared by ``verify``); the checkpoint writer's time is
measured here, from just before it (priority 999) to just after it (1001) at
``epoch_end``. A :class:`EpochTimer` turns both into one record per epoch;
``metrics.jsonl`` holds them as ``"kind": "time"`` lines, the summary adds
them up, and :func:`data_bound` says when the loader held training back::

    timer = EpochTimer()
    loop = loop.add(*timer.callbacks("my_timer"))
    state = fit(state, loop)
    totals(timer.records)          # {"time/data": 3.1, "time/step": 40.2, "time/val": 5.0, "time/checkpoint": 0.4}
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import attrs

from ..events import Callback, writer
from ..state import Clock, TrainState

#: The checkpoint writer's priority at ``epoch_end`` (``smartcash_fn.callbacks.checkpointing``).
CHECKPOINT_PRIORITY = 1000
KEYS = ("time/data", "time/step", "time/val", "time/checkpoint")


def time_record(state: TrainState, checkpoint: float = 0.0) -> dict[str, Any]:
    """The time record of the epoch that just ended (at ``epoch_end``): its index, step and the four times.

    ``time_record(state, checkpoint=0.2)`` -> ``{"epoch": 0, "step": 8, "time/data": ..., "time/checkpoint": 0.2}``
    """
    c = state.clock
    return {"epoch": state.progress.epoch - 1, "step": state.progress.step, "time/data": c.data,
            "time/step": c.step, "time/val": c.val, "time/checkpoint": checkpoint}


def totals(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The four times summed over ``records``: ``totals([{"time/data": 1.0}, {"time/data": 2.0}])["time/data"] == 3.0``."""
    return {k: float(sum(float(r.get(k) or 0.0) for r in records)) for k in KEYS}


def data_bound(clock: Clock, at_least: float = 1.0) -> bool:
    """Whether the epoch waited longer for batches than it spent in steps, and at least ``at_least`` seconds.

    ``data_bound(Clock(data=2, step=1))`` is True; a wait under a second is not worth a warning.
    """
    return clock.data > clock.step and clock.data >= at_least


@attrs.define
class EpochTimer:
    """One writer's memory of the run's epoch times (outside the state): ``records``, one per epoch ended.

    ``callbacks(name, on_record)`` times the checkpoint writer and appends a
    :func:`time_record` after it; ``on_record(state, record)`` is called too.
    """

    records: list[dict[str, Any]] = attrs.field(factory=list)
    mark: float | None = None

    def callbacks(self, name: str, on_record: Callable[[TrainState, dict[str, Any]], None] | None = None
                  ) -> tuple[Callback, ...]:
        def before(state: TrainState) -> TrainState:
            self.mark = time.perf_counter()
            return state

        def after(state: TrainState) -> TrainState:
            spent = time.perf_counter() - self.mark if self.mark is not None else 0.0
            self.mark = None
            record = time_record(state, spent)
            self.records.append(record)
            if on_record is not None:
                on_record(state, record)
            return state

        return (writer("epoch_end", before, priority=CHECKPOINT_PRIORITY - 1, name=name),
                writer("epoch_end", after, priority=CHECKPOINT_PRIORITY + 1, name=name))
