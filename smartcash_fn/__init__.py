"""smartcash_fn: a functional, composable training DSL for PyTorch.

Immutable :class:`TrainState` records flow through pure steps and epochs;
callbacks are state transformers; a checkpoint is the serialized state, and
a resumed or replayed run reaches the same bits as the run that never stopped::

    import smartcash_fn as sf
    state = sf.TrainState.create(make_model, sf.adamw(1e-3), seed=0)
    loop = sf.Loop(step=sf.make_step(sf.classification_loss), data=sf.TensorData((x, y), 64), epochs=3)
    state = sf.fit(state, loop)
"""

from . import _moved, environment, rng, schedule
from ._version import __version__
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
from .data import Batches, LoaderData, TensorData, epoch_order
from .errors import CheckpointError, DataError, RecipeError, StateError, UserError
from .events import EVENTS, Callback, emit, on
from .loop import Evaluator, Loop, Validation, classification_metrics, fit, per_sample
from .optim import Optimizer, adam, adamw, frozen, label_by_prefix, multi_transform, sgd, switch
from .replay import Difference, replay, resume, verify
from .state import Best, History, Progress, RunInfo, Stop, TrainState
from .step import Step, accumulate, bf16, claim, classification_loss, clip, ema, fp16, make_step, skipped

_moved.install()

__all__ = [
    "EVENTS", "Batches", "Best", "Callback", "CheckpointError", "DataError", "Difference", "Evaluator",
    "History", "LoaderData", "Loop", "Monitor", "Optimizer", "Progress", "RecipeError", "RunInfo", "StateError",
    "Step", "Stop", "TensorData", "TrainState", "UserError", "Validation", "accumulate", "adam", "adamw", "bf16",
    "checkpointing", "claim", "classification_loss", "classification_metrics", "clip", "early_stopping", "ema", "emit",
    "epoch_order", "fit", "fp16", "frozen", "keep_best", "label_by_prefix", "load", "make_step", "memory_cleanup", "multi_transform",
    "nan_guard", "on", "per_sample", "read", "record_steps", "reduce_on_plateau", "replay", "resume", "save",
    "schedule", "sgd", "skipped", "switch", "verify", "rng", "environment", "__version__",
]
