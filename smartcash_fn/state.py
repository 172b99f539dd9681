"""The train state: one immutable record holding everything a run needs to continue.

A :class:`TrainState` is made once from a model, an optimizer and a seed, and
every step, epoch and callback returns a new one. Nothing reachable from a
state that user code has seen is ever written in place, so keeping an old
state (or the best params) is a reference, never a copy::

    state = TrainState.create(model, adamw(1e-3), seed=0)
    state = step(state, batch)          # a new state; the old one is intact
    state.progress.step, state.metrics["loss"]

The model and the optimizer ride along unserialized (like Flax's
``apply_fn`` and ``tx``): a checkpoint holds tensors and plain data only, and
is loaded into a template state built by the same code or recipe.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs
import torch
from torch import nn

from . import rng
from .errors import StateError

Tensors = Mapping[str, torch.Tensor]


def _transient(default: Any = None, **kw: Any) -> Any:
    """A field that rides along but is never written to a checkpoint."""
    return attrs.field(default=default, eq=False, repr=False, metadata={"transient": True}, **kw)


@attrs.frozen
class Progress:
    """Where a run stands: ``epoch`` in progress, ``step`` = batches trained in all, ``batch`` = inside the epoch.

    ``step`` counts calls of the step function (batches trained), advanced by
    the step itself; it is not the number of optimizer updates, which the
    optimizer counts (``opt_state["count"]``) and schedules read — with
    ``accumulate(4)`` there is one update per four steps. At an epoch
    boundary ``batch == 0`` and ``epoch`` counts the epochs done::

        Progress(epoch=2, step=640, batch=0)    # two epochs done, 640 batches trained
    """

    epoch: int = 0
    step: int = 0
    batch: int = 0


@attrs.frozen
class History:
    """Metric history: one mapping per finished epoch, and per step where a callback records it.

    ``history.series("val/loss")`` gives that metric over the epochs that have it.
    """

    epochs: tuple[Mapping[str, float], ...] = ()
    steps: tuple[Mapping[str, float], ...] = ()

    def series(self, name: str) -> list[float]:
        """The values of ``name`` over the epochs that recorded it, in order."""
        return [e[name] for e in self.epochs if name in e]

    def last(self) -> Mapping[str, float]:
        """The newest epoch's record, or an empty mapping before the first epoch ends."""
        return self.epochs[-1] if self.epochs else {}


@attrs.frozen
class Best:
    """The best params seen so far by a monitored metric, held by reference.

    ``epoch`` is the 0-based index of the epoch that produced them, as in the
    history's ``epoch`` field (it is saved in ``epoch-{epoch+1:04d}.pt``)::

        Best(monitor="val/loss", mode="min", value=0.12, epoch=3, step=400,
             params=state.params, buffers=state.buffers, metrics={...})
    """

    monitor: str
    mode: str
    value: float
    epoch: int
    step: int
    params: Tensors
    buffers: Tensors
    metrics: Mapping[str, float]


@attrs.frozen
class Stop:
    """Why a run stopped; ``failed`` marks a stop on error (the state may be unusable)."""

    reason: str
    failed: bool = False


@attrs.frozen
class RunInfo:
    """What the loop tells callbacks about the run in hand (transient): epochs planned, batches per epoch.

    ``RunInfo(epochs=10, batches=125, val_batches=8, batch_size=64)`` (``batch_size`` 0: unknown)
    """

    epochs: int = 0
    batches: int = 0
    val_batches: int = 0
    batch_size: int = 0


@attrs.frozen
class Clock:
    """Wall-clock seconds of the epoch in hand, measured by the loop (transient): where the time went.

    ``data``: waiting for batches; ``step``: inside the step function;
    ``val``: validation. Timings differ from run to run, so a clock is never
    written to a checkpoint nor compared by ``verify``; writers read it
    (``metrics.jsonl``'s ``"time"`` lines, the summary, the console)::

        Clock(data=3.0, step=1.5).data > Clock(data=3.0, step=1.5).step   # the loader is the bottleneck
    """

    data: float = 0.0
    step: float = 0.0
    val: float = 0.0


