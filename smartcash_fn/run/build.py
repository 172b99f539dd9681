"""From a recipe to a run: a template :class:`TrainState` and the :class:`Loop` it goes through.

:func:`build` resolves every component the recipe names (see
:mod:`smartcash_fn.run.registry`), checks their parameters against their
signatures, and composes them: the data, a model factory, the optimizer with
its parameter groups and schedule, the step (``toolz.compose`` of the step
transformers over ``make_step(loss)``), validation, callbacks, checkpoints
and loggers. Nothing is trained and nothing is written::

    from smartcash_fn.run.recipe import load
    built = build(load("recipes/tiny.toml"), run_dir="runs/tiny")
    state = fit(built.template, built.loop)
    print(describe(built))

A data factory returns :class:`Splits` (or just the training data): tensors,
a ``Dataset`` or any object with ``batches`` and ``__len__``.
"""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs
import toolz
import torch

from .. import distributed, environment, optim
from .. import step as step_lib
from .._files import write_text_atomic
from ..callbacks import Monitor, checkpointing, early_stopping, keep_best, reduce_on_plateau, time_budget, weights_file
from ..data import (Finish, Splits, Start, Wrapping, as_data, epoch_cost, epoch_data, resized, sharded,
                    unaugmented)
from ..errors import RecipeError, StateError, UserError
from ..events import EVENTS, Callback, flatten, writer
from ..loop import Loop, Validation
from ..report import console, plots, sinks, summary
from ..report.values import plural
from ..state import TrainState
from ..step import Step, make_step
from ..tree import tree_map, walk
from . import registry
from .footprint import Footprint, footprint_of
from .recipe import Recipe, seconds_of, to_dict


@attrs.frozen
class Built:
    """A run ready to go: the ``template`` state at step 0, the ``loop``, and what was derived.

    ``batches`` per epoch, ``updates`` (optimizer updates the schedule spans),
    ``step_text`` (the composed step, for people), ``notes`` (loggers left
    out, validation off) and ``console`` (names of the terminal loggers'
    callbacks) — ``fit(built.template, built.loop)``.
    """

    recipe: Recipe
    template: TrainState
    loop: Loop
    run_dir: Path | None
    batches: int
    updates: int
    step_text: str
    notes: tuple[str, ...] = ()
    console: tuple[str, ...] = ()
    footprint: Callable[[], Footprint] | None = None
    """The model's :class:`~smartcash_fn.run.footprint.Footprint`, counted on the first call (FLOPs take a
    forward pass) and kept: the start of training prints it, ``summary.md`` shows it."""


# --------------------------------------------------------------------------- data


def _file(recipe: Recipe, *path: str | int) -> Callable[[str | None], str]:
    """The source file of a component parameter under ``path`` (the recipe's own file for a missing one)."""
    return lambda name: recipe.origin.of(path + (name,)) if name is not None else recipe.origin.of(path)


def _site(recipe: Recipe, name_at: tuple, label: str, *tables: tuple[tuple, Any]) -> registry.Site:
    """Where the recipe names a component (the key ``name_at``, written ``label``) and each argument it gives:
    ``tables`` are ``(key path, names)`` pairs, the names' keys lying under that path.

    ``_site(recipe, ("data", "use"), "synthetic", (("data", "params"), recipe.data.params))``
    """
    return registry.Site(recipe.where(*name_at), label,
                         {str(k): recipe.where(*at, k) for at, names in tables for k in names})


def _as_source(src: Any, recipe: Recipe, train: bool, info: Mapping[str, Any]) -> Any:
    cfg = recipe.data
    where = recipe.where("data", "use")
    bs = cfg.batch_size if train else (cfg.val_batch_size or cfg.batch_size)
    if train:
        bs = per_rank_batch(recipe, distributed.world().size)
    shuffle, drop_last = (cfg.shuffle, cfg.drop_last) if train else (False, False)
    split = "train" if train else "val"
    try:
        return as_data(src, bs, shuffle=shuffle, drop_last=drop_last, workers=cfg.workers,
                       collate_fn=info.get("collate_fn"))
    except UserError as e:
        raise RecipeError(f"{where}: the data factory's {split} data: {e}") from None


def with_sync_bn(recipe: Recipe, factory: Callable[[], torch.nn.Module], world_size: int,
                 device: torch.device) -> Callable[[], torch.nn.Module]:
    """``factory`` with its BatchNorm layers made ``torch.nn.SyncBatchNorm`` when ``train.sync_bn`` asks and
    more than one process trains (one process has nothing to synchronise: ``factory`` itself).

    torch's SyncBatchNorm synchronises CUDA (and HPU, XPU) tensors only and
    raises on CPU tensors, so on any other device the key is refused with a
    :class:`RecipeError` naming it. The layers keep their parameter and
    buffer names: a checkpoint loads with or without the key::

        factory = with_sync_bn(recipe, make_model_factory(recipe, info), world.size, torch.device("cuda", 0))
    """
    if not recipe.train.sync_bn or world_size == 1:
        return factory
    if device.type != "cuda":
        raise recipe.error(("train", "sync_bn"), f"SyncBatchNorm runs on CUDA devices only (torch refuses "
                                                 f"{device.type} tensors); set train.sync_bn = false to train on "
                                                 f"{world_size} {device.type} processes, each BatchNorm on its own "
                                                 "batch")
    return toolz.compose(torch.nn.SyncBatchNorm.convert_sync_batchnorm, factory)


def global_batch(recipe: Recipe, world_size: int) -> int:
    """Samples per training step on ``world_size`` processes together: ``global_batch(recipe, 2)``."""
    return per_rank_batch(recipe, world_size) * world_size


def per_rank_batch(recipe: Recipe, world_size: int) -> int:
    """Samples per training batch on each of ``world_size`` processes.

    ``data.batch_size`` itself, so the global batch grows with the world; with
    ``data.global_batch = true`` the batch is split (it must divide):
    ``per_rank_batch(recipe, 2)``.
    """
    cfg = recipe.data
    if not cfg.global_batch or world_size == 1:
        return cfg.batch_size
    if cfg.batch_size % world_size:
        raise recipe.error(("data", "batch_size"), f"with data.global_batch = true the batch of {cfg.batch_size} is "
                                                   f"split across {world_size} processes; give a multiple of "
                                                   f"{world_size}")
    return cfg.batch_size // world_size


def make_data(recipe: Recipe) -> tuple[Any, Any, Mapping[str, Any]]:
    """The recipe's training data, validation data (or None) and info: ``train, val, info = make_data(recipe)``."""
    cfg = recipe.data
    where = recipe.where("data", "use")
    fn = registry.resolve("data", cfg.use, where)
    registry.check_params(fn, cfg.params, _file(recipe, "data", "params"), key="data.params", label=cfg.use)
    out = registry.call(fn, _site(recipe, ("data", "use"), cfg.use, (("data", "params"), cfg.params)), **cfg.params)
    if isinstance(out, Mapping) and "train" in out:
        out = Splits(**out)
    splits = out if isinstance(out, Splits) else Splits(train=out)
    info = dict(splits.info)
    train = _as_source(splits.train, recipe, True, info)
    if cfg.small_size:  # inside the plain epochs' Finish: the last epochs are at the data's own size
        train = _small_start(recipe, splits.train, train, info)
    if cfg.plain_epochs:
        try:
            plain = unaugmented(splits.train)
        except UserError as e:
            raise recipe.error(("data", "plain_epochs"), f"the data factory's training data: {e}") from None
        train = Finish(train, _as_source(plain, recipe, True, info), cfg.plain_epochs)
    val = None if splits.val is None else _as_source(splits.val, recipe, False, info)
    if len(train) == 0:
        raise RecipeError(f"{where}: the training data has no batches (batch_size {cfg.batch_size} with "
                          f"drop_last = true is more than the samples); lower data.batch_size")
    return train, val, info


