"""Epochs and ``fit``: pure functions over batches, composed into a run.

A :class:`Loop` names what a run repeats — the step, the training data, the
number of epochs, the validation and the callbacks. :func:`fit` carries a
state through it; each epoch is ``toolz.pipe(state, start, train, validate,
end)``. A state at any point (an epoch boundary or mid-epoch) continues from
where it stands, skipping the batches it already trained on::

    loop = Loop(step=make_step(classification_loss), data=TensorData((x, y), 64), epochs=3,
                validation=Validation(TensorData((xv, yv), 256), classification_metrics()))
    state = fit(state, loop)
    state.history.last()["val/acc"]
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable, Mapping

import attrs
import toolz
import torch
import torch.nn.functional as F

from .data import as_data, epoch_data
from .errors import StateError
from .events import Callback, by_event, fire, flatten
from .state import Clock, History, Progress, RunInfo, TrainState
from .step import autocast_for
from .tree import tree_map

Apply = Callable[..., Any]


@attrs.frozen
class Evaluator:
    """How validation turns batches into metrics: ``init() -> acc``, ``update(acc, apply, batch) -> acc``, ``finish(acc) -> {name: float}``.

    ``merge(a, b) -> acc`` (optional) joins the accumulators of two
    consecutive parts of the data, so a data-parallel run can validate a
    shard per rank and finish on the merged whole
    (:func:`~smartcash_fn.distributed.sharded_validation`); without it every
    rank validates the whole set. :func:`per_sample` builds one from a
    function of per-sample values.
    """

    init: Callable[[], Any]
    update: Callable[[Any, Apply, Any], Any]
    finish: Callable[[Any], Mapping[str, float]]
    merge: Callable[[Any, Any], Any] | None = None


def per_sample(fn: Callable[[Apply, Any], Mapping[str, torch.Tensor]]) -> Evaluator:
    """An :class:`Evaluator` averaging per-sample values over the whole validation set.

    ``fn(apply, batch)`` returns ``{name: tensor of shape [batch]}``; the
    result is each name's mean over all samples (exact, not a mean of means)::

        per_sample(lambda apply, b: {"loss": F.cross_entropy(apply(b[0]), b[1], reduction="none")})
    """

    def update(acc: dict, apply: Apply, batch: Any) -> dict:
        values = fn(apply, batch)
        out = dict(acc)
        for k, v in values.items():
            v = v.detach().double()
            s, n = out.get(k, (0.0, 0))
            out[k] = (s + v.sum(), n + v.numel())
        return out

    def finish(acc: dict) -> dict[str, float]:
        return {k: float(s) / n for k, (s, n) in acc.items() if n}

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, (s, n) in b.items():
            s0, n0 = out.get(k, (0.0, 0))
            out[k] = (s0 + s, n0 + n)
        return out

    return Evaluator(init=dict, update=update, finish=finish, merge=merge)


def classification_metrics() -> Evaluator:
    """Validation loss (cross-entropy) and accuracy for a batch ``(x, y)`` of a classifier."""

    def fn(apply: Apply, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = apply(x)
        return {"loss": F.cross_entropy(logits, y, reduction="none"), "acc": (logits.argmax(-1) == y).float()}

    return per_sample(fn)


@attrs.frozen
class Validation:
    """Validation data and the evaluator run on it: every ``every``-th epoch, the first too with ``first``,
    and the last ``last`` epochs of the run; ``every = 0`` never validates.

    Metrics land in the epoch's history prefixed ``val/`` (``val/loss``); with
    ``use_ema`` the EMA params (``state.extras["ema"]``) are evaluated. With
    ``autocast`` (``torch.bfloat16`` or ``torch.float16``) the forward pass
    runs under autocast to it and the evaluator gets float32 outputs. ``last``
    counts from the end of the run as planned (``state.run.epochs``, which a
    time budget sets), so a run validates where its best epoch is likely to
    be without paying for every epoch before::

        Validation(val_data, detection_metrics(...), every=4, first=True, last=3)
        # 17 epochs: validates epochs 1, 4, 8, 12, 15, 16 and 17
    """

    data: Any = attrs.field(converter=as_data)
    evaluator: Evaluator = attrs.field(factory=classification_metrics)
    every: int = 1
    use_ema: bool = False
    first: bool = False
    last: int = 0
    autocast: torch.dtype | None = None

    def __attrs_post_init__(self) -> None:
        for key in ("every", "last"):
            n = getattr(self, key)
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise StateError(f"Validation: {key} must be an int >= 0, got {n!r}")
        if self.autocast not in (None, torch.bfloat16, torch.float16):
            raise StateError(f"Validation: autocast must be None, torch.bfloat16 or torch.float16, "
                             f"got {self.autocast!r}")

    def due(self, epoch: int, planned: int) -> bool:
        """Whether the 0-based ``epoch`` of a run of ``planned`` epochs is validated.

        ``Validation(data, every=4, last=2).due(15, 17)   # True: among the last two``
        """
        return self.every > 0 and ((epoch + 1) % self.every == 0 or (self.first and epoch == 0)
                                   or epoch >= planned - self.last)


@attrs.frozen
class Loop:
    """What a run repeats: ``step`` over ``data`` for ``epochs``, then ``validation``, with ``callbacks``.

    ``loop.add(cb, ...)`` returns a loop with more callbacks.
    """

    step: Callable[[TrainState, Any], TrainState]
    data: Any = attrs.field(converter=as_data)
    epochs: int = 1
    validation: Validation | None = None
    callbacks: tuple[Callback, ...] = attrs.field(default=(), converter=flatten)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 0:
            raise StateError(f"Loop: epochs must be an int >= 0, got {self.epochs!r}")
        if not callable(self.step):
            raise StateError(f"Loop: step must be callable (state, batch) -> state, got {type(self.step).__name__}")

    def add(self, *callbacks: Any) -> "Loop":
        """This loop with ``callbacks`` registered after the present ones."""
        return attrs.evolve(self, callbacks=self.callbacks + flatten(callbacks))


def _advance(before: TrainState, after: TrainState) -> TrainState:
    """Count one trained batch in the epoch and add its metrics to the epoch's running sums.

    The global ``progress.step`` is the step's to count (a :class:`~smartcash_fn.step.Step`
    does); for a plain ``(state, batch) -> state`` function that leaves it
    where it was, the loop counts it, so each batch is counted exactly once.
    """
    p = after.progress
    running = dict(after.running)
    for k, v in after.metrics.items():
        prev = running.get(k)
        running[k] = v if prev is None else prev + v
    step = p.step if p.step > before.progress.step else before.progress.step + 1
    return after.replace(progress=Progress(epoch=p.epoch, step=step, batch=before.progress.batch + 1),
                         running=running)


def train_epoch(state: TrainState, loop: Loop, table: Mapping, to_step: int | None = None) -> TrainState:
    """Train on the rest of the current epoch's batches, firing ``batch_end`` after each.

    Stops early when a callback stops the run or ``progress.step`` reaches ``to_step``.
    The batches come from ``epoch_data(loop.data, epoch, state.run.epochs)``: a
    :class:`~smartcash_fn.data.Finish` gives its last epochs from its other source, a
    :class:`~smartcash_fn.data.Start` its first.
    The seconds spent waiting for batches and inside the step are added to
    ``state.clock`` (transient: never saved, never compared).
    """
    if state.model is not None:
        state.model.train(True)
    p = state.progress
    if p.batch >= len(loop.data) or (to_step is not None and p.step >= to_step):
        return state
    step = loop.step
    has_batch_end = bool(table.get("batch_end"))
    clock = state.clock if p.batch > 0 else Clock()  # a new epoch starts a new clock
    waited = stepped = 0.0
    ready = time.perf_counter()
    data = epoch_data(loop.data, p.epoch, state.run.epochs)  # Finish's last, Start's first epochs: another source
    for batch in data.batches(state.seed, p.epoch, p.batch):
        got = time.perf_counter()
        after = step(state, batch)
        done = time.perf_counter()
        waited, stepped = waited + (got - ready), stepped + (done - got)
        state = _advance(state, after)
        if has_batch_end:
            state = fire(state, "batch_end", table)
        ready = time.perf_counter()
        if state.stop is not None or (to_step is not None and state.progress.step >= to_step):
            break
    return state.replace(clock=attrs.evolve(clock, data=clock.data + waited, step=clock.step + stepped))


def epoch_done(state: TrainState, loop: Loop) -> bool:
    """Whether every batch of the current epoch has been trained."""
    return state.progress.batch >= len(loop.data)


def validate(state: TrainState, validation: Validation) -> dict[str, float]:
    """Run the evaluator over the validation data (eval mode, no gradient); metrics prefixed ``val/``."""
    if state.model is None:
        raise StateError("validate: the state carries no model template")
    params, buffers = state.params, state.buffers
    if validation.use_ema and "ema" in state.extras:
        params, buffers = state.extras["ema"]["params"], state.extras["ema"]["buffers"]
    apply = partial(state.apply, params=params, buffers=buffers)  # eval mode, no gradient, mode restored
    if validation.autocast is not None:
        apply = partial(_in_float32, apply, autocast_for(state, validation.autocast))
    ev = validation.evaluator
    acc = ev.init()
    with torch.no_grad():
        for batch in validation.data.batches(state.seed, 0, 0):
            acc = ev.update(acc, apply, batch)
    return {f"val/{k}": float(v) for k, v in ev.finish(acc).items()}


def _in_float32(apply: Apply, autocast: torch.autocast, *args: Any, **kwargs: Any) -> Any:
    """``apply``'s outputs computed under ``autocast``, their floating tensors made float32."""
    with autocast:
        out = apply(*args, **kwargs)
    return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, out)