@attrs.frozen(eq=False)
class TrainState:
    """Everything a run needs to continue, and nothing else.

    A state compares and hashes by identity (``a == b`` is ``a is b``): its
    tensors have no single truth value. Compare contents with
    :func:`smartcash_fn.verify`, which names the first difference.

    Serialized fields: ``params``, ``buffers`` (name -> tensor), ``opt_state``
    (plain nested data of tensors), ``progress``, ``seed``, ``history``,
    ``metrics`` (the last step's loss and its parts), ``running`` (sums of the
    step metrics over the current epoch, so a mid-epoch resume reaches the same
    epoch means), ``extras`` (the state of step transformers: EMA params, the
    fp16 loss scale, accumulated gradients), ``callbacks`` (each callback's own
    state by name), ``best``, ``stop``, ``lr_scale`` (set by reduce-on-plateau)
``recipe`` (the resolved recipe when built from one) and ``data_info`` (plain facts about
    the data it was built for — class names, layers, image size — so a checkpoint alone rebuilds
    the model).

    Transient fields, never serialized: ``model`` (a template module used
    through ``torch.func.functional_call``), ``optimizer`` (an
    :class:`~smartcash_fn.optim.Optimizer`) and ``pending`` (events queued by
    callbacks, fired by the loop), ``run`` (:class:`RunInfo`, set by ``fit``) and ``clock``
    (:class:`Clock`, the epoch's timings, set by the loop)::

        state = TrainState.create(lambda: MyNet(), adamw(1e-3), seed=0)
        logits = state.apply(x)
        state = state.replace(lr_scale=0.5)
    """

    params: Tensors
    buffers: Tensors
    opt_state: Any
    progress: Progress = Progress()
    seed: int = 0
    history: History = History()
    metrics: Tensors = attrs.field(factory=dict)
    running: Tensors = attrs.field(factory=dict)
    extras: Mapping[str, Any] = attrs.field(factory=dict)
    callbacks: Mapping[str, Any] = attrs.field(factory=dict)
    best: Best | None = None
    stop: Stop | None = None
    lr_scale: float = 1.0
    recipe: Mapping[str, Any] | None = None
    data_info: Mapping[str, Any] = attrs.field(factory=dict)
    model: nn.Module | None = _transient()
    optimizer: Any = _transient()
    pending: tuple[str, ...] = _transient(default=())
    run: RunInfo = _transient(default=RunInfo())
    clock: Clock = _transient(default=Clock())

    @classmethod
    def create(
        cls,
        model: nn.Module | Callable[[], nn.Module],
        optimizer: Any,
        seed: int = 0,
        *,
        recipe: Mapping[str, Any] | None = None,
    ) -> "TrainState":
        """A fresh state at step 0.

        ``model`` is a module or a factory of one; a factory is called with
        torch's generator seeded from ``(seed, "init")`` (the CPU's, and each
        CUDA device's once CUDA is in use), so the initial weights are a
        function of the seed alone; the caller's generators are restored.
        ``optimizer`` is an :class:`~smartcash_fn.optim.Optimizer` (init/update pair).
        """
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise StateError(f"TrainState.create: seed must be an int, got {type(seed).__name__}")
        if not isinstance(model, nn.Module):
            if not callable(model):
                raise StateError(
                    f"TrainState.create: model must be an nn.Module or a factory returning one, "
                    f"got {type(model).__name__}"
                )
            cuda = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else ()
            with rng.seeded(seed, "init", devices=cuda):  # CUDA too where it is already in use
                model = model()
            if not isinstance(model, nn.Module):
                raise StateError(
                    f"TrainState.create: the model factory returned {type(model).__name__}, not an nn.Module"
                )
        if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
            raise StateError(
                "TrainState.create: optimizer must have init(params) and update(grads, opt_state, params, "
                f"lr_scale), got {type(optimizer).__name__}; use smartcash_fn.optim.adamw(...) or sgd(...)"
            )
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
        return cls(
            params=params,
            buffers=buffers,
            opt_state=optimizer.init(params),
            seed=seed,
            recipe=recipe,
            model=model,
            optimizer=optimizer,
        )

    def replace(self, **changes: Any) -> "TrainState":
        """A copy with ``changes`` applied (``attrs.evolve``); the original is untouched."""
        return attrs.evolve(self, **changes)

    def apply(self, *inputs: Any, params: Tensors | None = None, buffers: Tensors | None = None,
              train: bool = False) -> Any:
        """Run the template model with this state's params and buffers: inference, no gradient.

        The model runs in eval mode (dropout off, BatchNorm on its running
        statistics) unless ``train=True``; its mode is restored afterwards.
        ``state.apply(x)`` — pass ``params=state.extras["ema"]["params"]`` for the EMA weights.
        """
        if self.model is None:
            raise StateError("TrainState.apply: this state carries no model template; load it with like=...")
        buffers = buffers or self.buffers
        if train:  # training-mode BatchNorm writes its running statistics: give it copies
            buffers = {k: v.clone() for k, v in buffers.items()}
        was = self.model.training
        self.model.train(train)
        try:
            with torch.no_grad():
                return torch.func.functional_call(self.model, (params or self.params, buffers), inputs, strict=False)
        finally:
            self.model.train(was)

    @property
    def stopped(self) -> bool:
        """True once a callback (early stopping, NaN guard, ...) has asked the run to stop."""
        return self.stop is not None


def transient_fields() -> tuple[str, ...]:
    """Names of the fields a checkpoint leaves out."""
    return tuple(f.name for f in attrs.fields(TrainState) if f.metadata.get("transient"))
