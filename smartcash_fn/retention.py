"""Checkpoint retention: which files a checkpoint writer writes, links and deletes, computed, not remembered.

The checkpoint writer (:func:`smartcash_fn.callbacks.checkpointing`) keeps
no bookkeeping in the state. Each time it saves, the plan comes from what is
on disk — the names in the checkpoint folder — and from the state's history,
which holds every epoch's monitored value. A resumed run thus plans exactly
as the run that never stopped, and a replay without the writer reaches the
same bits::

    policy = Policy(every_epochs=1, monitor=Monitor("val/acc", "max"), top_k=2, keep_periodic=3)
    wanted = epoch_save(os.listdir(folder), state.history, policy, state.progress)   # ("epoch-0004.pt", True)
    plan = retention(os.listdir(folder), state.history, policy, *wanted, step=state.progress.step)
    plan.write, plan.links, plan.delete, plan.is_best

File names (``N`` counts epochs from 1, steps are global):

- ``epoch-NNNN.pt``, ``step-NNNNNNNN.pt`` — periodic; ``final-NNNNNNNN.pt`` —
  the last trained state at the end of training when no periodic file holds
  it (counted as periodic for ``keep_periodic``);
- ``top-epoch-NNNN.pt`` / ``top-step-NNNNNNNN.pt`` — the ``top_k`` best epochs;
- ``best.pt`` — the best epoch by the monitor; ``last.pt`` — the newest
  trained state; ``final.pt`` — the state after training ended, when params
  were restored (early stopping's ``restore_best``): not a trained state.

Files past the state's own step (left by a run that went further before
being resumed from an older checkpoint) are not counted; the resumed run
overwrites them when it gets there.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

import attrs

from .state import History, Progress

PERIODIC = re.compile(r"^(epoch|step|final)-(\d+)\.pt$")
TOP = re.compile(r"^top-(epoch|step)-(\d+)\.pt$")
LAST, BEST, FINAL = "last.pt", "best.pt", "final.pt"


@attrs.frozen
class Policy:
    """What a checkpoint writer keeps: periods, the monitor and its top-k, how many periodic files.

    ``Policy(every_epochs=1, every_steps=500, monitor=Monitor("val/acc", "max"), top_k=3, keep_periodic=5)``;
    ``monitor`` is a :class:`~smartcash_fn.callbacks.Monitor` (``name``, ``mode``, ``improved``) or None.
    """

    every_epochs: int = 1
    every_steps: int = 0
    monitor: Any = None
    top_k: int = 1
    keep_periodic: int = 0

    @property
    def active(self) -> bool:
        """Whether the policy writes anything at all (a period or a monitor)."""
        return bool(self.every_epochs or self.every_steps or self.monitor is not None)


@attrs.frozen
class Plan:
    """One save: write the state to ``write``, make ``links`` the same file, delete ``delete`` (names in the folder).

    ``Plan("epoch-0004.pt", ("last.pt", "best.pt"), ("epoch-0001.pt",), is_best=True)``
    """

    write: str
    links: tuple[str, ...]
    delete: tuple[str, ...]
    is_best: bool


@attrs.frozen
class Kept:
    """The counted files of a folder: ``periodic`` names oldest first, ``top`` ``(value, name)`` pairs best first."""

    periodic: tuple[str, ...] = ()
    top: tuple[tuple[float, str], ...] = ()


def monitored(record: Mapping[str, Any], monitor: Any) -> float | None:
    """The monitor's value in an epoch record as a float, or None: ``monitored({"val/loss": 0.4}, Monitor("val/loss"))``."""
    if monitor is None:
        return None
    v = record.get(monitor.name)
    return None if v is None else float(v)


def best_value(records: Iterable[Mapping[str, Any]], monitor: Any) -> float | None:
    """The best of ``records``' monitored values, by the monitor's rule (``min_delta`` included), or None.

    The value ``best.pt`` holds after those epochs:
    ``best_value(history.epochs[:-1], Monitor("val/acc", "max", 0.01))``.
    """
    best = None
    for r in records:
        v = monitored(r, monitor)
        if v is not None and monitor.improved(v, best):
            best = v
    return best


def _record(history: History, kind: str, n: int) -> Mapping[str, Any] | None:
    """The epoch record a checkpoint file of ``kind`` and number ``n`` was saved at (None when unknown)."""
    epochs = history.epochs
    if kind == "epoch":
        return epochs[n - 1] if 1 <= n <= len(epochs) else None
    for r in epochs:
        if r.get("step") == n:
            return r
    return None


def _top_key(policy: Policy, value: float, step: int) -> tuple[float, int]:
    return (-value if policy.monitor.mode == "max" else value, step)