def _epoch_record(state: TrainState, val: Mapping[str, float]) -> dict[str, float]:
    p = state.progress
    n = max(p.batch, 1)
    record: dict[str, float] = {"epoch": p.epoch, "step": p.step}
    for k, v in state.running.items():
        record[f"train/{k}"] = float(v) / n
    lrs = getattr(state.optimizer, "lrs", None)
    if lrs is not None:
        for label, lr in lrs(state.opt_state, state.lr_scale).items():
            record["lr" if label == "" else f"lr/{label}"] = float(lr)
    record.update(val)
    return record


def finish_epoch(state: TrainState, loop: Loop, table: Mapping) -> TrainState:
    """Validate (when due), record the epoch in the history, fire ``validation_end`` and ``epoch_end``.

    The history entry is appended before ``validation_end`` so callbacks there
    see the full record; ``progress`` moves to the next epoch before ``epoch_end``.
    """
    v = loop.validation
    due = v is not None and v.due(state.progress.epoch, state.run.epochs)
    start = time.perf_counter()
    val = validate(state, v) if due else {}
    record = _epoch_record(state, val)
    state = state.replace(history=History(epochs=state.history.epochs + (record,), steps=state.history.steps),
                          clock=attrs.evolve(state.clock, val=time.perf_counter() - start))
    if due:
        state = fire(state, "validation_end", table)
    p = state.progress
    state = state.replace(progress=Progress(epoch=p.epoch + 1, step=p.step, batch=0), running={})
    return fire(state, "epoch_end", table)


