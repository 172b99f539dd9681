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


def compare_overlap(out: str, steps: int = 4) -> None:
    """Under ``torchrun``: train a BatchNorm net with an unused layer ``steps`` steps with the all-reduce
    overlapped with the backward pass and at the update, plain, under ``accumulate(2)`` and under ``fp16()``;
    rank 0 saves the final states' params, buffers, last metrics and the collectives' launch points to ``out``
    (every rank checks its params against rank 0's)."""
    import attrs
    import toolz
    import torch

    from smartcash_fn.errors import StateError

    from smartcash_fn import distributed
    from smartcash_fn.optim import adamw
    from smartcash_fn.state import TrainState
    from smartcash_fn.step import accumulate, clip, fp16, make_step

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Linear(4, 4)  # first in parameter order: in the bucket launched last
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.bn = torch.nn.BatchNorm2d(8)
            self.big = torch.nn.Linear(8, 300_000 // 8)  # over the first bucket's 1 MB: two buckets
            self.head = torch.nn.Linear(300_000 // 8, 5)

        def forward(self, x):
            h = self.bn(self.conv(x)).relu().mean((2, 3))
            return self.head(self.big(h).relu())

    distributed.init_from_env()
    w = distributed.world()
    torch.manual_seed(0)
    x, y = torch.randn(8 * w.size, 3, 6, 6), torch.randint(0, 5, (8 * w.size,))

    def loss_fn(apply, batch):
        xb, yb = batch
        return torch.nn.functional.cross_entropy(apply(xb), yb), {"part": xb.mean()}

    launches: list[bool] = []  # for each all_reduce: whether autograd was running a node when it was launched
    plain = torch.distributed.all_reduce

    def spy(*args, **kw):
        launches.append(torch._C._current_autograd_node() is not None)
        return plain(*args, **kw)

    def doubled(inner):  # a transformer changing the gradients after autograd, inside the reduction
        def backward(state, loss, leaves):
            return {k: 2 * g for k, g in inner.backward(state, loss, leaves).items()}
        return attrs.evolve(inner, backward=backward)

    results = {}
    torch.distributed.all_reduce = spy
    try:
        for name, overlap, every in (("overlap", True, 1), ("update", False, 1), ("overlap_acc", True, 2),
                                     ("update_acc", False, 2), ("overlap_fp16", True, 0), ("update_fp16", False, 0)):
            outer = fp16(init_scale=1.0) if every == 0 else accumulate(every)  # outside, as build puts them
            step = toolz.compose(outer, distributed.all_reduce_gradients(overlap=overlap),
                                 clip(1.0))(make_step(loss_fn))
            state = TrainState.create(Net, adamw(1e-2), seed=0)
            launches.clear()
            for i in range(steps):
                rows = slice((i % 2) * 4 * w.size + w.rank * 4, (i % 2) * 4 * w.size + (w.rank + 1) * 4)
                state = step(state, (x[rows], y[rows]))
            distributed.check_replicas(state, name)
            results[name + "_skipped"] = float(state.metrics.get("skipped", -1))
            results[name] = {"params": dict(state.params), "buffers": dict(state.buffers),
                             "metrics": dict(state.metrics), "extras": sorted(state.extras),
                             "launches": list(launches)}
        try:
            distributed.all_reduce_gradients()(doubled(make_step(loss_fn)))(TrainState.create(Net, adamw(1e-2)),
                                                                            (x[:4], y[:4]))
            results["refused"] = None
        except StateError as e:
            results["refused"] = str(e)
    finally:
        torch.distributed.all_reduce = plain
    if w.main:
        torch.save(results, out)
    distributed.close()


if __name__ == "__main__":
    import sys

    compare_overlap(sys.argv[1])
