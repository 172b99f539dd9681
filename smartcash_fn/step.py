"""Pure training steps and the transformers that compose them.

A step is ``(state, batch) -> state``. :func:`make_step` builds one from a
loss function ``loss_fn(apply, batch) -> loss`` or ``-> (loss, parts)``,
where ``apply(*inputs)`` runs the model with the state's params through
``torch.func.functional_call``::

    step = toolz.compose(accumulate(4), clip(10.0), ema(0.999))(make_step(loss_fn))
    state = step(state, batch)
    state.progress.step, state.metrics["loss"]      # grad_norm too, once accumulate(4) updates

**Counting.** One call of a step trains on one batch and advances
``progress.step`` by one: ``progress.step`` counts *batches trained* (step
calls), whatever the transformers do. Optimizer *updates* are counted by
the optimizer (``state.opt_state["count"]``); with ``accumulate(4)`` there
is one update per four steps, and a schedule's argument is the update count.

**Randomness.** Every random draw inside a step — dropout, stochastic depth,
``torch.rand`` or ``randperm`` in a model, a transformer's own noise — comes
from torch's global generators seeded from ``(seed, "dropout",
progress.step)`` (the CPU one and that of each CUDA device the params live
on); the caller's generators are restored afterwards. A hand-written loop of
step calls is therefore as deterministic as ``fit``.

**Phases.** The step is a :class:`Step` record of three phases, so a
transformer (``Step -> Step``) wraps exactly the phase it changes:

1. ``forward(state, params, batch) -> (loss, metrics, buffers)`` — the loss
   (autocast lives here: ``bf16``, ``fp16``);
2. ``backward(state, loss, leaves) -> grads`` — the gradients (loss scaling,
   the data-parallel all-reduce, which returns ``(state, grads)``);
3. ``update(state, grads) -> state`` — applies them (``accumulate``,
   ``clip``, ``ema``, ``fp16``'s unscale-and-skip).

**Order.** ``toolz.compose(a, b)(base)`` makes ``a`` the outermost wrapper.
Effects *before* a phase run outermost-first: in ``compose(accumulate(4),
clip(10.0))`` the gradients are summed over four batches, then their mean is
clipped. Effects *after* the inner update run innermost-first: in
``compose(ema(0.999), lookahead)`` (a lookahead of your own) the lookahead adjusts the params first and
``ema``, listed before it, averages what the lookahead left. An update that
was skipped (accumulating, an fp16 overflow) returns the state's params
unchanged — test it with :func:`skipped`. A transformer that keeps state in
``state.extras`` takes a key with :func:`claim`, so two instances never share
one (``ema``, then ``ema-2``, innermost first).

A plain function ``(state, batch) -> state`` is a step too; the loop needs
nothing more (it counts the batch when such a function does not).
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable

import attrs
import torch
import torch.nn.functional as F

from . import distributed, rng
from .errors import StateError
from .state import TrainState, Tensors

Batch = Any
LossFn = Callable[[Callable[..., Any], Batch], Any]
Forward = Callable[[TrainState, Tensors, Batch], "tuple[torch.Tensor, dict[str, torch.Tensor], Tensors]"]
Backward = Callable[[TrainState, torch.Tensor, Tensors], Tensors]
Update = Callable[[TrainState, Tensors], TrainState]


RANDOM_PURPOSE = "dropout"
"""The purpose naming the random stream of a step: ``(seed, RANDOM_PURPOSE, progress.step)``.

