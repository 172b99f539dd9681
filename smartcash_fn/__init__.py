"""smartcash_fn: a functional, composable training DSL for PyTorch.

Immutable :class:`TrainState` records flow through pure steps and epochs;
callbacks are state transformers; a checkpoint is the serialized state, and
a resumed or replayed run reaches the same bits as the run that never stopped::

    import smartcash_fn as sf
    state = sf.TrainState.create(make_model, sf.adamw(1e-3), seed=0)
    loop = sf.Loop(step=sf.make_step(sf.classification_loss), data=sf.TensorData((x, y), 64), epochs=3)
    state = sf.fit(state, loop)
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from . import _moved
from ._version import __version__

_moved.install()

_PUBLIC = {
    "accumulate": "step",
    "adam": "optim",
    "adamw": "optim",
    "Batches": "data",
    "Best": "state",
    "bf16": "step",
    "Callback": "events",
    "CheckpointError": "errors",
    "checkpointing": "callbacks",
    "claim": "step",
    "classification_loss": "step",
    "classification_metrics": "loop",
    "clip": "step",
    "DataError": "errors",
    "Difference": "replay",
    "early_stopping": "callbacks",
    "ema": "step",
    "emit": "events",
    "epoch_cost": "data",
    "epoch_data": "data",
    "epoch_order": "data",
    "Evaluator": "loop",
    "EVENTS": "events",
    "Finish": "data",
    "resized": "data",
    "Start": "data",
    "fit": "loop",
    "fp16": "step",
    "frozen": "optim",
    "History": "state",
    "keep_best": "callbacks",
    "label_by_prefix": "optim",
    "load": "checkpoint",
    "LoaderData": "data",
    "Loop": "loop",
    "make_step": "step",
    "memory_cleanup": "callbacks",
    "Monitor": "callbacks",
    "multi_transform": "optim",
    "nan_guard": "callbacks",
    "on": "events",
    "Optimizer": "optim",
    "per_sample": "loop",
    "Progress": "state",
    "read": "checkpoint",
    "RecipeError": "errors",
    "record_steps": "callbacks",
    "reduce_on_plateau": "callbacks",
    "replay": "replay",
    "resume": "replay",
    "RunInfo": "state",
    "save": "checkpoint",
    "sgd": "optim",
    "skipped": "step",
    "StateError": "errors",
    "Step": "step",
    "Stop": "state",
    "switch": "optim",
    "TensorData": "data",
    "TrainState": "state",
    "UserError": "errors",
    "Validation": "loop",
    "unaugmented": "data",
    "verify": "replay",
}
"""Public name -> the module that defines it."""

_MODULES = ("environment", "rng", "schedule")
"""Modules exported whole: ``sf.schedule.cosine``."""


def __getattr__(name: str) -> Any:
    """The public API, imported on first use: ``import smartcash_fn`` alone loads no torch.

    ``smartcash-fn --version`` and ``--help`` stay fast; ``sf.TrainState`` imports the core then.
    """
    if name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    else:
        raise AttributeError(f"module 'smartcash_fn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC) | set(_MODULES))


class _Package(types.ModuleType):
    """The package's module type: a submodule named like a public function (``replay``) never hides it.

    Importing ``smartcash_fn.replay`` would bind the module to the package's
    ``replay``; the function keeps the name, as an eager ``from .replay import
    replay`` would leave it.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _PUBLIC:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # the same names, for readers and tools
    from .callbacks import (
        Monitor,
        checkpointing,
        early_stopping,
        keep_best,
        memory_cleanup,
        nan_guard,
        record_steps,
        reduce_on_plateau,
    )
    from .checkpoint import load, read, save
    from .data import (Batches, Finish, LoaderData, Start, TensorData, epoch_cost, epoch_data, epoch_order, resized,
                       unaugmented)
    from .errors import CheckpointError, DataError, RecipeError, StateError, UserError
    from .events import EVENTS, Callback, emit, on
    from .loop import Evaluator, Loop, Validation, classification_metrics, fit, per_sample
    from .optim import Optimizer, adam, adamw, frozen, label_by_prefix, multi_transform, sgd, switch
    from .replay import Difference, replay, resume, verify
    from .state import Best, History, Progress, RunInfo, Stop, TrainState
    from .step import Step, accumulate, bf16, claim, classification_loss, clip, ema, fp16, make_step, skipped
    from . import environment, rng, schedule

__all__ = [
    "EVENTS", "Batches", "Best", "Callback", "CheckpointError", "DataError", "Difference", "Evaluator",
    "History", "LoaderData", "Loop", "Monitor", "Optimizer", "Progress", "RecipeError", "RunInfo", "StateError",
    "Step", "Stop", "TensorData", "TrainState", "UserError", "Validation", "accumulate", "adam", "adamw", "bf16",
    "checkpointing", "claim", "classification_loss", "classification_metrics", "clip", "early_stopping", "ema", "emit",
    "epoch_cost", "epoch_data", "epoch_order", "Finish", "fit", "fp16", "frozen", "keep_best", "label_by_prefix", "load", "make_step", "memory_cleanup", "multi_transform",
    "nan_guard", "on", "per_sample", "read", "record_steps", "reduce_on_plateau", "replay", "resized", "resume", "save",
    "schedule", "sgd", "skipped", "Start", "switch", "unaugmented", "verify", "rng", "environment", "__version__",
]