def _small_start(recipe: Recipe, dataset: Any, train: Any, info: Mapping[str, Any]) -> Start:
    """``train`` whose first ``data.small_share`` of the planned epochs serve ``dataset`` at ``data.small_size``.

    Its ``cost`` is the pixels' share, ``(small_size / size)²``; a time budget times the steps instead
    (:func:`timed_costs`: on `rupiah_yolo`, 192 against 256 px, they took 0.53-0.64 as long).
    """
    cfg = recipe.data
    size = getattr(dataset, "size", None)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise recipe.error(("data", "small_size"), f"the data factory's training data ({type(dataset).__name__}) "
                                                   "has no image size (an int `size`) to start smaller than")
    if not 0 < cfg.small_size < size:
        raise recipe.error(("data", "small_size"), f"{cfg.small_size} is not smaller than the data's image size "
                                                   f"{size}; give a size between 1 and {size - 1}, or 0 for off")
    if cfg.small_share <= 0:
        raise recipe.error(("data", "small_share"), "0 trains no epoch small; give a share in (0, 1], or set "
                                                    "data.small_size = 0")
    try:
        small = resized(dataset, cfg.small_size)
    except UserError as e:
        raise recipe.error(("data", "small_size"), f"the data factory's training data: {e}") from None
    return Start(train, _as_source(small, recipe, True, info), cfg.small_share, (cfg.small_size / size) ** 2)


@attrs.frozen
class OnDevice(Wrapping):
    """Data whose batches are moved to ``device`` (every tensor inside tuples, lists and dicts).

    ``OnDevice(train, "cuda")`` — what :func:`build` wraps the data in when ``run.device`` is not the CPU.
    """

    data: Any
    device: str

    def batches(self, seed: int, epoch: int, start: int = 0) -> Any:
        return (to_device(b, self.device) for b in self.data.batches(seed, epoch, start))

    def for_epoch(self, epoch: int, planned: int) -> "OnDevice":
        return attrs.evolve(self, data=epoch_data(self.data, epoch, planned))

    def epoch_cost(self, epoch: int, planned: int) -> float:
        return epoch_cost(self.data, epoch, planned)


def timed_costs(train: Any, step: Callable[[TrainState, Any], TrainState],
                rounds: int = 2) -> Callable[[TrainState], Callable[[int, int], float]]:
    """What a time budget plans each epoch's steps with: ``timed_costs(train, step)(state)(epoch, planned)``.

    Data whose epochs all cost alike (:func:`~smartcash_fn.data.epoch_cost` 1) gives 1 for each. Data with
    cheaper epochs (a :class:`~smartcash_fn.data.Start`'s smaller first ones) is timed on this machine
    when the plan is made: ``step`` on ``state`` with the first batch of the first epoch's source and of
    the last epoch's, ``rounds`` times each in turn (the results are discarded); a cheap epoch costs the
    fastest of the one over the fastest of the other, and every other epoch 1. Under ``torchrun`` the
    ranks agree on the smallest ratio (the dearest later epochs).
    """

    def costs(state: TrainState) -> Callable[[int, int], float]:
        if epoch_cost(train, 0, 0) >= 1.0:
            return lambda epoch, planned: epoch_cost(train, epoch, planned)
        far = 1 << 20  # an epoch past any share of a run that long: the data's own size
        batches = [next(iter(epoch_data(train, e, n).batches(state.seed, 0))) for e, n in ((0, 0), (far - 1, far))]
        took: list[list[float]] = [[], []]
        for _ in range(rounds):
            for i, batch in enumerate(batches):
                start = time.perf_counter()
                step(state, batch)
                _settled()
                took[i].append(time.perf_counter() - start)
        ratio = min(1.0, min(took[0]) / max(min(took[1]), 1e-9))
        ratio = min(distributed.gather_objects(ratio))
        return lambda epoch, planned: ratio if epoch_cost(train, epoch, planned) < 1.0 else 1.0

    return costs


def _settled() -> None:
    """Wait for a step's work on an accelerator to finish (nothing to wait for on a CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def to_device(obj: Any, device: str | torch.device) -> Any:
    """``obj`` with every tensor inside (tuples, lists, dicts) moved to ``device``: ``to_device(batch, "cuda")``."""
    return tree_map(lambda x: x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x, obj)


def _device(recipe: Recipe) -> torch.device:
    try:
        device = torch.device(recipe.run.device)
    except (RuntimeError, ValueError) as e:
        raise recipe.error(("run", "device"), f"not a device ({e}); write cpu, cuda or cuda:0") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise recipe.error(("run", "device"), "CUDA is not available here; set run.device = \"cpu\"")
    return distributed.local_device(device)  # cuda:LOCAL_RANK under torchrun


# --------------------------------------------------------------------------- model


def make_model_factory(recipe: Recipe, info: Mapping[str, Any]) -> Callable[[], torch.nn.Module]:
    """A zero-argument factory of the recipe's model, its arguments filled from ``[model.params]`` and ``info``.

    ``TrainState.create(make_model_factory(recipe, info), opt, seed=recipe.run.seed)``
    """
    cfg = recipe.model
    where = recipe.where("model", "use")
    fn = registry.resolve("model", cfg.use, where)
    sig = registry.parameters(fn)
    filled = {k: v for k, v in info.items() if sig is not None and k in sig and k not in cfg.params}
    kwargs = {**filled, **cfg.params}
    registry.check_params(fn, cfg.params, _file(recipe, "model", "params"), supplied=filled, key="model.params",
                          label=cfg.use)
    site = _site(recipe, ("model", "use"), cfg.use, (("model", "params"), cfg.params))

    def factory() -> torch.nn.Module:
        model = registry.call(fn, site, **kwargs)
        if not isinstance(model, torch.nn.Module):
            raise RecipeError(f"{where}: the model factory returned a {type(model).__name__}, not an nn.Module")
        return model

    return factory


# --------------------------------------------------------------------------- optimizer and schedule


def _first_param(fn: Callable[..., Any]) -> str | None:
    params = registry.parameters(fn)
    return next(iter(params), None) if params else None


def _pass_keys(recipe: Recipe, section: str, fn: Callable[..., Any], keys: tuple[str, ...], use: str) -> dict:
    """The section's ``keys`` that ``fn`` takes; a key it does not take must keep its default."""
    cfg = getattr(recipe, section)
    fields = attrs.fields_dict(type(cfg))
    out = {}
    takes = registry.parameters(fn)
    for k in keys:
        value = getattr(cfg, k)
        if takes is None or k in takes:
            if value is not None:
                out[k] = list(value) if isinstance(value, tuple) and k != "betas" else value
            continue
        default = fields[k].default
        if value != default:
            raise recipe.error((section, k), f"{use} takes no {k!r} (its parameters: {', '.join(takes)}); "
                                             f"remove the key or pick another {section}.use")
    return out