Named after its first use; kept so runs written before every draw was seeded replay the same.
"""


@attrs.frozen
class Step:
    """A training step split into phases; calling it runs ``forward``, ``backward``, ``update``.

    - ``forward(state, params, batch) -> (loss, metrics, buffers)``: the loss,
      its parts (detached) and the buffers after the forward pass;
    - ``backward(state, loss, leaves) -> grads``: gradients of ``loss`` with
      respect to the trainable ``leaves`` (name -> tensor requiring grad);
      ``state`` holds the forward pass's metrics and buffers. A backward that
      changes the state as well returns ``(state, grads)`` (the overlapped
      :func:`~smartcash_fn.distributed.all_reduce_gradients` averages the
      metrics there); a wrapper around a backward passes its result on as is;
    - ``update(state, grads) -> state``: applies the gradients.

    ``claims`` lists the ``state.extras`` keys the transformers took
    (:func:`claim`); ``seeded`` (default on) runs the phases with the global
    generators seeded from ``(seed, RANDOM_PURPOSE, progress.step)``.
    ``step(state, batch)`` returns a new state whose ``metrics`` hold the loss
    and its parts and whose ``progress.step`` is one more::

        new = step(state, batch)
        new.progress.step == state.progress.step + 1
    """

    forward: Forward
    backward: Backward
    update: Update
    claims: tuple[str, ...] = ()
    seeded: bool = True

    def __call__(self, state: TrainState, batch: Batch) -> TrainState:
        p = state.progress
        if self.seeded:
            devices = {t.device for t in state.params.values()}
            with rng.seeded(state.seed, RANDOM_PURPOSE, p.step, devices=devices):
                new = self._phases(state, batch)
        else:
            new = self._phases(state, batch)
        return new.replace(progress=attrs.evolve(new.progress, step=p.step + 1))

    def _phases(self, state: TrainState, batch: Batch) -> TrainState:
        trains = _trainable(state)
        leaves = {k: state.params[k].detach().requires_grad_(True) for k in trains}
        params = {**state.params, **leaves} if len(leaves) < len(state.params) else leaves
        loss, metrics, buffers = self.forward(state, params, batch)
        after = state.replace(buffers=buffers, metrics=metrics)
        grads = self.backward(after, loss, leaves)
        if type(grads) is tuple:  # a backward that changed the state too (the overlapped all-reduce)
            after, grads = grads
        return self.update(after, grads)


def skipped(new: TrainState, old: TrainState) -> bool:
    """Whether the update from ``old`` to ``new`` left the params alone (accumulating, an fp16 overflow).

    An update phase that applies nothing returns the params mapping it was
    given, so this is an identity test, free of any tensor work::

        def update(state, grads):
            new = inner.update(state, grads)
            if skipped(new, state):
                return new                  # nothing was applied: nothing to follow up
            return new.replace(extras={**new.extras, "updates": new.extras.get("updates", 0) + 1})
    """
    return new.params is old.params


def claim(step: Step, name: str) -> tuple[str, Step]:
    """A ``state.extras`` key of its own for a transformer about to wrap ``step``, and ``step`` noting it.

    The key is ``name`` when no transformer inside has taken it, else
    ``name-2``, ``name-3``, ... — decided by composition order (innermost
    first), so it is the same in every run of one recipe::

        def transform(inner):
            key, inner = claim(inner, "ema")     # "ema", or "ema-2" under another ema
    """
    key, n = name, 1
    while key in step.claims:
        n += 1
        key = f"{name}-{n}"
    return key, attrs.evolve(step, claims=step.claims + (key,))


_TRAINABLE_CACHE: dict[int, tuple[Callable[[], Any], tuple[str, ...], Any, tuple[str, ...]]] = {}


def _ref(obj: Any) -> Callable[[], Any]:
    """A weak reference to ``obj`` where it allows one, else a strong one (called the same way)."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _trainable(state: TrainState) -> tuple[str, ...]:
    """Names of the params the optimizer trains, in params order (cached per optimizer and name set).

    The cache is keyed by ``id``, which Python reuses once an object is freed,
    so each entry also holds a reference that must still name this optimizer.
    """
    opt = state.optimizer
    if opt is None:
        raise StateError("step: the state carries no optimizer; build it with TrainState.create or load(..., like=)")
    names = tuple(state.params)
    trains_in = getattr(opt, "trains_in", None)  # an optimizer whose trained set changes with its state
    trains = trains_in(state.opt_state) if trains_in is not None else getattr(opt, "trains", lambda _: True)
    hit = _TRAINABLE_CACHE.get(id(opt))
    if hit is not None and hit[0]() is opt and hit[1] == names and hit[2] is trains:
        return hit[3]
    chosen = tuple(k for k in names if trains(k))
    if len(_TRAINABLE_CACHE) > 256:
        _TRAINABLE_CACHE.clear()
    _TRAINABLE_CACHE[id(opt)] = (_ref(opt), names, trains, chosen)
    return chosen