def kept(files: Iterable[str], history: History, policy: Policy, step: int) -> Kept:
    """The periodic and top-k files among ``files`` that retention counts, from their names and the history.

    A file past ``step`` (the state's own) is not counted::

        kept(["epoch-0001.pt", "top-epoch-0001.pt", "last.pt"], state.history, policy, state.progress.step)
    """
    periodic: list[tuple[int, str]] = []
    top: list[tuple[tuple[float, int], float, str]] = []
    for name in files:
        m = PERIODIC.match(name)
        if m:
            kind, n = m.group(1), int(m.group(2))
            if kind == "epoch":
                rec = _record(history, kind, n)
                at = None if rec is None or rec.get("step") is None else int(rec["step"])
            else:
                at = n
            if at is not None and at <= step:
                periodic.append((at, name))
            continue
        m = TOP.match(name)
        if m and policy.monitor is not None:
            rec = _record(history, m.group(1), int(m.group(2)))
            value = None if rec is None else monitored(rec, policy.monitor)
            at = None if rec is None or rec.get("step") is None else int(rec["step"])
            if value is not None and not math.isnan(value) and at is not None and at <= step:
                top.append((_top_key(policy, value, at), value, name))
    return Kept(periodic=tuple(n for _, n in sorted(periodic)),
                top=tuple((v, n) for _, v, n in sorted(top)))


def step_save(policy: Policy, progress: Progress, batches: int, stopped: bool) -> str | None:
    """The file a ``batch_end`` saves, or None: ``step-NNNNNNNN.pt`` every ``every_steps`` steps.

    A step that ends its epoch is left to the epoch's end (saved after validation)::

        step_save(Policy(every_steps=2), Progress(epoch=0, step=2, batch=2), batches=4, stopped=False)
    """
    p = progress
    if not policy.every_steps or p.step % policy.every_steps or stopped or p.batch >= batches:
        return None
    return f"step-{p.step:08d}.pt"


def epoch_save(files: Iterable[str], history: History, policy: Policy, progress: Progress) -> tuple[str, bool] | None:
    """The file an ``epoch_end`` saves and whether it is periodic, or None when nothing is due.

    Periodic by ``every_epochs`` (``epoch-NNNN.pt``) or ``every_steps``
    (``step-NNNNNNNN.pt``); else saved when the epoch is best or enters the
    top-k, then kept only as ``best.pt``/``top-*.pt``::

        epoch_save(os.listdir(folder), state.history, policy, state.progress)   # ("epoch-0003.pt", True)
    """
    p = progress
    by_epoch = bool(policy.every_epochs) and p.epoch % policy.every_epochs == 0
    by_step = bool(policy.every_steps) and p.step % policy.every_steps == 0
    value = monitored(history.last(), policy.monitor) if history.epochs else None
    wanted = by_epoch or by_step
    if not wanted and value is not None:
        wanted = policy.monitor.improved(value, best_value(history.epochs[:-1], policy.monitor)) or \
            _enters_top(kept(files, history, policy, p.step), policy, value)
    if not wanted:
        return None
    name = f"epoch-{p.epoch:04d}.pt" if by_epoch or not by_step else f"step-{p.step:08d}.pt"
    return name, by_epoch or by_step


def _enters_top(k: Kept, policy: Policy, value: float) -> bool:
    if not policy.top_k or math.isnan(value):
        return False
    if len(k.top) < policy.top_k:
        return True
    worst = k.top[-1][0]
    return value < worst if policy.monitor.mode == "min" else value > worst


def retention(files: Iterable[str], history: History, policy: Policy, filename: str, periodic: bool,
              step: int, value: float | None = None) -> Plan:
    """The plan for saving the state at ``step`` as ``filename``, given the folder's ``files`` and the history.

    ``value`` is the epoch's monitored value (None for a mid-epoch or final
    save). A periodic save is written as ``filename``; any other straight to
    where it is kept (its top-k file, ``best.pt``, else ``last.pt``).
    ``last.pt`` always follows; the oldest periodic files past
    ``keep_periodic`` and the top-k files pushed out are deleted::

        plan = retention(os.listdir(folder), state.history, policy, "epoch-0004.pt", True, state.progress.step, 0.41)
    """
    files = list(files)
    k = kept(files, history, policy, step)
    periodic_files = [f for f in k.periodic if f != filename] + ([filename] if periodic else [])
    keep = policy.keep_periodic
    drop = periodic_files[:-keep] if keep else []
    top_file = f"top-{filename}"
    top = [(v, f) for v, f in k.top if f != top_file]
    is_best, drop_top = False, []
    mon = policy.monitor
    if mon is not None and value is not None:
        is_best = mon.improved(value, best_value(history.epochs[:-1], mon))
        if policy.top_k and not math.isnan(value):
            ranked = sorted([(_top_key(policy, v, i), v, f) for i, (v, f) in enumerate(top)]
                            + [(_top_key(policy, value, len(top)), value, top_file)])
            drop_top = [f for _, _, f in ranked[policy.top_k:]]
            top = [(v, f) for _, v, f in ranked[:policy.top_k]]
    in_top = any(f == top_file for _, f in top)
    write = filename if periodic else (top_file if in_top else (BEST if is_best else LAST))
    links = [LAST] + ([BEST] if is_best else []) + ([top_file] if in_top else [])
    return Plan(write=write, links=tuple(x for x in links if x != write),
                delete=tuple(f for f in drop + drop_top if f != write), is_best=is_best)