_SCHEDULE_KEYS = ("warmup_steps", "min_lr", "start_factor", "step_size", "milestones", "gamma", "pct_start",
                  "div_factor", "final_div_factor", "anneal", "three_phase")
_OPTIMIZER_KEYS = ("momentum", "nesterov", "betas", "eps")


def _accumulation(recipe: Recipe) -> int:
    every = recipe.train.accumulate
    for s in recipe.train.steps:
        if s.use == "accumulate" and isinstance(s.params.get("every"), int):
            every *= max(1, s.params["every"])
    return every


def make_schedule(recipe: Recipe, batches: int) -> tuple[Callable[..., Any], int]:
    """A function ``(lr, total=None) -> schedule`` of the recipe's schedule shape, and the updates it spans.

    The updates are ``schedule.total_steps``, or epochs x ``batches`` divided
    by the gradient accumulation; ``total`` makes a schedule of the same shape
    over fewer updates (a phase of a parameter group). ``min_lr`` scales with
    each group's lr; ``warmup_share`` caps the warmup at that share of each
    schedule's updates (:func:`warmup_of`)::

        schedule_for, updates = make_schedule(recipe, batches=8)
        schedule_for(1e-3)(0)     # the lr of the first update
    """
    cfg = recipe.schedule
    where = recipe.where("schedule", "use")
    fn = registry.resolve("schedule", cfg.use, where)
    updates = cfg.total_steps or max(1, recipe.train.epochs * batches // _accumulation(recipe))
    kwargs = _pass_keys(recipe, "schedule", fn, _SCHEDULE_KEYS, cfg.use)
    if registry.accepts(fn, "total_steps"):
        kwargs["total_steps"] = updates
    elif cfg.total_steps is not None:
        raise recipe.error(("schedule", "total_steps"), f"{cfg.use} takes no 'total_steps'; remove the key")
    if cfg.warmup_share is not None and "warmup_steps" not in kwargs:
        raise recipe.error(("schedule", "warmup_share"), f"{cfg.use} has no warmup to cap; remove the key or use "
                                                         "warmup_cosine or warmup_linear")
    lr_name = _first_param(fn) or "lr"
    fields = attrs.fields_dict(type(cfg))
    for name, p in (registry.parameters(fn) or {}).items():
        if p.default is p.empty and name in fields and name not in kwargs and name not in cfg.params:
            raise recipe.error(("schedule", name), f"schedule {cfg.use!r} needs this key; add it to [schedule]")
    registry.check_params(fn, cfg.params, _file(recipe, "schedule", "params"),
                          supplied=(lr_name, *kwargs), key="schedule.params", label=cfg.use)
    base_lr = recipe.optimizer.lr
    own = [k for k in kwargs if k != "total_steps" or cfg.total_steps is not None]
    site = _site(recipe, ("schedule", "use"), cfg.use, (("schedule",), own), (("schedule", "params"), cfg.params))
    site = attrs.evolve(site, params={**site.params, lr_name: recipe.where("optimizer", "lr")})

    def for_lr(lr: float, total: int | None = None) -> Any:
        kw = {**kwargs, **cfg.params, lr_name: lr}
        if total is not None and "total_steps" in kw:
            kw["total_steps"] = max(1, int(total))
        if cfg.warmup_share is not None and "total_steps" in kw:
            kw["warmup_steps"] = warmup_of(kw["warmup_steps"], cfg.warmup_share, kw["total_steps"])
        if "min_lr" in kw and base_lr > 0:
            kw["min_lr"] = kw["min_lr"] * lr / base_lr
        return registry.call(fn, site, **kw)

    for_lr(base_lr)  # check the arguments now
    return for_lr, updates


def warmup_of(steps: int, share: float, total: int) -> int:
    """The warmup updates of a schedule of ``total`` updates: ``steps``, or ``share`` of ``total`` when that is fewer.

    A recipe's warmup is set for the runs it was tuned on; on a small dataset or a short time budget the run
    may have fewer updates than that warmup (``warmup_cosine`` would refuse, or never reach its lr)::

        warmup_of(100, 0.25, 1200), warmup_of(100, 0.25, 50)   # (100, 12)
    """
    return min(int(steps), int(share * total))


def warmup_note(recipe: Recipe, updates: int) -> str | None:
    """What a run of ``updates`` updates says when ``schedule.warmup_share`` shortens its warmup (else None)."""
    cfg = recipe.schedule
    if cfg.warmup_share is None or cfg.total_steps is not None:
        return None
    steps = warmup_of(cfg.warmup_steps, cfg.warmup_share, updates)
    if steps == cfg.warmup_steps:
        return None
    return (f"schedule: the run has {plural(updates, 'update')}, so the warmup takes {steps} "
            f"(warmup_share {cfg.warmup_share:g}) where warmup_steps says {cfg.warmup_steps}")


def replan_for(recipe: Recipe, schedule_for: Callable[..., Any], batches: int
               ) -> Callable[[TrainState, int], TrainState]:
    """``replan(state, epochs)``: the state with the recipe's optimizer rebuilt, its schedule spanning ``epochs``.

    What :func:`~smartcash_fn.callbacks.time_budget` calls once it has
    planned the epochs that fit ``train.max_time``. The optimizer state
    keeps its shape (the same optimizer, another schedule length), so the
    run goes on from where it is. A schedule whose length the recipe fixes
    (``schedule.total_steps``), or one that cannot span so few updates
    (``warmup_steps`` longer than the planned run, where ``schedule.warmup_share`` does not shorten it), is
    kept::

        replan = replan_for(recipe, schedule_for, batches=len(train))
        state = replan(state, 3)
    """

    def replan(state: TrainState, epochs: int) -> TrainState:
        if recipe.schedule.total_steps is not None:
            return state
        updates = max(1, epochs * batches // _accumulation(recipe))
        try:
            opt = make_optimizer(recipe, lambda lr, total=None: schedule_for(lr, updates if total is None else total),
                                 batches, updates)
        except (UserError, ValueError):
            return state
        return state.replace(optimizer=opt)

    return replan


def make_optimizer(recipe: Recipe, schedule_for: Callable[..., Any], batches: int | None = None,
                   updates: int | None = None) -> optim.Optimizer:
    """The recipe's optimizer; with ``[[optimizer.groups]]`` a ``multi_transform`` over name prefixes.

    Params that match no group's prefix train with the section's own settings
    (label ``default``). A group with ``frozen_epochs`` or ``after_epochs``
    is an :func:`~smartcash_fn.optim.switch` between two phases, the epochs
    turned into updates with ``batches`` per epoch; the second phase starts
    with fresh optimizer state and the schedule's shape over the ``updates``
    left (the first phase follows the run's schedule)::

        schedule_for, updates = make_schedule(recipe, batches=len(train))
        opt = make_optimizer(recipe, schedule_for, batches=len(train), updates=updates)
    """
    cfg = recipe.optimizer
    where = recipe.where("optimizer", "use")
    fn = registry.resolve("optimizer", cfg.use, where)
    kwargs = _pass_keys(recipe, "optimizer", fn, _OPTIMIZER_KEYS, cfg.use)
    lr_name = _first_param(fn) or "lr"
    wd_ok = registry.accepts(fn, "weight_decay")
    if cfg.weight_decay is not None and not wd_ok:
        raise recipe.error(("optimizer", "weight_decay"), f"{cfg.use} takes no 'weight_decay'; remove the key")
    registry.check_params(fn, cfg.params, _file(recipe, "optimizer", "params"),
                          supplied=(lr_name, "weight_decay", *kwargs), key="optimizer.params", label=cfg.use)
    site = _site(recipe, ("optimizer", "use"), cfg.use, (("optimizer",), [*kwargs, "weight_decay"]),
                 (("optimizer", "params"), cfg.params))

    def make(lr: float, weight_decay: float | None, where: str, total: int | None = None) -> optim.Optimizer:
        kw = {**kwargs, **cfg.params, lr_name: schedule_for(lr) if total is None else schedule_for(lr, total)}
        if weight_decay is not None:
            kw["weight_decay"] = weight_decay
        opt = registry.call(fn, attrs.evolve(site, where=where), **kw)
        if not (callable(getattr(opt, "init", None)) and callable(getattr(opt, "update", None))):
            raise RecipeError(f"{where}: the optimizer factory returned a {type(opt).__name__}, not an Optimizer")
        return opt

    main = make(cfg.lr, cfg.weight_decay, where)
    if not cfg.groups:
        return main
    transforms: dict[str, optim.Optimizer] = {"default": main}
    prefixes: dict[str, str] = {}
    for i, g in enumerate(cfg.groups):
        gwhere = recipe.where("optimizer", "groups", i)
        label = g.name or g.prefix.rstrip(".") or f"group{i}"
        if not g.prefix:
            raise recipe.error(("optimizer", "groups", i, "prefix"), "expected a name prefix such as \"backbone.\"")
        if label in transforms:
            raise recipe.error(("optimizer", "groups", i, "name"),
                               f"the label {label!r} is taken ({'the params outside every group' if label == 'default' else 'by another group'}); give the group another name")
        if g.prefix in prefixes:
            raise recipe.error(("optimizer", "groups", i, "prefix"), f"the prefix {g.prefix!r} is in two groups")
        if g.frozen:
            if g.lr is not None or g.weight_decay is not None or g.frozen_epochs or g.after_epochs:
                raise recipe.error(("optimizer", "groups", i, "frozen"), "a frozen group takes no lr, weight_decay, "
                                                                         "frozen_epochs or after_epochs")
            transforms[label] = optim.frozen()
        else:
            wd = g.weight_decay if g.weight_decay is not None else cfg.weight_decay
            transforms[label] = _group_optimizer(recipe, i, g, make, cfg.lr if g.lr is None else g.lr, wd, gwhere,
                                                 batches, updates)
        prefixes[g.prefix] = label
    return optim.multi_transform(transforms, optim.label_by_prefix(prefixes, default="default"))


def _group_optimizer(recipe: Recipe, i: int, g: Any, make: Callable[..., optim.Optimizer], lr: float,
                     wd: float | None, where: str, batches: int | None, updates: int | None) -> optim.Optimizer:
    """One group's optimizer: plain, or a switch after ``frozen_epochs`` / ``after_epochs``."""
    key = ("optimizer", "groups", i)
    if g.frozen_epochs and g.after_epochs:
        raise recipe.error(key + ("after_epochs",), "give frozen_epochs or after_epochs, not both")
    if (g.lr_after is None) != (g.after_epochs == 0):
        raise recipe.error(key + (("lr_after",) if g.lr_after is None else ("after_epochs",)),
                           "after_epochs and lr_after go together: the group switches to lr_after after that "
                           "many epochs")
    epochs = g.frozen_epochs or g.after_epochs
    if not epochs:
        return make(lr, wd, where)
    if batches is None:
        raise recipe.error(key, "a phased group needs the batches per epoch; pass batches= to make_optimizer")
    at = epochs * batches // _accumulation(recipe)
    total = updates if updates is not None else max(1, recipe.train.epochs * batches // _accumulation(recipe))
    rest = max(1, total - at)
    if g.frozen_epochs:
        return optim.switch(at, optim.frozen(), make(lr, wd, where, rest))
    return optim.switch(at, make(lr, wd, where), make(g.lr_after, wd, where, rest))


# --------------------------------------------------------------------------- loss and step


def filled_from(fn: Callable[..., Any], given: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``context`` named like parameters of ``fn`` that ``given`` leaves out.

    How the data's ``info`` fills a factory's arguments (the model's
    ``classes``, the detection loss's ``groups`` and ``image_size``)::

        filled_from(detection, {"box": 0.05}, info)    # {"groups": {...}, "image_size": 256}
    """
    sig = registry.parameters(fn)
    if sig is None:
        return {}
    return {k: v for k, v in context.items() if k in sig and k not in given}


def make_loss(recipe: Recipe, info: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """The recipe's loss function ``(apply, batch) -> loss`` (compiled with ``train.compile``).

    ``train.loss`` names the function itself, or a factory of it when
    ``train.loss_params`` are given or ``info`` (the data's) fills some of its
    parameters: ``loss_fn = make_loss(recipe, info)``; ``make_step(loss_fn)`` trains on it.
    """
    cfg = recipe.train
    where = recipe.where("train", "loss")
    fn = registry.resolve("loss", cfg.loss, where)
    filled = filled_from(fn, cfg.loss_params, info or {})
    if cfg.loss_params or filled:
        registry.check_params(fn, cfg.loss_params, _file(recipe, "train", "loss_params"), supplied=filled,
                              key="train.loss_params", label=cfg.loss)
        fn = registry.call(fn, _site(recipe, ("train", "loss"), cfg.loss, (("train", "loss_params"), cfg.loss_params)),
                           **filled, **cfg.loss_params)
    if not callable(fn):
        raise RecipeError(f"{where}: the loss is a {type(fn).__name__}, not a function (apply, batch) -> loss")
    if cfg.compile:
        fn = torch.compile(fn)
    return fn


def make_late_loss(recipe: Recipe, info: Mapping[str, Any] | None = None) -> Callable[..., Any] | None:
    """The loss of a run's later epochs: ``train.loss_params`` updated by ``train.late_loss_params`` (None
    without them). Each late key must be a parameter of the loss factory that the recipe does not leave to
    the data's ``info``::

        late_fn = make_late_loss(recipe, info)   # with late_loss_params = {cls = 1.0}: the loss at cls 1.0
    """
    cfg = recipe.train
    if not cfg.late_loss_params:
        return None
    fn = registry.resolve("loss", cfg.loss, recipe.where("train", "loss"))
    takes = registry.parameters(fn) or {}
    filled = filled_from(fn, cfg.loss_params, info or {})
    for name in cfg.late_loss_params:
        if name not in takes or name in filled or name in ("apply", "batch"):
            options = [n for n in takes if n not in filled and n not in ("apply", "batch")]
            raise recipe.error(("train", "late_loss_params", name),
                               f"{cfg.loss} takes no parameter {name!r} to change for the late epochs"
                               f"{registry.suggest(name, options)} (its parameters: {', '.join(options) or 'none'})")
    late = attrs.evolve(recipe, train=attrs.evolve(cfg, loss_params={**cfg.loss_params, **cfg.late_loss_params}))
    return make_loss(late, info)


def _call_text(name: str, params: Mapping[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def resolved_precision(recipe: Recipe) -> tuple[str, str | None]:
    """``train.precision`` with ``"auto"`` resolved for ``run.device``, and a note saying why when it was auto.

    ``"auto"`` is bf16 where the device multiplies bfloat16 natively
    (:func:`~smartcash_fn.environment.native_bf16`: there a bf16 step takes
    0.63-0.71 of the float32 step's time on a CPU, docs/detector.md), fp32
    elsewhere (emulated bf16 is slower than float32). The choice follows the
    machine, so a run resumed on the machine that started it makes the same
    one::

        resolved_precision(recipe)   # ("bf16", "precision auto: bf16, this CPU has avx512_bf16")
    """
    given = recipe.train.precision
    if given != "auto":
        return given, None
    clash = [i for i, s in enumerate(recipe.train.steps) if s.use in ("bf16", "fp16")]
    if clash:  # refused whatever auto would pick on this machine
        i = clash[0]
        raise recipe.error(("train", "precision"), f"auto, and a precision given as train.steps[{i}] "
                                                   f"({recipe.train.steps[i].use}); keep one of them")
    why = environment.native_bf16(distributed.local_device(torch.device(recipe.run.device)))
    if why is None:
        return "fp32", f"precision auto: fp32, {recipe.run.device} does not compute bf16 natively"
    return "bf16", f"precision auto: bf16, {why}"


def as_trained(recipe: Recipe, precision: str) -> Recipe:
    """``recipe`` with ``train.precision`` as it resolved here (``"auto"`` made ``"bf16"`` or ``"fp32"``): the
    recipe a run's states carry, so a checkpoint says the precision its params were trained in, and a resume
    or replay on another machine trains in it too rather than resolving ``auto`` again::

        as_trained(recipe, resolved_precision(recipe)[0]).train.precision    # "bf16" on an AVX512-BF16 CPU
    """
    if recipe.train.precision == precision:
        return recipe
    return attrs.evolve(recipe, train=attrs.evolve(recipe.train, precision=precision))


def make_train_step(recipe: Recipe, loss_fn: Callable[..., Any], late_loss_fn: Callable[..., Any] | None = None
                    ) -> tuple[Callable[..., Any], str]:
    """The composed step and its description: convenience keys first (precision, accumulate, clip, ema), then ``steps``.

    With ``late_loss_fn`` (:func:`make_late_loss`) the step trains on it from
    ``train.late_from`` of the planned epochs on (:func:`~smartcash_fn.step.late_switch`
    under the transformers).

    Under ``torchrun`` (world size > 1) :func:`~smartcash_fn.distributed.all_reduce_gradients`
    joins the chain between ``accumulate`` and ``clip``: one reduction per
    update, clipping the averaged gradients (a ``train.steps`` accumulate is
    inside it, so it reduces every batch).

    Each transformer wraps the ones after it: the first is outermost, so with
    ``precision = "fp16"`` the gradients are unscaled before they are
    accumulated and clipped, as ``torch.amp.GradScaler.unscale_`` comes
    before ``clip_grad_norm_``::

        step, text = make_train_step(recipe, make_loss(recipe))
        text    # 'compose(accumulate(every=4), clip(max_norm=10.0))(make_step(cross_entropy))'
    """
    recipe = as_trained(recipe, resolved_precision(recipe)[0])  # no work when build resolved it already
    cfg = recipe.train
    chain: list[tuple[str, Callable[[Step], Step]]] = []
    used = {s.use for s in cfg.steps}
    convenience = [
        ("precision", cfg.precision != "fp32", cfg.precision, {}),
        ("accumulate", cfg.accumulate != 1, "accumulate", {"every": cfg.accumulate}),
        ("all_reduce", distributed.world().size > 1, "all_reduce_gradients",
         {"overlap": distributed.overlap_default()}),
        ("clip", cfg.clip > 0, "clip", {"max_norm": cfg.clip}),
        ("ema", cfg.ema > 0, "ema", {"decay": cfg.ema}),
    ]
    for key, on, name, params in convenience:
        if not on:
            continue
        if key == "all_reduce":  # data parallel: inside accumulate, outside clip (see smartcash_fn.distributed)
            chain.append((_call_text(name, params), distributed.all_reduce_gradients(**params)))
            continue
        clash = ({"bf16", "fp16"} if key == "precision" else {name}) & used
        if clash:
            i = next(i for i, s in enumerate(cfg.steps) if s.use in clash)
            raise recipe.error(("train", key), f"given twice: here and as train.steps[{i}] ({cfg.steps[i].use}); "
                                               "keep one of them")
        chain.append((_call_text(name, params), getattr(step_lib, name)(**params)))
    for i, s in enumerate(cfg.steps):
        where = recipe.where("train", "steps", i, "use")
        fn = registry.resolve("step", s.use, where)
        registry.check_params(fn, s.params, _file(recipe, "train", "steps", i), key=f"train.steps[{i}]", label=s.use)
        at = ("train", "steps", i)
        transform = registry.call(fn, _site(recipe, at, s.use, (at, s.params)), **s.params)
        if not callable(transform):
            raise RecipeError(f"{where}: {s.use} returned a {type(transform).__name__}, not a step transformer "
                              "(Step -> Step)")
        chain.append((_call_text(s.use, s.params), transform))
    if late_loss_fn is not None and cfg.step is not None:
        raise recipe.error(("train", "late_loss_params"), "changes the loss of make_step's step; a step factory "
                                                          "(train.step) makes its own, so drop one of them")
    if cfg.step is None:
        base, base_text = make_step(loss_fn), f"make_step({cfg.loss})"
        if late_loss_fn is not None:
            late_text = _call_text(cfg.loss, cfg.late_loss_params)
            base = step_lib.late_switch(base, make_step(late_loss_fn), cfg.late_from)
            base_text = f"late_switch({base_text}, make_step({late_text}), start={cfg.late_from:g})"
    else:
        where = recipe.where("train", "step")
        if not registry.is_import_path(cfg.step):
            raise RecipeError(f"{where}: expected an import path 'package.module:attr' of a step factory, "
                              f"got {cfg.step!r}")
        factory = registry.import_path(cfg.step, where)
        base, base_text = registry.call(factory, where, loss_fn), f"{cfg.step}({cfg.loss})"
        if not callable(base):
            raise RecipeError(f"{where}: the step factory returned a {type(base).__name__}, not a step")
        if chain and not isinstance(base, Step):
            raise RecipeError(f"{where}: step transformers need a Step record (forward, backward, update); this "
                              "factory returned a plain function, so drop train.steps and the convenience keys")
    if not chain:
        return base, base_text
    step = toolz.compose(*[t for _, t in chain])(base)
    return step, f"compose({', '.join(text for text, _ in chain)})({base_text})"


def _explained(recipe: Recipe, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` raising a :class:`RecipeError` naming ``run.deterministic`` where torch finds no deterministic kernel."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:
            op = environment.nondeterministic_op(e)
            if op is None:
                raise
            raise recipe.error(("run", "deterministic"),
                               f"the op {op} has no deterministic CUDA kernel, and run.deterministic = true asks "
                               "for deterministic kernels; set run.deterministic = false (--set "
                               "run.deterministic=false) to train with it — a replay is then not bit-exact on "
                               "the GPU — or avoid the op") from None

    return guarded


def explain_nondeterminism(recipe: Recipe, step: Callable[..., Any],
                           validation: Validation | None) -> tuple[Callable[..., Any], Validation | None]:
    """The step and validation with torch's "no deterministic implementation" errors turned into recipe errors.

    Each phase of a :class:`Step` is wrapped (so it stays a ``Step``), a plain
    step function as a whole, and the evaluator's ``update``:
    ``step, validation = explain_nondeterminism(recipe, step, validation)``.
    """
    if isinstance(step, Step):
        step = attrs.evolve(step, forward=_explained(recipe, step.forward),
                            backward=_explained(recipe, step.backward), update=_explained(recipe, step.update))
    else:
        step = _explained(recipe, step)
    if validation is not None:
        ev = validation.evaluator
        validation = attrs.evolve(validation, evaluator=attrs.evolve(ev, update=_explained(recipe, ev.update)))
    return step, validation


# --------------------------------------------------------------------------- validation and callbacks


def make_validation(recipe: Recipe, val: Any, info: Mapping[str, Any] | None = None) -> Validation | None:
    """The recipe's validation over ``val`` data, or None when there is none (``every = 0`` or no data).

    The evaluator factory's parameters named like ``info``'s keys are filled from it:
    ``train, val, info = make_data(recipe)``; ``Loop(..., validation=make_validation(recipe, val, info))``
    """
    cfg = recipe.validation
    where = recipe.where("validation", "metrics")
    fn = registry.resolve("metrics", cfg.metrics, where)
    filled = filled_from(fn, cfg.params, info or {})
    registry.check_params(fn, cfg.params, _file(recipe, "validation", "params"), supplied=filled,
                          key="validation.params", label=cfg.metrics)
    if val is None or cfg.every == 0:
        return None
    site = _site(recipe, ("validation", "metrics"), cfg.metrics, (("validation", "params"), cfg.params))
    ev = registry.call(fn, site, **filled, **cfg.params)
    if not all(callable(getattr(ev, a, None)) for a in ("init", "update", "finish")):
        raise RecipeError(f"{where}: {cfg.metrics} returned a {type(ev).__name__}, not an Evaluator "
                          "(init, update, finish)")
    if cfg.use_ema and not (recipe.train.ema > 0 or any(s.use == "ema" for s in recipe.train.steps)):
        raise recipe.error(("validation", "use_ema"), "there are no EMA params; set train.ema (e.g. 0.999) "
                                                      "or set use_ema = false")
    autocast = _AUTOCAST.get(resolved_precision(recipe)[0]) if cfg.precision == "train" else None
    return Validation(val, ev, every=cfg.every, use_ema=cfg.use_ema, first=cfg.first, last=cfg.last,
                      autocast=autocast)


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _monitors(monitor: str, mode: str, min_delta: float, monitors: Any) -> list[Monitor]:
    if monitors:
        if not (isinstance(monitors, (list, tuple)) and all(isinstance(m, Mapping) for m in monitors)):
            raise ValueError("monitors must be an array of tables {name = ..., mode = ..., min_delta = ...}")
        return [Monitor(**m) for m in monitors]
    return [Monitor(monitor, mode, min_delta)]


def early_stopping_callback(monitor: str = "val/loss", mode: str = "min", min_delta: float = 0.0,
                            patience: int = 10, restore_best: bool = True, monitors: Any = ()) -> tuple[Callback, ...]:
    """:func:`~smartcash_fn.callbacks.early_stopping` from recipe values; ``monitors`` (tables) watches several.

    ``[[callbacks]]`` ``use = "early_stopping"``, ``monitor = "val/acc"``, ``mode = "max"``, ``patience = 5``
    """
    return early_stopping(_monitors(monitor, mode, min_delta, monitors), patience=patience, restore_best=restore_best)


def reduce_on_plateau_callback(monitor: str = "val/loss", mode: str = "min", factor: float = 0.1,
                               patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                               cooldown: int = 0, min_scale: float = 0.0) -> Callback:
    """:func:`~smartcash_fn.callbacks.reduce_on_plateau` from recipe values.

    ``[[callbacks]]`` ``use = "reduce_on_plateau"``, ``factor = 0.5``, ``patience = 3``
    """
    return reduce_on_plateau(Monitor(monitor, mode), factor=factor, patience=patience, threshold=threshold,
                             threshold_mode=threshold_mode, cooldown=cooldown, min_scale=min_scale)


def _needs_arguments(fn: Any) -> list[str]:
    params = registry.parameters(fn)
    if not params:
        return []
    return [n for n, p in params.items() if p.default is p.empty]


def make_callbacks(recipe: Recipe, context: Mapping[str, Any] | None = None) -> tuple[Callback, ...]:
    """The ``[[callbacks]]`` of the recipe as Callbacks (checkpoints and loggers are added by :func:`build`).

    A plain ``state -> state`` function named with ``event`` becomes ``Callback(event, fn, priority)``;
    anything else is a factory called with the table's parameters, those it
    takes named like ``context``'s keys filled from it when the table leaves
    them out (:func:`build` gives the data's info, ``run_dir``,
    ``val_data``, ``use_ema`` and ``tensorboard``, the ``[loggers]`` switch):
    ``loop.add(*make_callbacks(recipe))``.
    """
    context = context or {}
    out: list[Callback] = []
    for i, c in enumerate(recipe.callbacks):
        where = recipe.where("callbacks", i, "use")
        obj = registry.resolve("callback", c.use, where)
        label = c.use.rpartition(":")[2].rpartition(".")[2]
        if c.event is not None:
            site = _site(recipe, ("callbacks", i), c.use, (("callbacks", i), c.params))
            fn = registry.call(obj, site, **c.params) if c.params else obj
            if not callable(fn):
                raise RecipeError(f"{where}: {c.use} is a {type(fn).__name__}, not a function state -> state")
            cbs: tuple[Callback, ...] = (Callback(c.event, fn, priority=c.priority or 0, name=label),)
        else:
            need = _needs_arguments(obj)
            if need and not c.params and registry.is_import_path(c.use):
                raise RecipeError(
                    f"{where}: {c.use} needs {', '.join(repr(n) for n in need)}; if it is a plain state -> state "
                    f"function, add event = \"epoch_end\" (or another of {', '.join(EVENTS)}) to the table")
            filled = filled_from(obj, c.params, context)
            registry.check_params(obj, c.params, _file(recipe, "callbacks", i), supplied=filled,
                                  key=f"callbacks[{i}]", label=c.use)
            made = registry.call(obj, _site(recipe, ("callbacks", i), c.use, (("callbacks", i), c.params)),
                                 **filled, **c.params)
            try:
                cbs = flatten([made])
            except StateError:
                raise RecipeError(f"{where}: {c.use} returned a {type(made).__name__}, not a Callback or Callbacks; "
                                  "for a plain state -> state function add event = \"epoch_end\" (or another "
                                  "event)") from None
            if c.priority is not None:
                cbs = tuple(attrs.evolve(cb, priority=c.priority) for cb in cbs)
        out.extend(cbs)
    return tuple(out)


_LOGGERS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("csv", sinks.csv_log),
    ("jsonl", sinks.jsonl_log),
    ("tensorboard", sinks.tensorboard_log),
    ("plots", plots.plot_curves),
    ("summary", summary.write_summary),
    ("console", console.console),
)
"""``[loggers]`` key -> the writer factory it switches on (``console`` takes ``quiet``, the others the run folder;
``tensorboard`` its ``every_steps`` from ``loggers.tensorboard_every_steps``)."""


def make_loggers(recipe: Recipe, run_dir: Path | None, quiet: bool = False, progress: str | None = None,
                 model: Callable[[], Any] | None = None) -> tuple[tuple[Callback, ...], tuple[str, ...], tuple[str, ...]]:
    """The logger callbacks ``[loggers]`` asks for, notes about them (none today), and the console's names.

    Loggers that write files need ``run_dir``. The console is always there
    to say the run's start and end; ``loggers.console = false`` or ``quiet``
    leave out its progress and epoch table, and ``progress`` (the command
    line's ``--progress``) wins over ``loggers.progress``; ``model`` gives
    the rows of the summary's ``Model`` section (:meth:`~smartcash_fn.run.footprint.Footprint.rows`):
    ``callbacks, notes, console_names = make_loggers(recipe, Path("runs/a"))``.
    """
    cbs: list[Callback] = []
    notes: list[str] = []
    console_names: list[str] = []
    settings = {"tensorboard": {"every_steps": recipe.loggers.tensorboard_every_steps}, "summary": {"model": model}}
    for key, factory in _LOGGERS:
        if key == "console":
            made = flatten([factory(quiet=quiet or not recipe.loggers.console, run_dir=run_dir,
                                    progress=progress or recipe.loggers.progress,
                                    max_time=seconds_of(recipe.train.max_time))])
            console_names.extend(c.name for c in made)
            cbs.extend(made)
            continue
        if not getattr(recipe.loggers, key) or run_dir is None:
            continue
        made = flatten([factory(run_dir, **settings.get(key, {}))])
        cbs.extend(made)
    return tuple(cbs), tuple(notes), tuple(console_names)


# --------------------------------------------------------------------------- the whole run


def plain_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of the data's ``info`` that are plain data (names, sizes, layers; not ``collate_fn``),
    and the ``problems`` the factory skipped, as text.

    They ride in the state as ``data_info``, so a checkpoint alone rebuilds the model:
    ``plain_info({"classes": 3, "collate_fn": f})`` is ``{"classes": 3}``.
    """
    def is_plain(value: Any) -> bool:
        return all(isinstance(node, (dict, list, tuple, str, int, float, bool, type(None))) for _, node in walk(value))

    plain = {k: tree_map(lambda v: v, v, sequence=list) for k, v in info.items() if k != "problems" and is_plain(v)}
    if info.get("problems"):
        plain["problems"] = [str(p) for p in info["problems"]]
    return plain


def build(recipe: Recipe, run_dir: str | os.PathLike | None = None, *, quiet: bool = False,
          progress: str | None = None) -> Built:
    """The template state and the loop of ``recipe``; with ``run_dir``, checkpoints and file loggers too.

    ``quiet`` and ``progress`` (one of ``auto``, ``bar``, ``lines``, ``none``;
    None: the recipe's ``loggers.progress``) shape the console::

        built = build(recipe, "runs/tiny")          # nothing is written until the loop runs
    """
    if not isinstance(recipe, Recipe):
        raise StateError(f"build: expected a Recipe (smartcash_fn.run.recipe.load(...)), got {type(recipe).__name__}")
    run_dir = None if run_dir is None else Path(run_dir)
    world = distributed.init_from_env(recipe.run.backend or None, recipe.run.device)  # under torchrun
    device = _device(recipe)
    environment.use_deterministic(recipe.run.deterministic, device)  # before any CUDA work
    train, val, info = make_data(recipe)
    train = sharded(train, world.shard())  # this rank's part of each epoch's order
    if device.type != "cpu":
        train = OnDevice(train, str(device))
        val = None if val is None else OnDevice(val, str(device))
    batches = len(train)
    schedule_for, updates = make_schedule(recipe, batches)
    optimizer = make_optimizer(recipe, schedule_for, batches, updates)
    loss_fn = make_loss(recipe, info)
    precision, precision_note = resolved_precision(recipe)
    trained = as_trained(recipe, precision)  # the recipe the step is made from and the states carry
    step, step_text = make_train_step(trained, loss_fn, make_late_loss(recipe, info))
    validation = make_validation(trained, val, info)
    if validation is not None:
        validation = distributed.sharded_validation(validation, world)
    if device.type == "cuda" and recipe.run.deterministic:
        step, validation = explain_nondeterminism(recipe, step, validation)
    notes: list[str] = [] if precision_note is None else [precision_note]
    if recipe.data.small_size:
        notes.append(f"data: the first {recipe.data.small_share:.0%} of the epochs planned train on "
                     f"{recipe.data.small_size}-px images")
    if recipe.data.plain_epochs:
        notes.append(f"data: the last {plural(recipe.data.plain_epochs, 'epoch')} planned train without augmentation")
    short = warmup_note(recipe, updates)
    if short:
        notes.append(short)
    if recipe.train.late_loss_params:
        notes.append(f"train: from {recipe.train.late_from:.0%} of the epochs planned the loss takes "
                     f"{', '.join(f'{k} = {v!r}' for k, v in recipe.train.late_loss_params.items())}")
    if val is None and recipe.validation.every > 0:
        notes.append("validation: off, the data factory gives no validation data")
    context = {**{k: v for k, v in info.items() if k != "collate_fn"}, "run_dir": run_dir,
               "val_data": None if validation is None else validation.data, "use_ema": recipe.validation.use_ema,
               "tensorboard": recipe.loggers.tensorboard}  # loggers.tensorboard = false: no event files at all
    callbacks = list(make_callbacks(recipe, context))
    if recipe.train.max_time is not None:
        callbacks.extend(time_budget(seconds_of(recipe.train.max_time), replan_for(recipe, schedule_for, batches),
                                     cost=timed_costs(train, step),
                                     validated=None if validation is None else validation.due))
    problems = tuple(info.get("problems") or ())
    if problems:
        notes.append(f"data: {plural(len(problems), 'bad file or label line', 'bad files or label lines')} skipped "
                     f"(first: {problems[0]})"
                     + ("; listed in data-problems.txt and counted in summary.md" if run_dir is not None else ""))
        if run_dir is not None:
            callbacks.append(data_problems(run_dir, problems))
    callbacks.append(distributed.replicas(global_batch=global_batch(recipe, world.size),
                                          single_batch=per_rank_batch(recipe, 1)))
    if world.size > 1:
        callbacks.extend(distributed.agree_on_stop(every_batch=needs_batch_agreement(recipe, callbacks)))
        callbacks.append(distributed.check_every_epoch())
    cp = recipe.checkpoint
    monitor = None if cp.monitor is None else Monitor(cp.monitor, cp.mode)
    if monitor is not None and not any(c.name == "keep_best" for c in callbacks):
        callbacks.append(keep_best(monitor))
    if run_dir is not None:
        callbacks.append(weights_file(run_dir / "weights.pt", use_ema=recipe.validation.use_ema))
        callbacks.extend(checkpointing(run_dir / "checkpoints", every_epochs=cp.every_epochs,
                                       every_steps=cp.every_steps, monitor=monitor, top_k=cp.top_k,
                                       keep_periodic=cp.keep_periodic))
    factory = with_sync_bn(recipe, make_model_factory(recipe, info), world.size, device)
    if device.type != "cpu":
        factory = toolz.compose(lambda m: m.to(device), factory)
    try:
        template = TrainState.create(factory, optimizer, seed=recipe.run.seed,
                                     recipe=to_dict(trained))
    except ValueError as e:  # a param group's label function or the optimizer's init refused the params
        raise RecipeError(f"{recipe.where('optimizer')}: {e}") from None
    template = template.replace(data_info=plain_info(info))
    notes.extend(getattr(template.model, "notes", ()))  # what the model says about itself (from scratch, ...)
    model_footprint = functools.cache(lambda: footprint_of(template, train if validation is None else validation.data))
    loggers, logger_notes, console = make_loggers(recipe, run_dir, quiet=quiet, progress=progress,
                                                  model=lambda: model_footprint().rows())
    callbacks.extend(loggers)
    notes.extend(logger_notes)
    loop = Loop(step=step, data=train, epochs=recipe.train.epochs, validation=validation, callbacks=tuple(callbacks))
    return Built(recipe=recipe, template=template, loop=loop, run_dir=run_dir, batches=batches, updates=updates,
                 step_text=step_text, notes=tuple(notes), console=console, footprint=model_footprint)


AGREED_AT_BATCH_END = ("nan_guard", "record_steps")
"""Batch-end callbacks whose decisions read only what every rank holds alike (params, the averaged step metrics)."""


def needs_batch_agreement(recipe: Recipe, callbacks: Any) -> bool:
    """Whether a data-parallel run must agree on stops after every batch (one small all-reduce a step).

    Not when every ``batch_end`` callback either writes (a writer cannot stop
    a run) or reads only agreed values (:data:`AGREED_AT_BATCH_END`) and no
    gradient accumulation leaves a batch's metrics unaveraged; stops are then
    the same on every rank by construction, and the epoch-end agreement
    remains: ``needs_batch_agreement(recipe, callbacks)``.
    """
    if _accumulation(recipe) > 1:
        return True
    return any(c.event == "batch_end" and not c.writes and c.name not in AGREED_AT_BATCH_END
               for c in flatten(callbacks))


def data_problems(run_dir: str | os.PathLike, problems: Any, priority: int = 1150) -> Callback:
    """A writer listing the bad data files and lines a data factory skipped (``info["problems"]``).

    ``data-problems.txt`` in the run folder lists them at ``training_start``;
    the summary counts them from the state's ``data_info``::

        loop = loop.add(data_problems("runs/a", splits.info["problems"]))
    """
    path = Path(run_dir) / "data-problems.txt"
    text = "".join(f"{p}\n" for p in problems)

    def start(state: TrainState) -> TrainState:
        write_text_atomic(path, text)
        return state

    return writer("training_start", start, priority=priority, name="data_problems")


def probe(built: Built) -> float:
    """Run one training step (discarded) and one validation batch, so shape mistakes show before training.

    Returns the first batch's loss. A failure is a :class:`RecipeError` that
    says which part failed: ``probe(build(recipe))``.
    """
    recipe, state, loop = built.recipe, built.template, built.loop
    where = recipe.origin.default
    try:
        batch = next(iter(loop.data.batches(state.seed, 0, 0)))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's data failed; say so without a traceback
        raise RecipeError(f"{where}: data: reading the first training batch failed: {type(e).__name__}: {e}") from None
    try:
        after = loop.step(state, batch)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        if recipe.train.compile and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            raise recipe.error(("train", "compile"), f"torch.compile could not compile the loss function "
                                                     f"({type(e).__name__}: {_first_line(e)}); set train.compile "
                                                     "= false to train it uncompiled") from None
        raise RecipeError(
            f"{where}: a trial step on the first training batch failed: {type(e).__name__}: {_first_line(e)}; "
            "check that the model (model.params) fits the data (data.params) and the loss (train.loss)") from None
    loss = after.metrics.get("loss") if isinstance(after, TrainState) else None
    v = loop.validation
    if v is not None:
        try:
            vbatch = next(iter(v.data.batches(state.seed, 0, 0)))
            v.evaluator.update(v.evaluator.init(), state.apply, vbatch)  # eval mode, no gradient
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            raise RecipeError(f"{where}: validation: the evaluator ({recipe.validation.metrics}) failed on the "
                              f"first validation batch: {type(e).__name__}: {_first_line(e)}") from None
    return math.nan if loss is None else float(loss)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""


def _validated_epochs(v: Validation) -> str:
    """Which epochs ``v`` validates, in words: ``every 4 epochs, the first and the last 3``."""
    if v.every == 1:
        return "every epoch"
    ends = (["the first"] if v.first else []) + ([f"the last {v.last}" if v.last > 1 else "the last"]
                                                  if v.last else [])
    return ", ".join([f"every {v.every} epochs"] + ([" and ".join(ends)] if ends else []))


def describe(built: Built) -> str:
    """A few lines for people: the composed step, batches and updates, and the callbacks by event and priority.

    ``print(describe(build(load("recipes/tiny.toml"))))``
    """
    lines = [f"step: {built.step_text}",
             f"data: {plural(built.batches, 'batch', 'batches')} per epoch x {plural(built.loop.epochs, 'epoch')}; "
             f"schedule spans {plural(built.updates, 'update')}"]
    v = built.loop.validation
    lines.append("validation: " + ("off" if v is None else f"{_validated_epochs(v)}, "
                                   f"{plural(len(v.data), 'batch', 'batches')}" + (", EMA params" if v.use_ema else "")
                                   + ("" if v.autocast is None else f", {str(v.autocast).removeprefix('torch.')}")))
    lines.append("callbacks:")
    for event in EVENTS:
        cbs = sorted((c for c in built.loop.callbacks if c.event == event), key=lambda c: c.priority)
        for c in cbs:
            lines.append(f"  {event:<16} {c.priority:>6}  {c.name}{'  (writes)' if c.writes else ''}")
    lines += [f"note: {n}" for n in built.notes]
    return "\n".join(lines)