def make_step(loss_fn: LossFn, *, seeded: bool = True) -> Step:
    """A :class:`Step` training ``state.model`` on ``loss_fn(apply, batch)``.

    ``loss_fn`` returns the scalar loss or ``(loss, {"part": tensor, ...})``;
    the parts are recorded (detached) in ``state.metrics`` beside ``"loss"``.
    Buffers (BatchNorm statistics) are updated on fresh copies, never in place.
    ``seeded`` (on by default; it costs a few microseconds a step) makes every
    random draw in the step a function of ``(seed, progress.step)``::

        def loss_fn(apply, batch):
            x, y = batch
            return F.cross_entropy(apply(x), y)
        step = make_step(loss_fn)
    """

    def forward(state: TrainState, params: Tensors, batch: Batch):
        model = state.model
        if model is None:
            raise StateError("step: the state carries no model template; build it with TrainState.create")
        buffers = {k: v.clone() for k, v in state.buffers.items()} if state.buffers else state.buffers

        def apply(*inputs: Any) -> Any:
            return torch.func.functional_call(model, (params, buffers), inputs, strict=False, tie_weights=False)

        out = loss_fn(apply, batch)
        loss, parts = out if isinstance(out, tuple) else (out, {})
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise StateError(
                f"step: the loss function must return a scalar tensor (or (loss, parts)), got "
                f"{type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else ' of shape ' + str(tuple(loss.shape))}"
            )
        metrics = {"loss": loss.detach()}
        for k, v in parts.items():
            metrics[k] = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
        return loss, metrics, buffers

    return Step(forward=forward, backward=autograd_backward, update=optimizer_update, seeded=seeded)


def autograd_backward(state: TrainState, loss: torch.Tensor, leaves: Tensors) -> Tensors:
    """Gradients of ``loss`` w.r.t. ``leaves`` by ``torch.autograd.grad``; unused leaves get zeros."""
    if not leaves:
        return {}
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
    return {k: (torch.zeros_like(leaves[k]) if g is None else g) for k, g in zip(names, grads)}


def optimizer_update(state: TrainState, grads: Tensors) -> TrainState:
    """Apply ``grads`` with ``state.optimizer`` (scaled by ``state.lr_scale``)."""
    params, opt_state = state.optimizer.update(grads, state.opt_state, state.params, state.lr_scale)
    return state.replace(params=params, opt_state=opt_state)


def late_switch(early: Step, late: Step, start: float) -> Step:
    """``early`` for the first ``start`` share of a run's planned epochs, ``late`` from there on.

    Made for two steps of :func:`make_step` over two losses (the same loss
    with other weights for the later part of a run: ``train.late_loss_params``),
    so only the forward pass is chosen; backward and update are ``early``'s.
    Epoch ``e`` (0-based, ``state.progress.epoch``) is late when
    ``e >= start * state.run.epochs``: a pure function of the state, and
    ``run.epochs`` is the plan where a time budget made one (before it, the
    loop's epochs), so a resumed or replayed run switches where the run that
    never stopped did::

        step = late_switch(make_step(weighted(cls=3.0)), make_step(weighted(cls=1.0)), start=0.5)
        # epochs 0-2 of a 6-epoch run on the first loss, 3-5 on the second
    """
    if not (isinstance(start, (int, float)) and not isinstance(start, bool) and 0 <= start <= 1):
        raise StateError(f"late_switch: start must be a number in [0, 1], got {start!r}")

    def forward(state: TrainState, params: Tensors, batch: Batch) -> tuple[torch.Tensor, Tensors, Tensors]:
        chosen = late if state.progress.epoch >= start * state.run.epochs else early
        return chosen.forward(state, params, batch)

    return attrs.evolve(early, forward=forward)


def classification_loss(apply: Callable[..., Any], batch: Batch) -> torch.Tensor:
    """Cross-entropy of ``apply(x)`` against ``y`` for a batch ``(x, y)``: the default for classifiers."""
    x, y = batch
    return F.cross_entropy(apply(x), y)


# --------------------------------------------------------------------------- transformers


def _tensors(grads: Tensors) -> tuple[list[str], list[torch.Tensor]]:
    names = list(grads)
    return names, [grads[k] for k in names]


