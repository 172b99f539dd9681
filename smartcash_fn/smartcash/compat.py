"""The migration facade: the old SmartCash ``TrainingPipeline`` API, running on the functional core.

A script written for the old pipeline keeps its shape: a config, functions
registered by event name and called with the keyword arguments the old
pipeline passed, ``train()`` returning a results dict, and ``.metrics``
holding the history. Underneath there is no second loop: the config is a
recipe (:func:`smartcash_fn.run.recipe.from_dict`), the run is
:func:`smartcash_fn.run.build.build` and :func:`smartcash_fn.loop.fit`, and each
registered function becomes a :class:`~smartcash_fn.events.Callback` that
reads the state, calls the function and returns the state unchanged::

    pipeline = TrainingPipeline(config=recipe_dict, run_dir="runs/a")
    pipeline.register_callback("epoch_end", lambda epoch, metrics: print(epoch, metrics["val_loss"]))
    results = pipeline.train(save_every=1)      # then pipeline.train(resume_from_checkpoint="runs/a")

Conventions, kept from the old pipeline (docs/migration.md has the whole guide):

- an ``epoch`` handed to a callback is the 0-based index of the epoch, as
  the old loop's ``for epoch in range(start_epoch, epochs)``; ``start_epoch``
  is the number of epochs already done (the index of the first one to train);
- metric names are the recipe's names with ``/`` spelled ``_``:
  ``train/loss`` -> ``train_loss``, ``val/loss`` -> ``val_loss``, ``val/acc``
  -> ``val_acc``, ``lr``, ``lr/head`` -> ``lr_head`` (:func:`old_name`);
- ``training_history`` is ``{name: [value per epoch, ...]}``, what
  ``metrics.get_all_history()`` returns;
- ``best_val_loss`` is ``float("inf")`` when no epoch recorded ``val/loss``.

The registered functions are marked ``writes=True``, so a replay
(:func:`smartcash_fn.replay.replay`) leaves them out; what they return is
ignored, and an exception they raise stops the run (the checkpoints already
written stay, and ``train(resume_from_checkpoint=...)`` goes on from them).
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs

from .._files import write_text_atomic
from ..errors import RecipeError, StateError
from ..events import EVENTS, Callback
from ..loop import fit
from ..report.values import plain
from ..run.build import build, probe
from ..run.folders import find_checkpoint, free_folder, holds_run, run_folder_of
from ..run.recipe import from_dict, load, to_dict, write
from ..run.resume import require_fit, seed_mismatch, state_in
from ..state import TrainState

CALLBACK_ARGUMENTS: Mapping[str, tuple[str, ...]] = {
    "training_start": ("start_epoch", "epochs"),
    "epoch_start": ("epoch",),
    "batch_end": ("epoch", "batch", "loss", "batch_size"),
    "validation_end": ("epoch", "val_loss", "metrics"),
    "epoch_end": ("epoch", "metrics"),
    "checkpoint_saved": ("epoch", "checkpoint_info", "is_best"),
    "training_end": ("epochs_trained", "best_val_loss", "training_history"),
}
"""The keyword arguments each event's functions are called with (``fn(**kwargs)``).

- ``training_start(start_epoch, epochs)``: epochs already done, epochs planned in all;
- ``epoch_start(epoch)``: the epoch about to train (not fired when a run resumes mid-epoch);
- ``batch_end(epoch, batch, loss, batch_size)``: ``batch`` the 0-based index of the batch
  just trained in its epoch, ``loss`` its loss (a float), ``batch_size`` its samples (0: unknown);
- ``validation_end(epoch, val_loss, metrics)``: ``val_loss`` (None without one) and the other
  validation metrics (``{"val_acc": ...}``);
- ``epoch_end(epoch, metrics)``: the epoch's record (``train_loss``, ``lr``, ``val_loss``, ...);
- ``checkpoint_saved(epoch, checkpoint_info, is_best)``: ``checkpoint_info`` holds ``path``,
  ``epoch``, ``step``, ``is_best``, ``best_val_loss`` and ``metrics``;
