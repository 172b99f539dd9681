"""Optimizers as pairs of pure functions over named tensors, in the manner of optax.

An :class:`Optimizer` is a frozen record of ``init(params) -> opt_state`` and
``update(grads, opt_state, params, lr_scale=1.0) -> (new_params, new_opt_state)``
plus ``trains(name)``, which says whether a param gets a gradient at all::

    opt = adamw(warmup_cosine(1e-3, warmup_steps=100, total_steps=10_000))
    opt_state = opt.init(params)
    params, opt_state = opt.update(grads, opt_state, params)

Rules every optimizer here keeps:

- **Pure.** No tensor handed in (params, grads, anything inside ``opt_state``)
  is written in place; the results are new tensors and new dicts. Params
  without a gradient come back as the very same tensor objects. Updates run
  under ``torch.no_grad``: new tensors do not require grad.
- **Plain state.** ``opt_state`` is nested dicts of tensors and Python
  numbers, e.g. ``{"count": 7, "exp_avg": {name: T}, "exp_avg_sq": {name: T}}``,
  so ``torch.save`` / ``torch.load(weights_only=True)`` round-trip it.
- **Scheduled lr.** ``lr`` is a float or a schedule (``count -> lr``, see
  :mod:`smartcash_fn.schedule`). Update number ``k`` (``k`` = ``count``, the
  number of updates already applied) uses ``schedule(k) * lr_scale``;
  ``lr_scale`` is how a reduce-on-plateau callback lowers the rate.
- **torch's bits.** :func:`sgd`, :func:`adam` and :func:`adamw` perform the
  same floating-point operations in the same order as ``torch.optim.SGD``,
  ``Adam`` and ``AdamW`` (non-fused, non-capturable) and give bit-identical
  params and moments on CPU. Like torch's foreach path they work on lists of
  tensors with ``torch._foreach_*`` kernels; only the out-of-place variants
  touch tensors that came in.

One difference from torch: the Adam step counter is the optimizer's single
``count``, where torch keeps one per param and skips it for a param that got
no gradient. The two agree whenever every trained param gets a gradient at
every update (use :func:`frozen` in a :func:`multi_transform` for params that
never train).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from .errors import ArgumentError
from .schedule import Schedule, constant, is_real

__all__ = [
    "OptState",
    "Optimizer",
    "PrefixLabels",
    "sgd",
    "adam",
    "adamw",
    "frozen",
    "multi_transform",
    "label_by_prefix",
    "switch",
]

Tensors = Mapping[str, Tensor]
OptState = Any
"""Plain data: nested dicts / lists / tuples of tensors, ints, floats, strs, bools, None."""


def _always_trains(name: str) -> bool:
    return True


def _never_trains(name: str) -> bool:
    return False


@attrs.frozen
class Optimizer:
    """An optimizer: ``init`` makes the state, ``update`` applies one step of gradients.

    ``trains(name)`` tells the step which params need a gradient (``frozen()``
    says none do); ``lrs(opt_state, lr_scale)`` gives the learning rate the
    next update will use, by group label (``""`` for a single optimizer) — the
    loop records it in the history; ``lrs_at(count, lr_scale)`` the rates
    update number ``count`` uses, a pure function of the count (how the
    learning-rate plot draws every update of a run). Build one with a factory
    rather than by hand::

        opt = sgd(0.1, momentum=0.9)
        state = opt.init(params)
        params, state = opt.update(grads, state, params)
        opt.lrs(state, 1.0)        # {"": 0.1}
        opt.lrs_at(0, 1.0)         # {"": 0.1}: the rate of the first update
    """

    init: Callable[[Tensors], OptState]
    update: Callable[..., tuple[dict[str, Tensor], OptState]]
    trains: Callable[[str], bool] = _always_trains
    lrs: Callable[[OptState, float], dict[str, float]] = lambda opt_state, lr_scale: {}
    lrs_at: Callable[[int, float], dict[str, float]] = lambda count, lr_scale=1.0: {}
    trains_in: Callable[[OptState], Callable[[str], bool]] | None = None
    """For an optimizer whose trained set changes as it runs (:func:`switch`): the ``trains``
    predicate in force for the next update, given the state (the same object while it holds)."""


def _next_lrs(schedule: Schedule) -> Callable[[OptState, float], dict[str, float]]:
    """``lrs`` of a single optimizer: ``schedule(count) * lr_scale`` under the label ``""``."""
    return lambda opt_state, lr_scale=1.0: {"": float(schedule(opt_state["count"])) * lr_scale}


def _lrs_at(schedule: Schedule) -> Callable[[int, float], dict[str, float]]:
    """``lrs_at`` of a single optimizer: ``schedule(count) * lr_scale`` under the label ``""``."""
    return lambda count, lr_scale=1.0: {"": float(schedule(count)) * lr_scale}


# --------------------------------------------------------------------------
# argument checks


def _check_at_least_zero(where: str, name: str, value: object) -> float:
    if not (is_real(value) and math.isfinite(value) and value >= 0):
        raise ArgumentError(f"{where}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_beta(where: str, name: str, value: object) -> float:
    if not (is_real(value) and 0.0 <= value < 1.0):
        raise ArgumentError(f"{where}: {name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _as_schedule(where: str, lr: float | Schedule) -> Schedule:
    if callable(lr):
        return lr
    if not (is_real(lr) and math.isfinite(lr) and lr >= 0):
        raise ArgumentError(f"{where}: lr must be a finite number >= 0 or a schedule (count -> lr), got {lr!r}")
    return constant(float(lr))


def _names_with_grads(where: str, grads: Tensors, params: Tensors) -> list[str]:
    """Names that have a gradient, in params order; a gradient for an unknown name is an error."""
    names = [name for name in params if name in grads]
    if len(names) != len(grads):
        unknown = sorted(name for name in grads if name not in params)
        raise ArgumentError(f"{where}: gradients for names that are not params: {unknown}")
    return names


def _pick(where: str, state: Mapping[str, Tensor], key: str, names: list[str]) -> list[Tensor]:
    try:
        return [state[name] for name in names]
    except KeyError as missing:
        raise ArgumentError(
            f"{where}: opt_state[{key!r}] has no entry for param {missing.args[0]!r}; "
            "was the state made by init() on the same params?"
        ) from None


# --------------------------------------------------------------------------
# SGD


def sgd(
    lr: float | Schedule,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    Bit-identical to ``torch.optim.SGD`` on CPU. State:
    ``{"count": int, "momentum_buffer": {name: T}}`` (no buffers without
    momentum); a param's buffer starts as a copy of its first gradient::

        opt = sgd(0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        params, state = opt.update(grads, opt.init(params), params)
    """
    where = "sgd"
    schedule = _as_schedule(where, lr)
    momentum = _check_at_least_zero(where, "momentum", momentum)
    dampening = _check_at_least_zero(where, "dampening", dampening)
    weight_decay = _check_at_least_zero(where, "weight_decay", weight_decay)
    if not isinstance(nesterov, bool):
        raise ArgumentError(f"{where}: nesterov must be a bool, got {nesterov!r}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ArgumentError(
            f"{where}: nesterov=True needs momentum > 0 and dampening == 0, "
            f"got momentum={momentum!r}, dampening={dampening!r}"
        )

    def init(params: Tensors) -> OptState:
        return {"count": 0, "momentum_buffer": {}} if momentum != 0 else {"count": 0}

    def update(
        grads: Tensors, opt_state: OptState, params: Tensors, lr_scale: float = 1.0
    ) -> tuple[dict[str, Tensor], OptState]:
        count = opt_state["count"]
        step_lr = schedule(count) * lr_scale
        names = _names_with_grads(where, grads, params)
        new_params = dict(params)
        new_state: dict[str, Any] = {"count": count + 1}
        if momentum != 0:
            new_state["momentum_buffer"] = buffers = dict(opt_state["momentum_buffer"])
        if not names:
            return new_params, new_state

        p = [params[name] for name in names]
        g = [grads[name] for name in names]
        with torch.no_grad():
            if weight_decay != 0:
                g = torch._foreach_add(g, p, alpha=weight_decay)
            if momentum != 0:
                old = opt_state["momentum_buffer"]
                if all(name in old for name in names):
                    bufs = torch._foreach_mul([old[name] for name in names], momentum)
                    torch._foreach_add_(bufs, g, alpha=1 - dampening)
                else:  # first update of some params: their buffer is a copy of the gradient
                    bufs = [
                        old[name].mul(momentum).add_(gi, alpha=1 - dampening) if name in old else gi.clone()
                        for name, gi in zip(names, g)
                    ]
                buffers.update(zip(names, bufs))
                g = torch._foreach_add(g, bufs, alpha=momentum) if nesterov else bufs
            new_params.update(zip(names, torch._foreach_add(p, g, alpha=-step_lr)))
        return new_params, new_state

    return Optimizer(init=init, update=update, lrs=_next_lrs(schedule), lrs_at=_lrs_at(schedule))