def clip(max_norm: float, norm_type: float = 2.0) -> Callable[[Step], Step]:
    """Clip the gradients to a total ``norm_type`` norm of ``max_norm`` before the update.

    The pre-clip norm is recorded as ``metrics["grad_norm"]``. Same rule as
    ``torch.nn.utils.clip_grad_norm_``, out of place::

        step = clip(10.0)(make_step(loss_fn))
    """
    if not max_norm > 0:
        raise StateError(f"clip: max_norm must be > 0, got {max_norm}")

    def transform(inner: Step) -> Step:
        def update(state: TrainState, grads: Tensors) -> TrainState:
            if not grads:
                return inner.update(state, grads)
            names, gs = _tensors(grads)
            norms = torch._foreach_norm(gs, norm_type)
            total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            clipped = dict(zip(names, torch._foreach_mul(gs, coef)))
            state = state.replace(metrics={**state.metrics, "grad_norm": total.detach()})
            return inner.update(state, clipped)

        return attrs.evolve(inner, update=update)

    return transform


def accumulate(every: int) -> Callable[[Step], Step]:
    """Average the gradients of ``every`` consecutive batches, then update once.

    The running sum and its count live in ``state.extras["accumulate"]``, so
    a checkpoint taken between updates resumes exactly. Under a process group
    the phases inside see ``state.extras[distributed.ACCUMULATING]``: a
    gradient all-reduce there waits for the update and reduces the mean once,
    as ``DistributedDataParallel.no_sync`` does for all but the last batch::

        step = accumulate(4)(make_step(loss_fn))     # an update every 4 batches
    """
    if not isinstance(every, int) or every < 1:
        raise StateError(f"accumulate: every must be an int >= 1, got {every!r}")
    if every == 1:
        return lambda inner: inner

    def transform(inner: Step) -> Step:
        key, inner = claim(inner, "accumulate")

        def backward(state: TrainState, loss: torch.Tensor, leaves: Tensors) -> Any:
            if not distributed.active():
                return inner.backward(state, loss, leaves)
            out = inner.backward(distributed.accumulating(state), loss, leaves)
            return (distributed.accumulating(out[0], False), out[1]) if type(out) is tuple else out

        def update(state: TrainState, grads: Tensors) -> TrainState:
            acc = state.extras.get(key)
            names, gs = _tensors(grads)
            if acc is None:
                total, count = gs, 1
            else:
                total = torch._foreach_add([acc["sum"][k] for k in names], gs)
                count = acc["count"] + 1
            if count < every:
                extras = {**state.extras, key: {"sum": dict(zip(names, total)), "count": count}}
                return state.replace(extras=extras)
            extras = {k: v for k, v in state.extras.items() if k != key}
            mean = dict(zip(names, torch._foreach_div(total, float(every))))
            if not distributed.active():
                return inner.update(state.replace(extras=extras), mean)
            new = inner.update(distributed.accumulating(state.replace(extras=extras)), mean)
            return distributed.accumulating(new, False)

        return attrs.evolve(inner, backward=backward, update=update)

    return transform


def ema(decay: float, every: int = 1, warmup: float = 0.0) -> Callable[[Step], Step]:
    """Keep an exponential moving average of the params in ``state.extras["ema"]``.

    A second ``ema`` in one composition keeps its average under ``"ema-2"``
    (the innermost one has ``"ema"``; see :func:`claim`).

    After each update ``ema = ema + (1 - d) * (params - ema)``; buffers are
    copied by reference. ``d`` is ``decay``, or with ``warmup > 0``
    ``decay · (1 − exp(−n / warmup))`` at the average's ``n``-th update: early
    on, when the params move fast, the average follows them closely, and it
    reaches the full ``decay`` after a few ``warmup`` updates (a short run then
    gains from an average that a fixed 0.999 would still weigh towards the
    random init). Evaluate with ``state.apply(x, params=state.extras["ema"]["params"])``::

        step = ema(0.999)(make_step(loss_fn))
        step = ema(0.9999, warmup=2000)(make_step(loss_fn))
    """
    if not 0.0 <= decay < 1.0:
        raise StateError(f"ema: decay must be in [0, 1), got {decay}")
    if not (isinstance(warmup, (int, float)) and not isinstance(warmup, bool) and warmup >= 0):
        raise StateError(f"ema: warmup must be a number of updates >= 0, got {warmup!r}")

    def transform(inner: Step) -> Step:
        key, inner = claim(inner, "ema")

        def update(state: TrainState, grads: Tensors) -> TrainState:
            new = inner.update(state, grads)
            if skipped(new, state):
                return new
            prev = new.extras.get(key)
            if prev is None:
                avg, count = dict(new.params), 1
            else:
                count = prev["count"] + 1
                if count % every:
                    return new.replace(extras={**new.extras, key: {**prev, "count": count}})
                names = list(new.params)
                d = decay * (1.0 - math.exp(-count / warmup)) if warmup else decay
                avg = dict(zip(names, torch._foreach_lerp(
                    [prev["params"][k] for k in names], [new.params[k] for k in names], 1.0 - d)))
            entry = {"params": avg, "buffers": dict(new.buffers), "count": count}
            return new.replace(extras={**new.extras, key: entry})

        return attrs.evolve(inner, update=update)

    return transform