- ``training_end(epochs_trained, best_val_loss, training_history)``: epochs trained by this call.
"""

PRIORITY: Mapping[str, int] = {event: (2000 if event == "training_end" else 0) for event in EVENTS}
"""Where the old-style functions run among an event's callbacks: after early stopping and
plateau (negative priorities), before the checkpoint writer (1000) so ``checkpoint_saved``
follows ``epoch_end`` as it did; at ``training_end`` after everything (the final checkpoint
and the summary are written)."""

_BOOKKEEPING = ("epoch", "step")
_CONFIG_SOURCE = "TrainingPipeline config"


# --------------------------------------------------------------------------- names and values


def old_name(name: str) -> str:
    """The old pipeline's spelling of a metric name: ``/`` becomes ``_``.

    ``old_name("val/loss") == "val_loss"``; ``old_name("lr/backbone") == "lr_backbone"``
    """
    return name.replace("/", "_")


def old_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """An epoch record in the old names, without the bookkeeping ``epoch`` and ``step``.

    ``old_record(state.history.last())`` -> ``{"train_loss": 0.7, "lr": 0.01, "val_loss": 0.6, "val_acc": 0.8}``
    """
    return {old_name(k): v for k, v in record.items() if k not in _BOOKKEEPING}


def history_by_name(state: TrainState | None) -> dict[str, list[Any]]:
    """The state's epoch history as ``{old name: [value, ...]}``, each over the epochs that recorded it.

    ``epoch`` (0-based) and ``step`` are series too, to line up a metric that is
    not recorded every epoch: ``history_by_name(state)["val_loss"]``.
    """
    out: dict[str, list[Any]] = {}
    if state is None:
        return out
    for record in state.history.epochs:
        for k, v in record.items():
            out.setdefault(old_name(k), []).append(v)
    return out


def best_val_loss(state: TrainState | None) -> float:
    """The lowest ``val/loss`` over the state's history; ``float("inf")`` when there is none (as before).

    ``best_val_loss(pipeline.state)``
    """
    values = [] if state is None else [float(v) for v in state.history.series("val/loss")]
    values = [v for v in values if not math.isnan(v)]
    return min(values) if values else math.inf


def _epoch_done(state: TrainState) -> int:
    """0-based index of the epoch a state just finished (at a boundary) or is in (mid-epoch)."""
    p = state.progress
    return max(p.epoch - 1, 0) if p.batch == 0 else p.epoch


def _batch_sizes(data: Any) -> Callable[[int], int]:
    """Samples in batch ``b`` of ``data``: the nominal size, the last one smaller; 0 when unknown.

    A wrapper that keeps its source in ``data`` (``OnDevice``, ``Finish``) is read through to that source."""
    while not hasattr(data, "num_samples") and not hasattr(data, "dataset") and hasattr(data, "data"):
        data = data.data
    bs = int(getattr(data, "batch_size", 0) or 0)
    n = getattr(data, "num_samples", None)
    if n is None and hasattr(data, "dataset"):
        try:
            n = len(data.dataset)
        except TypeError:
            n = None
    if not bs or n is None or getattr(data, "drop_last", False):
        return lambda b: bs
    return lambda b: max(min(bs, int(n) - b * bs), 0)


# --------------------------------------------------------------------------- the arguments of each event


@attrs.frozen
class CallContext:
    """What the old arguments need beyond the state: the epoch this call started at, the epochs planned,
    the samples in batch ``b``, and the history as ``training_history`` shows it.

    ``CallContext(start_epoch=0, epochs=3, batch_size=lambda b: 32, history=pipeline.metrics.get_all_history)``
    """

    start_epoch: int
    epochs: int
    batch_size: Callable[[int], int]
    history: Callable[[], dict[str, list[Any]]]


def _training_start(state: TrainState, ctx: CallContext) -> dict[str, Any]:
    return {"start_epoch": ctx.start_epoch, "epochs": ctx.epochs}


def _epoch_start(state: TrainState, ctx: CallContext) -> dict[str, Any]:
    return {"epoch": state.progress.epoch}


def _batch_end(state: TrainState, ctx: CallContext) -> dict[str, Any]:
    p = state.progress
    loss = state.metrics.get("loss")
    return {"epoch": p.epoch, "batch": p.batch - 1, "loss": math.nan if loss is None else float(loss),
            "batch_size": ctx.batch_size(p.batch - 1)}


def _validation_end(state: TrainState, ctx: CallContext) -> dict[str, Any]:
    record = state.history.last()
    val = {old_name(k): v for k, v in record.items() if k.startswith("val/") and k != "val/loss"}
    loss = record.get("val/loss")
    return {"epoch": int(record.get("epoch", state.progress.epoch)), "val_loss": None if loss is None else float(loss),
            "metrics": val}


def _epoch_end(state: TrainState, ctx: CallContext) -> dict[str, Any]:
    return {"epoch": state.progress.epoch - 1, "metrics": old_record(state.history.last())}


def _checkpoint_saved(state: TrainState, ctx: CallContext) -> dict[str, Any]:
    st = state.callbacks.get("checkpoint") or {}
    p = state.progress
    is_best = bool(st.get("is_best", False))
    metrics = (old_record(state.history.last()) if p.batch == 0
               else {k: float(v) for k, v in state.metrics.items()})
    info = {"path": st.get("last"), "epoch": _epoch_done(state), "step": p.step, "is_best": is_best,
            "best_val_loss": best_val_loss(state), "metrics": metrics}
    return {"epoch": info["epoch"], "checkpoint_info": info, "is_best": is_best}


def _training_end(state: TrainState, ctx: CallContext) -> dict[str, Any]:
    return {"epochs_trained": state.progress.epoch - ctx.start_epoch, "best_val_loss": best_val_loss(state),
            "training_history": ctx.history()}


_ARGUMENTS: Mapping[str, Callable[[TrainState, CallContext], dict[str, Any]]] = {
    "training_start": _training_start, "epoch_start": _epoch_start, "batch_end": _batch_end,
    "validation_end": _validation_end, "epoch_end": _epoch_end, "checkpoint_saved": _checkpoint_saved,
    "training_end": _training_end,
}


def old_style(event: str, fn: Callable[..., Any], ctx: CallContext,
              seen: Callable[[TrainState], None] = lambda state: None) -> Callback:
    """A :class:`Callback` on ``event`` that calls ``fn(**kwargs)`` with the old arguments and returns the state.

    ``seen(state)`` is told each state first (the facade keeps it for ``.metrics``).
    ``loop.add(old_style("epoch_end", lambda epoch, metrics: print(epoch), ctx))``
    """
    arguments = _ARGUMENTS[event]

    def call(state: TrainState) -> TrainState:
        seen(state)
        fn(**arguments(state, ctx))
        return state

    label = getattr(fn, "__name__", type(fn).__name__)
    return Callback(event, call, priority=PRIORITY[event], name=f"old_style.{event}.{label}", writes=True)


def _check_registration(event: Any, fn: Any) -> None:
    if not isinstance(event, str) or event not in EVENTS:
        near = difflib.get_close_matches(event, EVENTS, n=1) if isinstance(event, str) else []
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise StateError(f"register_callback: unknown event {event!r}; {hint}the events are {', '.join(EVENTS)}")
    if not callable(fn):
        raise StateError(f"register_callback({event!r}, ...): the callback must be callable, got {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: it is called as is
    names = CALLBACK_ARGUMENTS[event]
    try:
        sig.bind(**{n: None for n in names})
    except TypeError as e:
        label = getattr(fn, "__name__", type(fn).__name__)
        raise StateError(
            f"register_callback({event!r}, {label}): {label}{sig} cannot take the keyword arguments of "
            f"{event!r} ({e}); it is called as {label}({', '.join(f'{n}=...' for n in names)}); "
            "add the missing names or **kwargs") from None


# --------------------------------------------------------------------------- .metrics


class TrainingMetrics:
    """The old ``pipeline.metrics``: the run's history by old name, plus the series a script adds.

    The history is read from the newest state the pipeline has seen; values
    added with :meth:`update_history` live here, in the facade, never in the
    :class:`TrainState`, so checkpoints, resume and bit-exact replay do not see
    them (save them with :meth:`save_to_json`; a resumed pipeline starts without them)::

        pipeline.metrics.update_history("map_by_hand", 0.71)
        pipeline.metrics.get_all_history()["val_loss"]
        pipeline.metrics.save_to_json("runs/a/history.json")
    """

    def __init__(self, state: Callable[[], TrainState | None]):
        self._state = state
        self._added: dict[str, list[Any]] = {}

    def get_all_history(self) -> dict[str, list[Any]]:
        """``{name: [values...]}``: the state's series (``train_loss``, ``val_loss``, ``lr``, ``epoch``, ...),
        each followed by the values added to it with :meth:`update_history`, then the added series."""
        out = history_by_name(self._state())
        for name, values in self._added.items():
            out[name] = out.get(name, []) + list(values)
        return out

    def get_history(self, name: str) -> list[Any]:
        """One series by its old or new name (``"val_loss"`` or ``"val/loss"``); ``[]`` when there is none."""
        if not isinstance(name, str):
            raise StateError(f"metrics.get_history: name must be a str, got {type(name).__name__}")
        return self.get_all_history().get(old_name(name), [])

    def update_history(self, name: str, value: Any) -> None:
        """Append ``value`` (a number, or anything JSON can hold; tensors become numbers) to the series ``name``."""
        if not isinstance(name, str) or not name:
            raise StateError(f"metrics.update_history: name must be a non-empty str, got {name!r}")
        self._added.setdefault(old_name(name), []).append(plain(value))

    def save_to_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`get_all_history` to ``path`` as JSON, atomically (the folder is created); returns the path."""
        if not isinstance(path, (str, os.PathLike)):
            raise StateError(f"metrics.save_to_json: path must be a str or os.PathLike, got {type(path).__name__}")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return write_text_atomic(path, json.dumps(self.get_all_history(), indent=2) + "\n")
        except OSError as e:
            raise StateError(f"metrics.save_to_json: cannot write {path} ({e.strerror or e}); "
                             "choose a file you can write to") from None