# --------------------------------------------------------------------------
# Adam / AdamW


def _adam_family(
    where: str,
    lr: float | Schedule,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> Optimizer:
    schedule = _as_schedule(where, lr)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ArgumentError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
    beta1 = _check_beta(where, "betas[0]", betas[0])
    beta2 = _check_beta(where, "betas[1]", betas[1])
    eps = _check_at_least_zero(where, "eps", eps)
    weight_decay = _check_at_least_zero(where, "weight_decay", weight_decay)

    def init(params: Tensors) -> OptState:
        zeros = {name: torch.zeros_like(p, memory_format=torch.preserve_format) for name, p in params.items()}
        return {
            "count": 0,
            "exp_avg": zeros,
            "exp_avg_sq": {name: torch.zeros_like(z) for name, z in zeros.items()},
        }

    def update(
        grads: Tensors, opt_state: OptState, params: Tensors, lr_scale: float = 1.0
    ) -> tuple[dict[str, Tensor], OptState]:
        count = opt_state["count"]
        step_lr = schedule(count) * lr_scale
        names = _names_with_grads(where, grads, params)
        new_params = dict(params)
        exp_avg = dict(opt_state["exp_avg"])
        exp_avg_sq = dict(opt_state["exp_avg_sq"])
        new_state = {"count": count + 1, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        if not names:
            return new_params, new_state

        p = [params[name] for name in names]
        g = [grads[name] for name in names]
        m = _pick(where, opt_state["exp_avg"], "exp_avg", names)
        v = _pick(where, opt_state["exp_avg_sq"], "exp_avg_sq", names)
        # The scalar arithmetic below is torch's, operation for operation: torch
        # reads its float32 step counter back as a Python float, so the bias
        # corrections are Python-float powers of beta.
        t = float(count + 1)
        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t
        step_size = (step_lr / bias_correction1) * -1
        bias_correction2_sqrt = bias_correction2**0.5
        with torch.no_grad():
            if weight_decay != 0:
                if decoupled:
                    p = torch._foreach_mul(p, 1 - step_lr * weight_decay)
                else:
                    g = torch._foreach_add(g, p, alpha=weight_decay)
            m = torch._foreach_lerp(m, g, 1 - beta1)
            v = torch._foreach_mul(v, beta2)
            torch._foreach_addcmul_(v, g, g, 1 - beta2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, bias_correction2_sqrt)
            torch._foreach_add_(denom, eps)
            if decoupled and weight_decay != 0:  # p is already a fresh list
                torch._foreach_addcdiv_(p, m, denom, step_size)
                new_p = p
            else:
                new_p = torch._foreach_addcdiv(p, m, denom, step_size)
        new_params.update(zip(names, new_p))
        exp_avg.update(zip(names, m))
        exp_avg_sq.update(zip(names, v))
        return new_params, new_state

    return Optimizer(init=init, update=update, lrs=_next_lrs(schedule), lrs_at=_lrs_at(schedule))


def adam(
    lr: float | Schedule,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Adam; ``weight_decay`` is an L2 term added to the gradient, as in ``torch.optim.Adam``.

    Bit-identical to ``torch.optim.Adam`` on CPU. State:
    ``{"count": int, "exp_avg": {name: T}, "exp_avg_sq": {name: T}}``::

        opt = adam(1e-3)
        params, state = opt.update(grads, opt.init(params), params)
    """
    return _adam_family("adam", lr, betas, eps, weight_decay, decoupled=False)


def adamw(
    lr: float | Schedule,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> Optimizer:
    """AdamW: Adam with decoupled weight decay (params shrink by ``1 - lr * weight_decay``).

    Bit-identical to ``torch.optim.AdamW`` on CPU; same state as :func:`adam`::

        opt = adamw(cosine(1e-3, total_steps=10_000), weight_decay=0.05)
        params, state = opt.update(grads, opt.init(params), params)
    """
    return _adam_family("adamw", lr, betas, eps, weight_decay, decoupled=True)


# --------------------------------------------------------------------------
# frozen params and param groups


def _frozen_init(params: Tensors) -> OptState:
    return {}


def _frozen_update(
    grads: Tensors, opt_state: OptState, params: Tensors, lr_scale: float = 1.0
) -> tuple[dict[str, Tensor], OptState]:
    return dict(params), opt_state


def frozen() -> Optimizer:
    """Params that never change and need no gradient (``trains`` is always False).

        opt = multi_transform({"backbone": frozen(), "head": adamw(1e-3)},
                              label_by_prefix({"backbone.": "backbone"}, default="head"))
    """
    return Optimizer(init=_frozen_init, update=_frozen_update, trains=_never_trains)


@attrs.frozen
class PrefixLabels:
    """Label of a param name: the label of its longest matching prefix, else ``default``.

        labels = PrefixLabels((("backbone.", "backbone"),), default="head")
        labels("backbone.conv.weight"), labels("head.cls.bias")   # 'backbone', 'head'
    """

    prefixes: tuple[tuple[str, str], ...]
    default: str

    def __call__(self, name: str) -> str:
        for prefix, label in self.prefixes:
            if name.startswith(prefix):
                return label
        return self.default


def label_by_prefix(mapping: Mapping[str, str], default: str) -> PrefixLabels:
    """Labels params by name prefix (longest match wins), for :func:`multi_transform`.

        labels = label_by_prefix({"backbone.": "backbone", "head.": "head"}, default="head")
        labels("backbone.stem.weight")   # 'backbone'
    """
    if not isinstance(mapping, Mapping):
        raise ArgumentError(f"label_by_prefix: mapping must map name prefixes to labels, got {mapping!r}")
    for prefix, label in mapping.items():
        if not (isinstance(prefix, str) and isinstance(label, str)):
            raise ArgumentError(
                f"label_by_prefix: mapping must map str prefixes to str labels, got {prefix!r}: {label!r}"
            )
    if not isinstance(default, str):
        raise ArgumentError(f"label_by_prefix: default must be a str label, got {default!r}")
    longest_first = tuple(sorted(mapping.items(), key=lambda item: len(item[0]), reverse=True))
    return PrefixLabels(longest_first, default)


def multi_transform(
    transforms: Mapping[str, Optimizer],
    labels: Mapping[str, str] | Callable[[str], str],
) -> Optimizer:
    """Param groups: each param gets the optimizer of its label; each label keeps its own state.

    ``labels`` maps every param name to a label, as a mapping or a function
    (see :func:`label_by_prefix`). Each label's optimizer sees only its own
    params and grads, and all of them advance once per update. State:
    ``{label: that optimizer's state}``::

        opt = multi_transform({"backbone": adamw(1e-5), "head": adamw(1e-3)},
                              label_by_prefix({"backbone.": "backbone"}, default="head"))
        params, state = opt.update(grads, opt.init(params), params)
    """
    where = "multi_transform"
    if not isinstance(transforms, Mapping) or not transforms:
        raise ArgumentError(f"{where}: transforms must be a non-empty mapping label -> Optimizer, got {transforms!r}")
    for label, opt in transforms.items():
        if not isinstance(label, str):
            raise ArgumentError(f"{where}: labels in transforms must be str, got {label!r}")
        if not isinstance(opt, Optimizer):
            raise ArgumentError(f"{where}: transforms[{label!r}] must be an Optimizer, got {type(opt).__name__}")
    transforms = dict(transforms)
    if isinstance(labels, Mapping):
        table = dict(labels)

        def label_fn(name: str) -> str:
            if name not in table:
                raise ArgumentError(f"{where}: labels has no label for param {name!r}")
            return table[name]

    elif callable(labels):
        label_fn = labels
    else:
        raise ArgumentError(f"{where}: labels must be a mapping name -> label or a function, got {labels!r}")

    def label_of(name: str) -> str:
        label = label_fn(name)
        if label not in transforms:
            raise ArgumentError(
                f"{where}: param {name!r} has label {label!r}, which is not one of the "
                f"transforms' labels {sorted(transforms)}"
            )
        return label

    last_partition: list[Any] = [None, None]  # cache: (names, {label: [names]}) of the last call

    def partition(params: Tensors) -> dict[str, list[str]]:
        names = tuple(params)
        if last_partition[0] != names:
            groups: dict[str, list[str]] = {label: [] for label in transforms}
            for name in names:
                groups[label_of(name)].append(name)
            last_partition[:] = [names, groups]
        return last_partition[1]

    def init(params: Tensors) -> OptState:
        groups = partition(params)
        return {label: transforms[label].init({n: params[n] for n in groups[label]}) for label in transforms}

    def update(
        grads: Tensors, opt_state: OptState, params: Tensors, lr_scale: float = 1.0
    ) -> tuple[dict[str, Tensor], OptState]:
        groups = partition(params)
        merged: dict[str, Tensor] = {}
        new_state: dict[str, Any] = {}
        seen = 0
        for label, opt in transforms.items():
            if label not in opt_state:
                raise ArgumentError(f"{where}: opt_state has no state for label {label!r}; was it made by init()?")
            names = groups[label]
            sub_grads = {n: grads[n] for n in names if n in grads}
            seen += len(sub_grads)
            sub_params, new_state[label] = opt.update(
                sub_grads, opt_state[label], {n: params[n] for n in names}, lr_scale
            )
            merged.update(sub_params)
        if seen != len(grads):
            unknown = sorted(name for name in grads if name not in params)
            raise ArgumentError(f"{where}: gradients for names that are not params: {unknown}")
        return {name: merged[name] for name in params}, new_state

    def trains(name: str) -> bool:
        return transforms[label_of(name)].trains(name)

    def lrs(opt_state: OptState, lr_scale: float = 1.0) -> dict[str, float]:
        out: dict[str, float] = {}
        for label, opt in transforms.items():
            for sub, lr in opt.lrs(opt_state[label], lr_scale).items():
                out[label if sub == "" else f"{label}/{sub}"] = lr
        return out

    def lrs_at(count: int, lr_scale: float = 1.0) -> dict[str, float]:
        out: dict[str, float] = {}
        for label, opt in transforms.items():
            for sub, lr in opt.lrs_at(count, lr_scale).items():
                out[label if sub == "" else f"{label}/{sub}"] = lr
        return out

    phased = {label: opt.trains_in for label, opt in transforms.items() if opt.trains_in is not None}
    predicates: dict[tuple[int, ...], Callable[[str], bool]] = {}

    def trains_in(opt_state: OptState) -> Callable[[str], bool]:
        now = {label: fn(opt_state[label]) for label, fn in phased.items()}
        key = tuple(id(p) for p in now.values())
        pred = predicates.get(key)
        if pred is None:
            def pred(name: str, now: dict = now) -> bool:
                label = label_of(name)
                return now[label](name) if label in now else transforms[label].trains(name)

            predicates[key] = pred
        return pred

    return Optimizer(init=init, update=update, trains=trains, lrs=lrs, lrs_at=lrs_at,
                     trains_in=trains_in if phased else None)


def switch(at: int, first: Optimizer, then: Optimizer) -> Optimizer:
    """``first`` for the first ``at`` updates, then ``then``, whose state starts fresh at the switch.

    SmartCash trains with a frozen backbone, then fine-tunes it: inside a
    :func:`multi_transform`, ``switch(5 * batches, frozen(), adamw(5e-6))``
    keeps the backbone frozen — no gradient is even computed for it — for
    five epochs of updates, then trains it with its own optimizer (and its
    own schedule, counted from the switch). The state records the phase, so a
    resumed run switches at the same update::

        backbone = switch(1000, frozen(), adamw(cosine(5e-6, 9000)))
    """
    if not isinstance(at, int) or isinstance(at, bool) or at < 0:
        raise ArgumentError(f"switch: at must be an int >= 0 (updates), got {at!r}")

    def current(opt_state: OptState) -> Optimizer:
        return first if opt_state["phase"] == 0 and opt_state["count"] < at else then

    def init(params: Tensors) -> OptState:
        return {"count": 0, "phase": 0, "state": first.init(params)}

    def update(grads: Tensors, opt_state: OptState, params: Tensors, lr_scale: float = 1.0):
        sub, phase = opt_state["state"], opt_state["phase"]
        if phase == 0 and opt_state["count"] >= at:
            sub, phase = then.init(params), 1
        opt = first if phase == 0 else then
        new_params, sub = opt.update(grads, sub, params, lr_scale)
        return new_params, {"count": opt_state["count"] + 1, "phase": phase, "state": sub}

    def lrs(opt_state: OptState, lr_scale: float = 1.0) -> dict[str, float]:
        opt = current(opt_state)
        if opt is then and opt_state["phase"] == 0:
            return {}  # the next phase's state does not exist yet
        return opt.lrs(opt_state["state"], lr_scale)

    def lrs_at(count: int, lr_scale: float = 1.0) -> dict[str, float]:
        return first.lrs_at(count, lr_scale) if count < at else then.lrs_at(count - at, lr_scale)

    def trains_in(opt_state: OptState) -> Callable[[str], bool]:
        return current(opt_state).trains

    return Optimizer(init=init, update=update, trains=lambda n: first.trains(n) or then.trains(n), lrs=lrs,
                     lrs_at=lrs_at,
                     trains_in=trains_in)