def autocast_for(state: TrainState, dtype: torch.dtype) -> torch.autocast:
    """Autocast to ``dtype`` on the device of ``state``'s params: ``with autocast_for(state, torch.bfloat16): ...``"""
    device = next(iter(state.params.values())).device.type if state.params else "cpu"
    return torch.autocast(device_type=device, dtype=dtype)


def bf16() -> Callable[[Step], Step]:
    """Run the forward pass under bfloat16 autocast; params and updates stay float32.

    ``step = bf16()(make_step(loss_fn))``
    """

    def transform(inner: Step) -> Step:
        def forward(state: TrainState, params: Tensors, batch: Batch):
            with autocast_for(state, torch.bfloat16):
                loss, metrics, buffers = inner.forward(state, params, batch)
            return loss.float(), metrics, buffers

        return attrs.evolve(inner, forward=forward)

    return transform


def fp16(init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
         growth_interval: int = 2000) -> Callable[[Step], Step]:
    """Float16 autocast with dynamic loss scaling; the scale lives in ``state.extras["loss_scale"]``.

    The loss is multiplied by the scale before the backward pass and the
    gradients divided by it before the update. A step whose gradients hold
    Inf/NaN is skipped (``metrics["skipped"] == 1``) and the scale shrinks by
    ``backoff_factor``; after ``growth_interval`` good steps it grows by
    ``growth_factor`` — the rule of ``torch.amp.GradScaler``::

        step = fp16()(make_step(loss_fn))
    """
    if not (growth_factor > 1.0 and 0.0 < backoff_factor < 1.0 and growth_interval >= 1 and init_scale > 0):
        raise StateError(
            "fp16: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1; got "
            f"init_scale={init_scale!r}, growth_factor={growth_factor!r}, backoff_factor={backoff_factor!r}, "
            f"growth_interval={growth_interval!r}")

    def transform(inner: Step) -> Step:
        key, inner = claim(inner, "loss_scale")

        def scale_of(state: TrainState) -> dict:
            return state.extras.get(key) or {"scale": float(init_scale), "good_steps": 0}

        def forward(state: TrainState, params: Tensors, batch: Batch):
            with autocast_for(state, torch.float16):
                loss, metrics, buffers = inner.forward(state, params, batch)
            return loss.float(), metrics, buffers

        def backward(state: TrainState, loss: torch.Tensor, leaves: Tensors) -> Tensors:
            return inner.backward(state, loss * scale_of(state)["scale"], leaves)

        def update(state: TrainState, grads: Tensors) -> TrainState:
            sc = scale_of(state)
            names, gs = _tensors(grads)
            unscaled = torch._foreach_mul(gs, 1.0 / sc["scale"]) if gs else []
            finite = bool(torch.stack([torch.isfinite(g).all() for g in unscaled]).all()) if gs else True
            finite = not distributed.any_rank(not finite)  # every rank skips the same updates
            if not finite:
                new_sc = {"scale": sc["scale"] * backoff_factor, "good_steps": 0}
                metrics = {**state.metrics, "skipped": torch.tensor(1.0)}
                return state.replace(extras={**state.extras, key: new_sc}, metrics=metrics)
            good = sc["good_steps"] + 1
            new_sc = ({"scale": sc["scale"] * growth_factor, "good_steps": 0} if good >= growth_interval
                      else {"scale": sc["scale"], "good_steps": good})
            state = state.replace(extras={**state.extras, key: new_sc},
                                  metrics={**state.metrics, "skipped": torch.tensor(0.0)})
            return inner.update(state, dict(zip(names, unscaled)))

        return attrs.evolve(inner, forward=forward, backward=backward, update=update)

    return transform
