"""Callbacks for the data-parallel tests, named in a recipe as ``_ddp_helpers:NAME`` (``tests/`` on the path).

Each observes or breaks a run on one rank; none changes the state, so the
runs they watch stay comparable bit for bit::

    [[callbacks]]
    use = "_ddp_helpers:rank_digests"
    folder = "/tmp/x/digests"
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from smartcash_fn.distributed import digest64, world
from smartcash_fn.events import Callback
from smartcash_fn.step import classification_loss


def rank_digests(folder: str) -> tuple[Callback, ...]:
    """Append ``{epoch, step, params digest, val metrics}`` to ``folder/rank-R.jsonl`` at each epoch end."""

    def fn(state):
        p = state.progress
        rec = {"epoch": p.epoch, "step": p.step, "digest": digest64(state.params),
               "val": {k: v for k, v in state.history.last().items() if k.startswith("val/")}}
        Path(folder).mkdir(parents=True, exist_ok=True)
        with open(Path(folder) / f"rank-{world().rank}.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        return state

    return (Callback("epoch_end", fn, priority=990, name="rank_digests"),)


def fail_on_rank(rank: int = 1, step: int = 2) -> Callback:
    """Raise ``RuntimeError("boom")`` on ``rank`` after ``step`` steps."""

    def fn(state):
        if world().rank == rank and state.progress.step == step:
            raise RuntimeError(f"boom at step {step}")
        return state

    return Callback("batch_end", fn, name="fail_on_rank")


def kill_once(marker: str, rank: int = 1, step: int = 5) -> Callback:
    """SIGKILL this process on ``rank`` after ``step`` steps, once (``marker`` remembers that it did)."""

    def fn(state):
        if world().rank == rank and state.progress.step == step and not os.path.exists(marker):
            Path(marker).write_text("killed\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return state

    return Callback("batch_end", fn, name="kill_once")


def nan_loss_on_rank(rank: int = 1, call: int = 4):
    """Cross-entropy, but NaN on ``rank`` at its ``call``-th evaluation (the trial step of ``train`` is the first)."""
    calls = [0]

    def loss(apply, batch):
        value = classification_loss(apply, batch)
        calls[0] += 1
        if world().rank == rank and calls[0] == call:
            return value * float("nan")
        return value

    return loss