# --------------------------------------------------------------------------- the pipeline


_GONE = {
    "model_handler": "the model now comes from the config's [model] section (`use` = a built-in name or an "
                     "import path 'package.module:factory', with its parameters in [model.params])",
    "data_manager": "the data now comes from the config's [data] section (`use` = a data factory returning "
                    "Splits(train, val, info), with its parameters in [data.params])",
    "logger": "the run reports through the logging logger 'smartcash_fn' and the config's [loggers] section "
              "(console, csv, jsonl, tensorboard, plots, summary); configure logging instead",
    "dataloaders": "the data now comes from the config's [data] section; batches are drawn in a seeded order "
                   "so a resumed run sees the same ones",
}


def _gone(where: str, name: str) -> StateError:
    return StateError(f"{where}: {name} is no longer taken: {_GONE[name]}; see docs/migration.md")


class TrainingPipeline:
    """The old SmartCash training pipeline's API over :func:`smartcash_fn.loop.fit`.

    ``config`` is a recipe as a dict (the TOML recipes' schema) or a recipe
    file's path; ``run_dir`` is the run folder (default ``<run.out>/<run.name>``,
    a fresh one per run). ``.state`` is the newest :class:`TrainState` (the
    final one after :meth:`train`), ``.run_dir`` the folder of the last run::

        pipeline = TrainingPipeline(config=recipe_dict, run_dir="runs/a")
        pipeline.register_callback("checkpoint_saved", lambda epoch, checkpoint_info, is_best: ...)
        results = pipeline.train()              # results["best_val_loss"], results["training_history"]
    """

    def __init__(self, config: Mapping[str, Any] | str | os.PathLike, run_dir: str | os.PathLike | None = None,
                 *, quiet: bool = False, model_handler: Any = None, data_manager: Any = None, logger: Any = None):

        for name, value in (("model_handler", model_handler), ("data_manager", data_manager), ("logger", logger)):
            if value is not None:
                raise _gone("TrainingPipeline", name)
        if isinstance(config, (str, os.PathLike)):
            self.recipe = load(config)
            given: Mapping[str, Any] = {"every_epochs": None, "monitor": None}  # a file says what it means
        else:
            self.recipe = from_dict(config, source=_CONFIG_SOURCE)
            given = config.get("checkpoint") or {}
            given = given if isinstance(given, Mapping) else {}
        self._config_every = self.recipe.checkpoint.every_epochs if "every_epochs" in given else None
        self._config_monitor = "monitor" in given
        if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
            raise StateError(f"TrainingPipeline: run_dir must be a path (str or os.PathLike), got "
                             f"{type(run_dir).__name__}")
        self._run_dir_asked = None if run_dir is None else Path(run_dir)
        self.quiet = bool(quiet)
        self.run_dir: Path | None = None
        self._callbacks: list[tuple[str, Callable[..., Any]]] = []
        self._state: TrainState | None = None
        self.metrics = TrainingMetrics(lambda: self._state)

    @property
    def state(self) -> TrainState | None:
        """The newest state: the one a running callback sees, the final one after :meth:`train`, else None."""
        return self._state

    def register_callback(self, event: str, callback: Callable[..., Any]) -> None:
        """Call ``callback(**kwargs)`` at ``event`` with the arguments of :data:`CALLBACK_ARGUMENTS`.

        ``pipeline.register_callback("epoch_end", lambda epoch, metrics: print(epoch, metrics))``
        — functions on one event run in the order registered.
        """
        _check_registration(event, callback)
        self._callbacks.append((event, callback))

    def _recipe_for(self, save_every: int | None, epochs: int | None) -> Any:
        recipe = self.recipe
        if save_every is None:
            save_every = 5 if self._config_every is None else self._config_every
        if not isinstance(save_every, int) or isinstance(save_every, bool) or save_every < 0:
            raise RecipeError(f"train(save_every={save_every!r}): expected an int >= 0, the epochs between "
                              "checkpoints (checkpoint.every_epochs; 0: only last.pt and best.pt)")
        cp = attrs.evolve(recipe.checkpoint, every_epochs=save_every)
        if not self._config_monitor and cp.monitor is None:
            cp = attrs.evolve(cp, monitor="val/loss", mode="min")  # the old pipeline kept the best val loss
        recipe = attrs.evolve(recipe, checkpoint=cp)
        if epochs is not None:
            if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
                raise RecipeError(f"train(epochs={epochs!r}): expected an int >= 0 (it replaces train.epochs)")
            recipe = attrs.evolve(recipe, train=attrs.evolve(recipe.train, epochs=epochs))
        return recipe

    def _fresh_folder(self, recipe: Any) -> Path:
        asked = self._run_dir_asked
        if asked is None:
            return free_folder(Path(recipe.run.out) / recipe.run.name)
        if holds_run(asked):
            raise RecipeError(f"run_dir {asked}: the folder already holds a run; go on with it with "
                              f"train(resume_from_checkpoint={str(asked)!r}), or give another run_dir")
        return asked

    def _resumed(self, target: Any, recipe: Any) -> tuple[Path, TrainState, Any, bool]:
        """The run folder, the checkpoint's state fitted to ``recipe``'s build, and whether the recipe changed."""
        if not isinstance(target, (str, os.PathLike)):
            if isinstance(target, Mapping):
                raise _gone("train", "dataloaders")
            raise StateError(f"train: resume_from_checkpoint must be a checkpoint file or a run folder (a path), "
                             f"got {type(target).__name__}")
        found = find_checkpoint(target)
        ckpt = found.path
        home = run_folder_of(ckpt)
        run_dir = self._run_dir_asked or home
        if run_dir.resolve() != home.resolve() and holds_run(run_dir):
            raise RecipeError(f"run_dir {run_dir}: the folder holds another run than {ckpt}'s; go on in "
                              f"{home} (leave run_dir out) or give an empty run_dir")
        wrong_seed = seed_mismatch(found, recipe, called="the config")
        if wrong_seed:
            raise RecipeError(f"{wrong_seed} (or leave resume_from_checkpoint out to start afresh)")
        built = build(recipe, run_dir, quiet=self.quiet)
        state = state_in(found, built.template)
        require_fit(built.template, state, recipe.where("optimizer"), f"the config's optimizer does not fit {ckpt}")
        tree = to_dict(recipe)
        return run_dir, state.replace(recipe=tree), built, found.obj["state"].get("recipe") != tree

    def train(self, resume_from_checkpoint: str | os.PathLike | None = None, save_every: int | None = None, *,
              epochs: int | None = None, dataloaders: Any = None) -> dict[str, Any]:
        """Train (or go on from a checkpoint) and return the old results dict.

        ``resume_from_checkpoint``: a checkpoint file or a run folder (its
        newest intact checkpoint); the run goes on in that folder unless
        ``run_dir`` was given. ``save_every``: epochs between ``epoch-NNNN.pt``
        files (default: the config's ``checkpoint.every_epochs`` when it sets
        one, else 5, the old default); ``last.pt`` and ``best.pt`` are kept
        always. ``epochs`` replaces ``train.epochs``. A checkpoint of a run that
        stopped or is complete is not trained on (no callback is called). The result holds
        ``start_epoch``, ``epochs_trained``, ``best_val_loss``, ``early_stopped``,
        ``training_history``, and ``success``, ``stop_reason``, ``run_dir``::

            results = pipeline.train(resume_from_checkpoint="runs/a", save_every=1)
        """
        if dataloaders is not None:
            raise _gone("train", "dataloaders")
        recipe = self._recipe_for(save_every, epochs)
        if resume_from_checkpoint is None:
            run_dir = self._fresh_folder(recipe)
            built = build(recipe, run_dir, quiet=self.quiet)
            probe(built)
            state, changed = built.template, True
        else:
            run_dir, state, built, changed = self._resumed(resume_from_checkpoint, recipe)
        if changed or not (run_dir / "recipe.toml").exists():  # the recipe the run goes on with
            write(recipe, run_dir / "recipe.toml",
                  header="Resolved recipe of this run, written by smartcash_fn's TrainingPipeline.\n"
                         "Train it again with: smartcash-fn train <this file>")
        self.run_dir = run_dir
        self._state = state
        ctx = CallContext(start_epoch=state.progress.epoch, epochs=built.loop.epochs,
                       batch_size=_batch_sizes(built.loop.data), history=self.metrics.get_all_history)
        seen = self._see
        loop = built.loop.add(*(old_style(event, fn, ctx, seen) for event, fn in self._callbacks))
        done = state.stop is not None or state.progress.epoch >= built.loop.epochs
        final = state if done else fit(state, loop)  # a stopped or complete run is not trained on
        self._state = final
        stop = final.stop
        return {
            "success": not (stop is not None and stop.failed),
            "start_epoch": ctx.start_epoch,
            "epochs_trained": final.progress.epoch - ctx.start_epoch,
            "best_val_loss": best_val_loss(final),
            "early_stopped": stop is not None and not stop.failed,
            "training_history": self.metrics.get_all_history(),
            "stop_reason": None if stop is None else stop.reason,
            "run_dir": str(run_dir),
        }

    def _see(self, state: TrainState) -> None:
        self._state = state
