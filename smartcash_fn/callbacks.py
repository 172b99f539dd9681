"""Built-in callbacks: best params, early stopping, checkpoints, plateau, NaN guard, memory, step records, time budget.

Each factory returns a :class:`~smartcash_fn.events.Callback` (or a tuple of
them) to register on a :class:`~smartcash_fn.loop.Loop`. Metric callbacks run
at ``epoch_end``, after the epoch's record is in ``state.history``; they keep
their own state in ``state.callbacks[name]`` so a resumed run continues
their counters. The checkpoint writer runs last (priority 1000) so the file
holds the state every other callback has finished with::

    loop = loop.add(
        early_stopping([Monitor("val/loss"), Monitor("val/acc", "max", 0.001)], patience=5),
        reduce_on_plateau(Monitor("val/loss"), factor=0.5, patience=2),
        checkpointing("runs/a/checkpoints", every_epochs=1, monitor=Monitor("val/acc", "max")),
        nan_guard(),
    )
"""

from __future__ import annotations

import gc
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import attrs
import torch

from . import checkpoint, distributed
from ._files import link_atomic, remove_temp_files, save_torch_atomic
from .errors import StateError
from .events import Callback, emit, writer
from .retention import FINAL, Policy, epoch_save, monitored, retention, step_save
from .state import Best, Stop, TrainState, transient_fields


def _check_mode(_: object, __: object, value: str) -> None:
    if value not in ("min", "max"):
        raise StateError(f"monitor mode must be 'min' or 'max', got {value!r}")