def _check_state(state: TrainState) -> None:
    if not isinstance(state, TrainState):
        raise StateError(f"fit: expected a TrainState, got {type(state).__name__}")
    if state.model is None or state.optimizer is None:
        raise StateError("fit: the state has no model or optimizer; load a checkpoint with like=<a template state>")


def fit(state: TrainState, loop: Loop, *, to_step: int | None = None) -> TrainState:
    """Train ``state`` through ``loop`` until ``loop.epochs`` are done, a callback stops it, or ``to_step``.

    Fires ``training_start`` first and ``training_end`` last (also on a stop).
    With ``to_step`` the run halts after that step's ``batch_end`` — or, when
    that step ends its epoch, after the epoch's end — and skips ``training_end``::

        state = fit(state, loop)
        state.history.last()["val/acc"], state.stop
    """
    _check_state(state)
    table = by_event(loop.callbacks)
    v = loop.validation
    state = state.replace(run=RunInfo(epochs=loop.epochs, batches=len(loop.data),
                                      val_batches=0 if v is None else len(v.data),
                                      batch_size=int(getattr(loop.data, "batch_size", 0) or 0)))
    state = fire(state, "training_start", table)

    def reached(s: TrainState) -> bool:
        return to_step is not None and s.progress.step >= to_step and not epoch_done(s, loop)

    def one_epoch(s: TrainState) -> TrainState:
        return toolz.pipe(
            s,
            lambda s: fire(s, "epoch_start", table) if s.progress.batch == 0 else s,
            lambda s: train_epoch(s, loop, table, to_step),
            lambda s: finish_epoch(s, loop, table) if epoch_done(s, loop) and not _failed(s) else s,
        )

    while state.progress.epoch < loop.epochs and state.stop is None and not reached(state):
        if to_step is not None and state.progress.step >= to_step and state.progress.batch == 0:
            break
        state = one_epoch(state)
    if to_step is None or state.stop is not None:
        state = fire(state, "training_end", table)
    return state


def _failed(state: TrainState) -> bool:
    return state.stop is not None and state.stop.failed