@attrs.frozen
class Monitor:
    """A metric to watch: its ``name`` in the epoch record, ``mode`` ('min' or 'max') and ``min_delta``.

    ``Monitor("val/mAP50", "max", 0.001).improved(0.52, best=0.51)`` is True.
    """

    name: str
    mode: str = attrs.field(default="min", validator=_check_mode)
    min_delta: float = 0.0

    def improved(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` by more than ``min_delta`` (always, when there is no best)."""
        if best is None or (isinstance(best, float) and math.isnan(best)):
            return not math.isnan(value)
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta

    def read(self, state: TrainState) -> float | None:
        """This epoch's value of the metric, or None when the epoch did not record it."""
        value = state.history.last().get(self.name)
        return None if value is None else float(value)


def _as_monitors(monitors: Monitor | str | Sequence[Monitor | str]) -> tuple[Monitor, ...]:
    if isinstance(monitors, (Monitor, str)):
        monitors = [monitors]
    out = tuple(Monitor(m) if isinstance(m, str) else m for m in monitors)
    if not out or not all(isinstance(m, Monitor) for m in out):
        raise StateError("give one or more monitors: Monitor('val/loss') or Monitor('val/acc', 'max')")
    return out


def _cb_state(state: TrainState, name: str, default: dict) -> dict:
    return dict(state.callbacks.get(name) or default)


def _with_cb_state(state: TrainState, name: str, value: dict) -> TrainState:
    return state.replace(callbacks={**state.callbacks, name: value})


# --------------------------------------------------------------------------- best params


def keep_best(monitor: Monitor | str, priority: int = -100) -> Callback:
    """Keep a reference to the params with the best ``monitor`` value in ``state.best``.

    ``keep_best(Monitor("val/acc", "max"))`` — ``state.best.params`` is the
    same tensors the state had then: no copy is made (the state is immutable).
    """
    (m,) = _as_monitors(monitor)

    def fn(state: TrainState) -> TrainState:
        value = m.read(state)
        if value is None:
            return state
        prev = state.best.value if state.best is not None and state.best.monitor == m.name else None
        if not m.improved(value, prev):
            return state
        p = state.progress
        best = Best(monitor=m.name, mode=m.mode, value=value, epoch=p.epoch - 1, step=p.step,
                    params=state.params, buffers=state.buffers, metrics=dict(state.history.last()))
        return state.replace(best=best)

    return Callback("epoch_end", fn, priority=priority, name="keep_best")


# --------------------------------------------------------------------------- early stopping


def early_stopping(monitors: Monitor | str | Sequence[Monitor | str], patience: int = 10,
                   restore_best: bool = True, name: str = "early_stopping") -> tuple[Callback, ...]:
    """Stop when none of ``monitors`` has improved for ``patience`` epochs.

    Each monitor keeps its own best value and wait counter; the run stops once
    every monitor has waited ``patience`` epochs without improving by its
    ``min_delta``. With ``restore_best`` the first monitor's best params are
    kept (:func:`keep_best`) and put back at ``training_end``; the result names
    the epoch restored in ``state.callbacks["early_stopping"]["restored_epoch"]``::

        early_stopping([Monitor("val/loss"), Monitor("val/acc", "max", 0.001)], patience=5)
    """
    ms = _as_monitors(monitors)
    if not isinstance(patience, int) or patience < 1:
        raise StateError(f"early_stopping: patience must be an int >= 1, got {patience!r}")

    def check(state: TrainState) -> TrainState:
        st = _cb_state(state, name, {"best": {}, "wait": {}})
        best, wait = dict(st["best"]), dict(st["wait"])
        seen = False
        for m in ms:
            value = m.read(state)
            if value is None:
                continue
            seen = True
            if m.improved(value, best.get(m.name)):
                best[m.name], wait[m.name] = value, 0
            else:
                wait[m.name] = wait.get(m.name, 0) + 1
        st = {**st, "best": best, "wait": wait}
        state = _with_cb_state(state, name, st)
        if seen and all(wait.get(m.name, 0) >= patience for m in ms):
            detail = ", ".join(f"{m.name} best {best.get(m.name, float('nan')):.6g}" for m in ms)
            epoch = state.progress.epoch - 1
            state = _with_cb_state(state, name, {**st, "stopped_epoch": epoch})
            return state.replace(stop=Stop(
                f"early stop after epoch {epoch + 1}: no improvement for {patience} epochs ({detail})"))
        return state

    def restore(state: TrainState) -> TrainState:
        b = state.best
        if b is None or b.monitor != ms[0].name or state.params is b.params:
            return state
        st = _cb_state(state, name, {})
        return _with_cb_state(state.replace(params=b.params, buffers=b.buffers), name,
                              {**st, "restored_epoch": b.epoch, "restored_value": b.value})

    cbs = (Callback("epoch_end", check, priority=-50, name=name),)
    if restore_best:
        cbs = (keep_best(ms[0]),) + cbs + (Callback("training_end", restore, priority=-100, name=name),)
    return cbs


# --------------------------------------------------------------------------- plateau


def reduce_on_plateau(monitor: Monitor | str, factor: float = 0.1, patience: int = 10,
                      threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                      min_scale: float = 0.0, name: str = "plateau") -> Callback:
    """Multiply ``state.lr_scale`` by ``factor`` after ``patience`` epochs without improvement.

    The rule of ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (relative or
    absolute ``threshold``, ``cooldown``), applied to the lr multiplier that
    every optimizer reads, so parameter groups keep their ratios::

        reduce_on_plateau(Monitor("val/loss"), factor=0.5, patience=3)
    """
    (m,) = _as_monitors(monitor)
    if not 0.0 < factor < 1.0:
        raise StateError(f"reduce_on_plateau: factor must be in (0, 1), got {factor}")
    if threshold_mode not in ("rel", "abs"):
        raise StateError(f"reduce_on_plateau: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")

    def better(value: float, best: float) -> bool:
        if m.mode == "min":
            return value < (best * (1.0 - threshold) if threshold_mode == "rel" else best - threshold)
        return value > (best * (threshold + 1.0) if threshold_mode == "rel" else best + threshold)

    def fn(state: TrainState) -> TrainState:
        value = m.read(state)
        if value is None:
            return state
        st = _cb_state(state, name, {"best": math.inf if m.mode == "min" else -math.inf, "bad": 0, "cooldown": 0})
        if better(value, st["best"]):
            st["best"], st["bad"] = value, 0
        else:
            st["bad"] += 1
        if st["cooldown"] > 0:
            st["cooldown"] -= 1
            st["bad"] = 0
        scale = state.lr_scale
        if st["bad"] > patience:
            new = max(scale * factor, min_scale)
            if scale - new > 1e-8:
                scale = new
            st["cooldown"], st["bad"] = cooldown, 0
        return _with_cb_state(state.replace(lr_scale=scale), name, st)

    return Callback("epoch_end", fn, priority=-40, name=name)


# --------------------------------------------------------------------------- NaN guard


def _finite(v: object) -> bool:
    """Whether a metric holds no NaN or Inf (a Python float test for scalars: ~1 µs on the CPU)."""
    if isinstance(v, torch.Tensor) and v.numel() != 1:
        return bool(torch.isfinite(v).all())
    return math.isfinite(float(v))


def nan_guard(name: str = "nan_guard") -> Callback:
    """Stop the run when a step's loss (or any recorded metric) is NaN or Inf.

    Runs first at ``batch_end``; the stop is marked failed, so the checkpoint
    writer keeps the last good checkpoint instead of saving the broken state::

        nan_guard()   # state.stop.reason names the step, the epoch and the batch in it (counted from 1)
    """

    def fn(state: TrainState) -> TrainState:
        if not state.metrics:
            return state
        bad = [k for k, v in state.metrics.items() if not _finite(v)]
        if not bad:
            return state
        p = state.progress
        reason = (f"non-finite {', '.join(bad)} at step {p.step} (epoch {p.epoch + 1}, batch {p.batch}); "
                  "stopped, the last good checkpoint is kept")
        return _with_cb_state(state.replace(stop=Stop(reason, failed=True)), name, {"tripped_step": p.step})

    return Callback("batch_end", fn, priority=-1000, name=name)


# --------------------------------------------------------------------------- memory


def memory_cleanup(every_epochs: int = 1, name: str = "memory_cleanup") -> Callback:
    """Run the garbage collector (and empty the CUDA cache) every ``every_epochs`` epochs; 0 is off."""

    def fn(state: TrainState) -> TrainState:
        if every_epochs and state.progress.epoch % every_epochs == 0:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return state

    return Callback("epoch_end", fn, priority=900, name=name)


# --------------------------------------------------------------------------- step records


def record_steps(every: int = 1, name: str = "record_steps") -> Callback:
    """Append the step metrics (as floats) to ``state.history.steps`` every ``every`` steps.

    ``record_steps(10)`` — each record holds ``step``, ``epoch`` and the metrics.
    """
    if not isinstance(every, int) or every < 1:
        raise StateError(f"record_steps: every must be an int >= 1, got {every!r}")

    def fn(state: TrainState) -> TrainState:
        p = state.progress
        if p.step % every:
            return state
        rec = {"step": p.step, "epoch": p.epoch, **{k: float(v) for k, v in state.metrics.items()}}
        h = state.history
        return state.replace(history=attrs.evolve(h, steps=h.steps + (rec,)))

    return Callback("batch_end", fn, priority=-10, name=name)


# --------------------------------------------------------------------------- checkpoints


_SERIALIZED = tuple(f.name for f in attrs.fields(TrainState) if f.name not in transient_fields())


def same_state(a: TrainState | None, b: TrainState | None) -> bool:
    """Whether two states hold the very same serialized parts (each field the same object): no compare of tensors.

    ``same_state(saved, state)`` — True when nothing changed ``state`` since ``saved`` was written.
    """
    return a is not None and b is not None and all(getattr(a, f) is getattr(b, f) for f in _SERIALIZED)


@attrs.define
class _Session:
    """What one checkpoint writer remembers of this process's run, outside the state.

    ``saved``: the state the newest checkpoint holds; ``trained``: the last
    trained state, kept once the run is ending (stopped, or its last epoch done).
    """

    saved: TrainState | None = None
    trained: TrainState | None = None


def weights_file(path: str | os.PathLike, use_ema: bool = False, priority: int = 1200,
                 name: str = "weights_file") -> Callback:
    """A writer saving the model's weights alone at ``training_end``: ``{"state_dict": ..., "data_info": ...}``.

    A slim file to deploy or share (no optimizer moments, no history), loadable
    with ``torch.load(path, weights_only=True)`` and ``model.load_state_dict``;
    the EMA weights with ``use_ema``. The restored best params when a callback
    restored them (``final.pt``'s params), else the last trained ones::

        loop = loop.add(weights_file("runs/a/weights.pt"))
    """
    path = Path(path)

    def end(state: TrainState) -> TrainState:
        params, buffers = state.params, state.buffers
        if use_ema and "ema" in state.extras:
            params, buffers = state.extras["ema"]["params"], state.extras["ema"]["buffers"]
        weights = {k: v.detach().cpu() for k, v in {**params, **buffers}.items()}
        save_torch_atomic(path, {"state_dict": weights, "data_info": dict(state.data_info)})
        return state

    return writer("training_end", end, priority=priority, name=name)


def checkpointing(directory: str | os.PathLike, every_epochs: int = 1, every_steps: int = 0,
                  monitor: Monitor | str | None = None, top_k: int = 1, keep_periodic: int = 0,
                  name: str = "checkpoint") -> tuple[Callback, ...]:
    """Write checkpoints into ``directory``: periodic, ``last.pt``, ``best.pt``, the top-k and ``final.pt``.

    - ``every_epochs`` / ``every_steps``: ``epoch-NNNN.pt`` at epoch ends and
      ``step-NNNNNNNN.pt`` every N steps (0 is off; both may be on); a step
      that ends its epoch is saved at the epoch's end, after validation;
    - ``last.pt`` is always the newest *trained* state; at ``training_end``
      the last trained state is saved when no checkpoint holds it yet (as
      ``final-NNNNNNNN.pt`` too when a period is set);
    - with ``monitor``: ``best.pt`` holds the best epoch, and the ``top_k``
      best epochs are kept as ``top-epoch-NNNN.pt`` (``top_k`` 0: only best.pt);
    - ``keep_periodic`` keeps only the newest N periodic files (0 keeps all);
      an epoch saved only because it is best or in the top-k gets no periodic
      file of its own;
    - ``final.pt``: when params were put back at ``training_end`` (early
      stopping's ``restore_best``), the state as training ended — the restored
      params — is saved there, and ``last.pt`` keeps the last trained state.

    It is a writer: it returns the state it was given and keeps nothing in it.
    What to keep is computed from the folder's file names and the state's
    history (:mod:`smartcash_fn.retention`), so a resumed run keeps the same
    files as the run that never stopped. Temp files of an interrupted write
    are removed when training starts. Only rank 0 writes. Nothing is written
    for a state stopped by a failure (NaN guard), nor at all with both periods
    0 and no ``monitor``. Each save fires ``checkpoint_saved``; while it
    fires, ``state.callbacks["checkpoint"]`` says the ``last`` path written,
    whether it ``is_best`` and its ``epoch`` and ``step`` (a
    :class:`~smartcash_fn.events.Notice`, gone afterwards)::

        checkpointing("runs/a/checkpoints", every_epochs=1, every_steps=500, monitor=Monitor("val/acc", "max"))
    """
    directory = Path(directory)
    for arg, v in (("every_epochs", every_epochs), ("every_steps", every_steps), ("top_k", top_k),
                   ("keep_periodic", keep_periodic)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise StateError(f"checkpointing: {arg} must be an int >= 0, got {v!r}")
    policy = Policy(every_epochs=every_epochs, every_steps=every_steps,
                    monitor=None if monitor is None else _as_monitors(monitor)[0], top_k=top_k,
                    keep_periodic=keep_periodic)
    session = _Session()

    def listing() -> list[str]:
        return sorted(os.listdir(directory)) if directory.is_dir() else []

    def notice(state: TrainState, path: Path, is_best: bool, of: TrainState, **more: object) -> TrainState:
        p = of.progress
        return emit(state, "checkpoint_saved", by=name,
                    info={"last": str(path), "is_best": is_best, "epoch": p.epoch, "step": p.step, **more})

    def save(state: TrainState, filename: str, periodic: bool, value: float | None = None,
             reported: TrainState | None = None) -> TrainState:
        """Save ``state`` by the retention plan; the notice goes on ``reported`` (the state being fired)."""
        plan = retention(listing(), state.history, policy, filename, periodic, state.progress.step, value)
        path = directory / plan.write
        checkpoint.save(state, path)
        for link in plan.links:
            link_atomic(path, directory / link)
        for f in plan.delete:
            (directory / f).unlink(missing_ok=True)
        session.saved = state
        return notice(state if reported is None else reported, path, plan.is_best, state)

    def ending(state: TrainState) -> bool:
        return state.stop is not None or (state.progress.batch == 0 and state.progress.epoch >= state.run.epochs)

    def start(state: TrainState) -> TrainState:
        remove_temp_files(directory)
        session.saved = session.trained = None
        return state

    def on_batch(state: TrainState) -> TrainState:
        if state.stop is not None:
            session.trained = state if not state.stop.failed else None
            return state
        filename = step_save(policy, state.progress, state.run.batches, False)
        return state if filename is None else save(state, filename, True)

    def on_epoch(state: TrainState) -> TrainState:
        if state.stop is not None and state.stop.failed:
            return state
        session.trained = state if ending(state) else None
        wanted = epoch_save(listing(), state.history, policy, state.progress)
        if wanted is None:
            return state
        return save(state, *wanted, value=monitored(state.history.last(), policy.monitor))

    def on_end(state: TrainState) -> TrainState:
        if (state.stop is not None and state.stop.failed) or not policy.active:
            return state  # a failed state is not saved; a writer with every policy off writes nothing
        trained = session.trained
        restored = (trained is not None and trained.progress == state.progress
                    and (trained.params is not state.params or trained.buffers is not state.buffers))
        if not restored:
            trained = state  # the end state is the last trained state (with what training_end noted)
        periodic = bool(every_epochs or every_steps)
        out = state
        if not same_state(session.saved, trained):
            out = save(trained, f"final-{trained.progress.step:08d}.pt", periodic, reported=out)
        if restored:
            path = directory / FINAL
            checkpoint.save(state, path)
            out = notice(out, path, False, state, restored=True)
        return out

    return (
        writer("training_start", start, priority=1000, name=name),
        writer("batch_end", on_batch, priority=1000, name=name),
        writer("epoch_end", on_epoch, priority=1000, name=name),
        writer("training_end", on_end, priority=1000, name=name),
    )


# --------------------------------------------------------------------------- time budget


@attrs.define
class _Watch:
    """When this process started training and at which batch of its epoch (outside the state: a timing)."""

    start: float = 0.0
    batch: int = 0


LATER_EPOCHS = 1.1
"""How much slower than the first a :func:`time_budget` plans each later epoch to run: in the default recipe
they took up to 14 % longer (the step's time creeps up as training goes on), and 6 epochs planned on a
94-second first one ended 15 s past a 10-minute budget."""


def time_budget(seconds: float, replan: Callable[[TrainState, int], TrainState] | None = None,
                name: str = "time_budget", priority: int = 800,
                cost: Callable[[TrainState], Callable[[int, int], float]] | None = None,
                validated: Callable[[int, int], bool] | None = None) -> tuple[Callback, ...]:
    """Fit a run into ``seconds`` of wall time: time the first epoch, plan the epochs that fit, stop after them.

    At the end of the first epoch the plan is fixed and recorded in
    ``state.callbacks[name]``: ``max_time``, ``cap`` (the loop's epochs, an
    upper bound) and ``epochs`` = ``floor(max_time / (LATER_EPOCHS · first epoch's seconds))``,
    at least 1 and at most ``cap`` (the first epoch timed from
    ``training_start`` through validation and the callbacks before this one).
    Where the epochs' steps differ in cost (a :class:`~smartcash_fn.data.Start`'s
    smaller first epochs), ``cost(state)``, called once when the plan is
    made (it may time steps on ``state``), returns ``costs(epoch, planned)``:
    the step time of the 0-based ``epoch`` of a run of ``planned`` epochs,
    relative to any fixed unit. The plan is then the most epochs whose steps,
    scaled from the first epoch's by ``costs(epoch, planned) / costs(0, 0)``,
    and data, validation and the rest, as long as the first epoch's, fit
    ``max_time`` (LATER_EPOCHS included).
    Where not every epoch validates, ``validated(epoch, planned)`` (a
    :meth:`~smartcash_fn.loop.Validation.due`) says which do: the first
    epoch's validation time (the loop's ``clock.val``) is counted for those
    alone. A first epoch that did not validate gives no time to count, so
    the plan then leaves validation out (``validation.first`` times it).
    The state keeps the decision, not the measurement: two runs whose plans
    agree hold the same bits. Under ``torchrun`` the slowest rank's first
    epoch decides, so every rank plans alike (each timing its own epoch
    would give the ranks different schedules, and different params). The
    run then stops after ``epochs`` epochs. ``replan(state, epochs)`` (given
    by :func:`~smartcash_fn.run.build.build`) returns the state with an
    optimizer whose schedule spans the planned epochs; it runs when the plan
    is made and again at ``training_start`` of a run resumed from a planned
    checkpoint, so a resumed or replayed run follows the recorded plan and
    never measures again::

        loop = loop.add(time_budget(600.0))   # at most 10 minutes, at most loop.epochs epochs
        state = fit(state, loop)
        state.callbacks["time_budget"]        # the plan: {"max_time": 600.0, "cap": 3, "epochs": 3}
    """
    if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
            and seconds > 0):
        raise StateError(f"time_budget: seconds must be a number > 0, got {seconds!r}")
    watch = _Watch()

    def follow(state: TrainState, plan: dict) -> TrainState:
        state = state.replace(run=attrs.evolve(state.run, epochs=plan["epochs"]))
        return replan(state, plan["epochs"]) if replan is not None and plan["epochs"] != plan["cap"] else state

    def start(state: TrainState) -> TrainState:
        watch.start, watch.batch = time.perf_counter(), state.progress.batch
        plan = state.callbacks.get(name)
        return follow(state, plan) if plan else state

    def epoch_end(state: TrainState) -> TrainState:
        plan = state.callbacks.get(name)
        if not plan:
            batches = max(state.run.batches, 1)
            trained = max(batches - watch.batch, 1)  # a run resumed inside its first epoch trained fewer
            took = (time.perf_counter() - watch.start) * batches / trained
            stepping = min(state.clock.step * batches / trained, took)
            checking = min(state.clock.val, took - stepping) if validated is not None else 0.0
            # one plan for every rank: the slowest one's
            took, stepping, checking = (max(t) for t in zip(*distributed.gather_objects((took, stepping, checking))))
            cap = state.run.epochs
            plan = {"max_time": float(seconds), "cap": cap, "epochs": _epochs_that_fit(
                seconds, cap, took, stepping, None if cost is None else cost(state), checking, validated)}
            state = follow(_with_cb_state(state, name, plan), plan)
        done = state.progress.epoch
        if state.stop is None and plan["epochs"] < plan["cap"] and done >= plan["epochs"]:
            state = state.replace(stop=Stop(
                f"time budget: {plan['epochs']} of {plan['cap']} epochs planned to fit max_time "
                f"{plan['max_time']:g} s"))
        return state

    return (Callback("training_start", start, priority=-900, name=name),
            Callback("epoch_end", epoch_end, priority=priority, name=name))


def _epochs_that_fit(seconds: float, cap: int, took: float, stepping: float,
                     cost: Callable[[int, int], float] | None, checking: float = 0.0,
                     validated: Callable[[int, int], bool] | None = None) -> int:
    """The most epochs (1 to ``cap``) that fit ``seconds`` after a first epoch of ``took`` seconds, ``stepping``
    of them in steps and ``checking`` in validation: each later epoch takes ``LATER_EPOCHS`` times the
    first's, its steps scaled by ``cost(epoch, planned) / cost(0, 0)``, its validation counted only where
    ``validated(epoch, planned)`` (without ``validated``, every epoch validates as the first did)."""
    if took <= 0:
        return cap
    if cost is None and validated is None:
        return max(1, min(cap, int(seconds // (LATER_EPOCHS * took))))
    base = 1.0 if cost is None else cost(0, 0)
    rest = took - stepping - (checking if validated is not None else 0.0)

    def epoch(e: int, planned: int) -> float:
        steps = stepping if cost is None else stepping * cost(e, planned) / base
        return rest + steps + (checking if validated is not None and validated(e, planned) else 0.0)

    def fit(planned: int) -> bool:
        return LATER_EPOCHS * sum(epoch(e, planned) for e in range(planned)) <= seconds

    lo, hi = 1, cap  # a longer plan never takes less time: the most that fit, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fit(mid) else (lo, mid - 1)
    return lo
