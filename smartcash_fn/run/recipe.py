"""TOML recipes: read, merge, override, validate and structure a run's whole configuration.

A recipe is a TOML file read with ``tomli`` and structured by ``cattrs``
into the frozen attrs records below (:class:`Recipe` and its sections). It
is checked completely before anything is built: unknown keys (with a
did-you-mean), wrong types, missing required keys and values out of range
each get a :class:`~smartcash_fn.errors.RecipeError` line naming the file
(or the ``--set`` argument) and the dotted key::

    recipe = load("recipes/tiny.toml", sets=["train.epochs=5"])
    recipe.train.epochs, recipe.optimizer.lr        # 5, 0.003
    write(recipe, "runs/tiny/recipe.toml")          # the resolved recipe, plain TOML

``extends = "base.toml"`` (or an array of files) inherits from other
recipes, paths relative to the file that names them, or a built-in recipe's
name (``extends = "rupiah_yolo"``): tables merge key by key, everything else
(numbers, strings, arrays, arrays of tables) is replaced whole; a cycle is an
error. A table that names another component than its base (``[data] use =
"yolo_dataset"`` over the synthetic scenes) does not inherit the base's
parameters of the component it replaces (:data:`COMPONENT_PARAMS`).
``--set key=value`` overrides any key after the merge, the value read as
TOML (a bare word that is not TOML is a string); a ``--set`` of a
component's name likewise leaves the recipe's parameters of it behind.

``python -m smartcash_fn.run.recipe --reference`` prints the reference of every
key (generated from the records), ``--update-readme`` writes it into README.md.
"""

import copy
import json
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable, Literal, Union

import attrs
import cattrs
import cattrs.gen
import tomli

from .._files import write_text_atomic
from ..errors import RecipeError
from ..report.toml import dumps, toml_value
from ..tree import tree_map
from . import library, registry
from .registry import suggest

KeyPath = tuple  # of str (table keys) and int (array indices)
Precision = Literal["fp32", "bf16", "fp16", "auto"]
Mode = Literal["min", "max"]
Event = Literal["training_start", "epoch_start", "batch_end", "validation_end", "epoch_end",
                "checkpoint_saved", "training_end"]


# --------------------------------------------------------------------------- schema


def _key(default: Any = attrs.NOTHING, doc: str = "", *, check: tuple | None = None, factory: Any = None) -> Any:
    """A recipe key: its default (none: required), a one-line ``doc``, and an optional range ``check``."""
    metadata: dict[str, Any] = {"doc": doc}
    if check is not None:
        metadata["check"] = check
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


_AT_LEAST_0 = (lambda v: v >= 0, "a number >= 0")
_INT_AT_LEAST_0 = (lambda v: v >= 0, "an integer >= 0")
_INT_AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
_DECAY = (lambda v: 0 <= v < 1, "a number in [0, 1) (0 is off)")
_FRACTION = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def seconds_of(value: Any) -> float | None:
    """Seconds of a duration: a number of seconds, or a string of hours, minutes and seconds; None if neither.

    ``seconds_of(90) == seconds_of("90s") == seconds_of("1m30s") == 90.0``; ``seconds_of("1h30m") == 5400.0``.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip().replace(" ", "")
    m = _DURATION.fullmatch(text)
    if not text or m is None or not any(m.groups()):
        return None
    h, mi, se = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + se


_DURATION_CHECK = (lambda v: (seconds_of(v) or 0) > 0,
                   'seconds > 0, or a duration like "90s", "10m", "1h30m"')
_NAME = (lambda v: bool(v) and "/" not in v and "\\" not in v and v not in (".", ".."),
         "a folder name (not empty, no slashes)")
_OPTIONAL_NAME = (lambda v: v == "" or _NAME[0](v), "a folder name (no slashes)")
MAX_LR = 1e3
"""The largest learning rate a recipe may ask for: beyond it an update overflows to inf within a step or two."""
_LR = (lambda v: 0 <= v <= MAX_LR, f"a learning rate in [0, {MAX_LR:g}]")
_SEED = (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)")
INT64 = (-(2**63), 2**63 - 1)
"""TOML integers are 64-bit: a recipe's integers must lie in this range (the reader accepts larger ones)."""


@attrs.frozen(kw_only=True)
class RunConfig:
    """`[run]`: the run's name, seed and where its folder goes.

    ``[run]`` ``name = "tiny"``, ``seed = 0``, ``out = "runs"`` -> the run folder ``runs/tiny``
    """

    name: str = _key("", "name of the run and of its folder `<out>/<name>`; empty: the recipe file's name",
                     check=_OPTIONAL_NAME)
    seed: int = _key(0, "seed of every random draw: init, data order, dropout, augmentation", check=_SEED)
    out: str = _key("runs", "folder that holds the run folders (relative to the working directory)")
    parent: str | None = _key(None, "the checkpoint this run was forked from (set by `resume --set`)")
    device: str = _key("cpu", "where the model trains: `cpu`, `cuda` or `cuda:N` (batches are moved there); "
                              "bit-exact replay on the CPU, and on CUDA with `deterministic`")
    deterministic: bool = _key(True, "deterministic kernels on CUDA (cuDNN/cuBLAS settings, "
                                     "`torch.use_deterministic_algorithms`) so a replay is bit-exact there too; "
                                     "`false` trades that for speed. No effect (and no cost) on the CPU")
    backend: Literal["", "gloo", "nccl"] = _key("", "torch.distributed backend under `torchrun`: `gloo` or `nccl`; "
                                                     "empty: nccl for a CUDA device, gloo otherwise")


@attrs.frozen(kw_only=True)
class ModelConfig:
    """`[model]`: the model factory and its parameters.

    ``[model]`` ``use = "mlp"`` and ``[model.params]`` ``hidden = [64, 64]``
    """

    use: str = _key(doc="model factory: a built-in name or an import path `package.module:attr`")
    params: Mapping[str, Any] = _key(
        doc="keyword arguments of the factory; those named like the data's info (`in_features`, `classes`, "
            "...) are filled from the data when left out", factory=dict)


@attrs.frozen(kw_only=True)
class DataConfig:
    """`[data]`: the data factory, batching and loader workers.

    ``[data]`` ``use = "synthetic"``, ``batch_size = 32`` and ``[data.params]`` ``samples = 512``
    """

    use: str = _key(doc="data factory: a built-in name or an import path; it returns `Splits(train, val, info)`")
    batch_size: int = _key(32, "samples per training batch", check=_INT_AT_LEAST_1)
    val_batch_size: int | None = _key(None, "samples per validation batch; unset: `batch_size`",
                                      check=_INT_AT_LEAST_1)
    workers: int = _key(0, "loader worker processes for a Dataset (in-memory tensors are batched in-process)",
                        check=_INT_AT_LEAST_0)
    shuffle: bool = _key(True, "shuffle the training order each epoch (a pure function of seed and epoch)")
    drop_last: bool = _key(False, "drop the last, smaller training batch of each epoch")
    global_batch: bool = _key(False, "under `torchrun`, `batch_size` is the global batch, split across the "
                                     "processes (it must divide by their number); false: `batch_size` per process, "
                                     "so the global batch is `batch_size` x world size")
    plain_epochs: int = _key(0, "the last N epochs of the run (of those planned, under `train.max_time`) train on "
                                "the training samples without their augmentation, as validation sees them",
                             check=_INT_AT_LEAST_0)
    small_size: int = _key(0, "the first epochs (a share `small_share` of those planned, under `train.max_time` "
                              "too) train on images of this size, smaller than the data's: cheaper steps, so a time "
                              "budget fits more epochs (0: off)", check=_INT_AT_LEAST_0)
    small_share: float = _key(0.45, "the share of the planned epochs that `small_size` trains", check=_FRACTION)
    params: Mapping[str, Any] = _key(doc="keyword arguments of the data factory", factory=dict)


@attrs.frozen(kw_only=True)
class GroupConfig:
    """`[[optimizer.groups]]`: a parameter group chosen by name prefix.

    ``[[optimizer.groups]]`` ``prefix = "backbone."``, ``lr = 1e-5`` (or ``frozen = true``, or
    ``frozen_epochs = 5`` for a frozen phase first, or ``after_epochs = 5``, ``lr_after = 1e-4``)
    """

    prefix: str = _key(doc="params whose names start with this prefix (the longest matching prefix wins)")
    name: str = _key("", "label of the group (it names the group's part of the optimizer state); empty: the "
                         "prefix without its trailing dot")
    lr: float | None = _key(None, "this group's learning rate; unset: `optimizer.lr`", check=_LR)
    weight_decay: float | None = _key(None, "this group's weight decay; unset: `optimizer.weight_decay`",
                                      check=_AT_LEAST_0)
    frozen: bool = _key(False, "never train these params (no gradient is computed for them)")
    frozen_epochs: int = _key(0, "keep these params frozen for the first N epochs, then train them at `lr` (a "
                                 "frozen-backbone phase; its schedule starts at the switch)", check=_INT_AT_LEAST_0)
    after_epochs: int = _key(0, "after N epochs switch this group to `lr_after`, with fresh optimizer state and "
                                "the schedule restarted (0 is never)", check=_INT_AT_LEAST_0)
    lr_after: float | None = _key(None, "this group's learning rate after `after_epochs`", check=_LR)


@attrs.frozen(kw_only=True)
class OptimizerConfig:
    """`[optimizer]`: the optimizer, its hyperparameters and parameter groups.

    ``[optimizer]`` ``use = "adamw"``, ``lr = 1e-3``, ``weight_decay = 0.05``
    """

    use: str = _key("adamw", "optimizer: a built-in name or an import path to a factory `(lr, **params)`")
    lr: float = _key(1e-3, "learning rate (the peak of the schedule)", check=_LR)
    weight_decay: float | None = _key(None, "weight decay; unset: the optimizer's default (adamw 0.01, "
                                            "sgd and adam 0)", check=_AT_LEAST_0)
    momentum: float = _key(0.0, "momentum (sgd)", check=_AT_LEAST_0)
    nesterov: bool = _key(False, "Nesterov momentum (sgd)")
    betas: tuple[float, float] = _key((0.9, 0.999), "Adam's decay rates of the moment estimates (adam, adamw)")
    eps: float = _key(1e-8, "term added to the denominator (adam, adamw)", check=_AT_LEAST_0)
    params: Mapping[str, Any] = _key(doc="more keyword arguments of the optimizer factory", factory=dict)
    groups: tuple[GroupConfig, ...] = _key((), "parameter groups, each its own lr, weight decay or frozen")


@attrs.frozen(kw_only=True)
class ScheduleConfig:
    """`[schedule]`: the learning-rate schedule over optimizer updates (its `*_steps` keys count updates).

    ``[schedule]`` ``use = "warmup_cosine"``, ``warmup_steps = 100`` (``total_steps`` derived)
    """

    use: str = _key("constant", "schedule: a built-in name or an import path to a factory `(lr, total_steps, "
                                "**params)`")
    total_steps: int | None = _key(None, "optimizer updates the schedule spans (not batches); unset: epochs x batches per epoch / "
                                         "`train.accumulate`", check=_INT_AT_LEAST_1)
    warmup_steps: int = _key(0, "linear warmup updates (warmup_cosine, warmup_linear)", check=_INT_AT_LEAST_0)
    warmup_share: float | None = _key(None, "the most of a run the warmup takes: a run of fewer than `warmup_steps / "
                                            "warmup_share` updates warms up for this share of them (warmup_cosine, "
                                            "warmup_linear)",
                                      check=(lambda v: 0 < v < 1, "a number between 0 and 1"))
    min_lr: float = _key(0.0, "final learning rate (cosine, warmup_cosine, warmup_linear); scaled with each group's lr",
                         check=_LR)
    start_factor: float = _key(0.0, "warmup starts at `lr * start_factor` (warmup_cosine, warmup_linear)",
                               check=_FRACTION)
    step_size: int | None = _key(None, "decay every this many updates (step)", check=_INT_AT_LEAST_1)
    milestones: tuple[int, ...] = _key((), "updates at which to decay (multistep)")
    gamma: float = _key(0.1, "decay factor (step, multistep)", check=_AT_LEAST_0)
    pct_start: float = _key(0.3, "fraction of the run spent rising (one_cycle)", check=_FRACTION)
    div_factor: float = _key(25.0, "start lr = lr / div_factor (one_cycle)", check=(lambda v: v > 0, "a number > 0"))
    final_div_factor: float = _key(1e4, "final lr = start lr / final_div_factor (one_cycle)",
                                   check=(lambda v: v > 0, "a number > 0"))
    anneal: Literal["cos", "linear"] = _key("cos", "shape of the one_cycle phases")
    three_phase: bool = _key(False, "fall back to the start lr before the final decay (one_cycle)")
    params: Mapping[str, Any] = _key(doc="more keyword arguments of the schedule factory", factory=dict)


@attrs.frozen(kw_only=True)
class StepConfig:
    """`[[train.steps]]`: one step transformer; keys beside `use` are its parameters.

    ``steps = [{use = "accumulate", every = 4}, {use = "clip", max_norm = 10.0}]``
    """

    use: str = _key(doc="step transformer: accumulate, clip, ema, bf16, fp16, or an import path to a factory "
                        "`(**params) -> (Step -> Step)`")
    params: Mapping[str, Any] = _key(doc="", factory=dict)


@attrs.frozen(kw_only=True)
class TrainConfig:
    """`[train]`: epochs, the loss and the step composed from transformers.

    ``[train]`` ``epochs = 30``, ``loss = "cross_entropy"``, ``clip = 10.0``, ``precision = "bf16"``
    """

    epochs: int = _key(doc="epochs to train", check=_INT_AT_LEAST_1)
    loss: str = _key("cross_entropy", "loss `(apply, batch) -> loss or (loss, parts)`: a built-in name or an "
                                      "import path")
    loss_params: Mapping[str, Any] = _key(doc="when given (or when the data's info fills some of its "
                                              "parameters), `loss` names a factory called with these to make "
                                              "the loss function", factory=dict)
    late_loss_params: Mapping[str, Any] = _key(doc="`loss_params` that change for the later epochs of the run, "
                                                   "from `late_from` of those planned (under `train.max_time` "
                                                   "too): e.g. `{cls = 1.0}`, naming first and placing boxes "
                                                   "later (empty: off)", factory=dict)
    late_from: float = _key(0.5, "the share of the planned epochs after which `late_loss_params` apply",
                            check=_FRACTION)
    step: str | None = _key(None, "import path to a step factory `(loss_fn) -> Step`; unset: "
                                  "`make_step(loss)`")
    steps: tuple[StepConfig, ...] = _key((), "step transformers, outermost first, composed over the step in "
                                             "the order written")
    precision: Precision = _key("fp32", "forward-pass precision: fp32, bf16 (autocast), fp16 (autocast and "
                                        "loss scaling) or auto (bf16 where `run.device` computes it natively: "
                                        "a CPU with AVX512-BF16 or AMX, a CUDA GPU with bf16; fp32 elsewhere)")
    accumulate: int = _key(1, "average the gradients of this many batches per update", check=_INT_AT_LEAST_1)
    clip: float = _key(0.0, "clip the gradients to this total L2 norm (0 is off)", check=_AT_LEAST_0)
    ema: float = _key(0.0, "decay of an exponential moving average of the params (0 is off)", check=_DECAY)
    compile: bool = _key(False, "compile the loss function with `torch.compile` (its first steps are slow)")
    max_time: Any = _key(None, "a wall-time budget: seconds, or a duration like \"10m\", \"1h30m\"; the first "
                               "epoch is timed and the run plans the epochs that fit (at least 1, at most "
                               "`epochs`), its schedule spanning them", check=_DURATION_CHECK)
    sync_bn: bool = _key(False, "under `torchrun`, BatchNorm statistics over all processes' batches "
                                "(`torch.nn.SyncBatchNorm`; CUDA only: refused on the CPU)")


@attrs.frozen(kw_only=True)
class ValidationConfig:
    """`[validation]`: how often and how the model is evaluated.

    ``[validation]`` ``every = 1``, ``metrics = "classification"``
    """

    every: int = _key(1, "validate every this many epochs (0 is never, whatever `first` and `last` say)",
                      check=_INT_AT_LEAST_0)
    first: bool = _key(False, "validate the first epoch too (under `train.max_time` the plan counts its "
                              "validation time for the epochs that validate)")
    last: int = _key(0, "validate the last N epochs of the run too (of those planned, under `train.max_time`)",
                     check=_INT_AT_LEAST_0)
    precision: Literal["fp32", "train"] = _key(
        "fp32", "forward-pass precision of validation: fp32, or train (`train.precision` as it resolved: bf16 "
                "or fp16 validate under the same autocast, in about 0.6 of the time on an AVX512-BF16 CPU)")
    metrics: str = _key("classification", "evaluator factory: a built-in name or an import path returning an "
                                          "`Evaluator`")
    params: Mapping[str, Any] = _key(doc="keyword arguments of the evaluator factory", factory=dict)
    use_ema: bool = _key(False, "evaluate the EMA params (needs `train.ema` or an ema step)")


@attrs.frozen(kw_only=True)
class CallbackConfig:
    """`[[callbacks]]`: one callback; keys beside `use`, `event` and `priority` are its parameters.

    ``[[callbacks]]`` ``use = "early_stopping"``, ``monitor = "val/acc"``, ``mode = "max"``, ``patience = 5``
    """

    use: str = _key(doc="a built-in callback, or an import path to a callback factory or to a plain "
                        "`state -> state` function")
    event: Event | None = _key(None, "event of a plain `state -> state` function (the function is wrapped as "
                                     "`Callback(event, fn, priority)`)")
    priority: int | None = _key(None, "order among the event's callbacks (lower runs first); unset: the "
                                      "callback's own")
    params: Mapping[str, Any] = _key(doc="", factory=dict)


@attrs.frozen(kw_only=True)
class CheckpointConfig:
    """`[checkpoint]`: which checkpoints are written into `<run>/checkpoints/`.

    ``[checkpoint]`` ``every_epochs = 1``, ``monitor = "val/acc"``, ``mode = "max"``, ``top_k = 3``
    """

    every_epochs: int = _key(1, "write `epoch-NNNN.pt` every this many epochs (0 is off)", check=_INT_AT_LEAST_0)
    every_steps: int = _key(0, "write `step-NNNNNNNN.pt` every this many steps (batches trained, not "
                                       "optimizer updates; 0 is off)", check=_INT_AT_LEAST_0)
    monitor: str | None = _key(None, "metric that picks `best.pt` and the top-k (e.g. `val/loss`); unset: none")
    mode: Mode = _key("min", "whether the monitored metric is better `min` or `max`")
    top_k: int = _key(1, "keep the k best epochs as `top-epoch-NNNN.pt` (with `monitor`; 0: only best.pt)",
                      check=_INT_AT_LEAST_0)
    keep_periodic: int = _key(0, "keep only the newest N periodic checkpoints (0 keeps all)",
                              check=_INT_AT_LEAST_0)


@attrs.frozen(kw_only=True)
class LoggersConfig:
    """`[loggers]`: what the run writes beside its checkpoints.

    ``[loggers]`` ``tensorboard = false`` (every logger is on unless turned off)
    """

    csv: bool = _key(True, "`metrics.csv`, one row per epoch")
    jsonl: bool = _key(True, "`metrics.jsonl`, one line per epoch and per recorded step")
    tensorboard: bool = _key(True, "TensorBoard event files in `tensorboard/`: epoch metrics, figures, the "
                                   "hyperparameters with the final and best metrics (HParams); false: none at all "
                                   "(a callback taking `tensorboard`, as `detection_plots`, follows it unless its "
                                   "table sets it)")
    tensorboard_every_steps: int = _key(10, "TensorBoard: the step metrics (`train/loss_step`) and the learning "
                                            "rate of each parameter group (`lr_step`) every this many steps "
                                            "(batches; 0 is off)", check=_INT_AT_LEAST_0)
    plots: bool = _key(True, "metric curves as PNG files in `plots/`")
    console: bool = _key(True, "progress and a table row per epoch on the terminal (false: only the run's start, "
                               "end and warnings)")
    progress: Literal["auto", "bar", "lines", "none"] = _key(
        "auto", "progress inside an epoch: `auto` (a bar on a terminal, a line every 10% or 30 s elsewhere), `bar`, "
                "`lines` or `none`; `--progress` on `train`/`resume` wins")
    summary: bool = _key(True, "`summary.md` at the end of the run")


@attrs.frozen
class Origin:
    """Where each key of a merged recipe came from: a recipe file or a ``--set`` argument.

    ``origin.of(("train", "epochs"))`` is the source of the nearest key on that
    path, else ``default`` (the recipe named on the command line)::

        Origin("recipes/a.toml", {("train", "epochs"): "--set train.epochs=5"}).of(("train", "epochs"))
    """

    default: str = "<recipe>"
    keys: Mapping[KeyPath, str] = attrs.field(factory=dict)

    def of(self, path: Iterable[str | int]) -> str:
        """The source of ``path``: its own, its nearest parent's, or the default."""
        path = tuple(path)
        for n in range(len(path), 0, -1):
            src = self.keys.get(path[:n])
            if src is not None:
                return src
        return self.default


@attrs.frozen(kw_only=True)
class Recipe:
    """A whole, validated recipe: one record per section.

    Built by :func:`load` (a file), :func:`from_dict` (a checkpoint's
    recipe) or :func:`loads` (TOML text). ``origin`` says where each key came
    from, so later errors (an unknown component, a bad parameter) name the
    file; it takes no part in equality::

        recipe = load("recipes/tiny.toml")
        recipe.model.use, recipe.train.epochs
    """

    run: RunConfig = _key(doc="", factory=RunConfig)
    model: ModelConfig = _key(doc="")
    data: DataConfig = _key(doc="")
    optimizer: OptimizerConfig = _key(doc="", factory=OptimizerConfig)
    schedule: ScheduleConfig = _key(doc="", factory=ScheduleConfig)
    train: TrainConfig = _key(doc="")
    validation: ValidationConfig = _key(doc="", factory=ValidationConfig)
    checkpoint: CheckpointConfig = _key(doc="", factory=CheckpointConfig)
    callbacks: tuple[CallbackConfig, ...] = _key((), "callbacks, each with `use` and its parameters")
    loggers: LoggersConfig = _key(doc="", factory=LoggersConfig)
    origin: Origin = attrs.field(factory=Origin, eq=False, repr=False, metadata={"internal": True})

    def where(self, *path: str | int) -> str:
        """``"<file>: <dotted key>"`` for messages about the key at ``path``: ``recipe.where("train", "loss")``."""
        return f"{self.origin.of(path)}: {dotted(path)}"

    def error(self, path: Iterable[str | int], text: str) -> RecipeError:
        """A :class:`RecipeError` about the key at ``path``: ``raise recipe.error(("train", "clip"), "...")``."""
        return RecipeError(f"{self.where(*tuple(path))}: {text}")


_INLINE = {StepConfig: ("use",), CallbackConfig: ("use", "event", "priority")}
"""Tables whose keys beside the reserved ones are the component's parameters."""


def _fields(cls: type) -> list[attrs.Attribute]:
    return [f for f in attrs.fields(cls) if not f.metadata.get("internal")]


# --------------------------------------------------------------------------- messages


def dotted(path: Iterable[str | int]) -> str:
    """``("callbacks", 0, "patience")`` -> ``"callbacks[0].patience"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _got(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


def _optional_inner(tp: Any) -> Any:
    """``T`` for ``T | None``, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def _expected(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return _expected(inner)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if attrs.has(tp) or typing.get_origin(tp) is Mapping or tp is dict:
        return "a table"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            item = args[0]
            return "an array of tables" if attrs.has(item) else f"an array of {_type_name(item)}s"
        return f"an array of {len(args)} {_type_name(args[0])}s"
    return _type_name(tp)


def _type_name(tp: Any) -> str:
    """Short human name of a recipe type, for messages and the reference."""
    inner = _optional_inner(tp)
    if inner is not None:
        return _type_name(inner)
    names = {bool: "boolean", int: "integer", float: "number", str: "string", Any: "any"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if attrs.has(tp) or origin is Mapping or tp is dict:
        return "table"
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return "array of tables" if attrs.has(args[0]) else f"array of {_type_name(args[0])}s"
        return f"array of {len(args)} {_type_name(args[0])}s"
    return getattr(tp, "__name__", str(tp))


# --------------------------------------------------------------------------- validation


def origin_is_mapping(tp: Any) -> bool:
    """Whether the recipe type ``tp`` is a free-form table (a component's ``params``)."""
    return typing.get_origin(tp) is Mapping or tp is dict


def _ints(value: Any, path: KeyPath) -> list[tuple[KeyPath, int]]:
    """Every integer (not bool) inside ``value`` with its key path (free-form ``params`` tables)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [(path, value)]
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in _ints(v, path + (k,))]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in _ints(v, path + (i,))]
    return []


def _check_value(value: Any, tp: Any, path: KeyPath, problems: list[tuple[KeyPath, str]]) -> bool:
    """Check ``value`` against the recipe type ``tp``; add ``(path, text)`` problems; True when it fits."""
    inner = _optional_inner(tp)
    if inner is not None:
        return _check_value(value, inner, path, problems)
    if tp is Any or origin_is_mapping(tp):
        big = [(p, v) for p, v in _ints(value, path) if not INT64[0] <= v <= INT64[1]]
        for p, v in big:
            problems.append((p, f"{v} does not fit in a 64-bit integer (TOML's integers are 64-bit)"))
        if big or tp is Any:
            return not big
    if attrs.has(tp):
        return _check_table(value, tp, path, problems)
    origin = typing.get_origin(tp)
    ok: bool
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not INT64[0] <= value <= INT64[1]:
            problems.append((path, f"expected an integer, got {value}, which does not fit in 64 bits "
                                   "(TOML's integers are 64-bit)"))
            return False
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is Mapping or tp is dict:
        ok = isinstance(value, dict)
    elif origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return True
        hint = suggest(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        problems.append((path, f"expected {_expected(tp)}, got {_got(value)}{hint}"))
        return False
    elif origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            ok = False
        elif len(args) == 2 and args[1] is Ellipsis:
            return all([_check_value(v, args[0], path + (i,), problems) for i, v in enumerate(value)])
        elif len(value) != len(args):
            problems.append((path, f"expected {_expected(tp)}, got an array of {len(value)}"))
            return False
        else:
            return all([_check_value(v, a, path + (i,), problems) for i, (v, a) in enumerate(zip(value, args))])
    else:  # pragma: no cover - the schema uses only the types above
        raise TypeError(f"recipe schema: unsupported type {tp!r} at {dotted(path)}")
    if not ok:
        problems.append((path, f"expected {_expected(tp)}, got {_got(value)}"))
    return ok


def _check_table(value: Any, cls: type, path: KeyPath, problems: list[tuple[KeyPath, str]]) -> bool:
    if not isinstance(value, dict):
        problems.append((path, f"expected a table, got {_got(value)}"))
        return False
    before = len(problems)
    fields = {f.name: f for f in _fields(cls)}
    reserved = _INLINE.get(cls)
    known = [n for n in fields if reserved is None or n in reserved]
    if reserved is None:
        for k in value:
            if k not in fields:
                kind = "section" if not path else "key"
                hint = suggest(k, known) or f"; {'sections' if not path else 'keys'} here: {', '.join(known)}"
                problems.append((path + (k,), f"unknown {kind}{hint}"))
    for name in known:
        f = fields[name]
        if name not in value:
            if f.default is attrs.NOTHING:
                what = f"section [{dotted(path + (name,))}]" if attrs.has(f.type) else "key"
                problems.append((path + (name,), f"missing required {what}; add it to the recipe"))
            continue
        if _check_value(value[name], f.type, path + (name,), problems):
            check = f.metadata.get("check")
            v = value[name]
            if check is not None and not check[0](v):
                problems.append((path + (name,), f"expected {check[1]}, got {_got(v)}"))
    return len(problems) == before


# --------------------------------------------------------------------------- structuring (cattrs)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    for cls, reserved in _INLINE.items():
        def structure(data: Mapping[str, Any], cl: type, reserved: tuple = reserved) -> Any:
            own = {k: data[k] for k in reserved if k in data}
            return cl(**own, params={k: v for k, v in data.items() if k not in reserved})

        def unstructure(obj: Any, reserved: tuple = reserved) -> dict[str, Any]:
            out = {k: getattr(obj, k) for k in reserved if getattr(obj, k) is not None}
            out.update(_plain(obj.params))
            return out

        conv.register_structure_hook(cls, structure)
        conv.register_unstructure_hook(cls, unstructure)
    conv.register_structure_hook(
        Recipe, cattrs.gen.make_dict_structure_fn(Recipe, conv, origin=cattrs.gen.override(omit=True)))
    conv.register_unstructure_hook(
        Recipe, cattrs.gen.make_dict_unstructure_fn(Recipe, conv, origin=cattrs.gen.override(omit=True)))
    return conv


_converter = _make_converter()


def _plain(obj: Any) -> Any:
    """Plain TOML data: tuples become lists, ``None`` values are left out."""
    return tree_map(lambda v: v, obj, keep=lambda v: v is not None, sequence=list)


def structure(tree: Mapping[str, Any], origin: Origin) -> Recipe:
    """Validate the plain ``tree`` and structure it into a :class:`Recipe` (errors name ``origin``'s files).

    ``structure({"model": {"use": "mlp"}, "data": {"use": "synthetic"}, "train": {"epochs": 3}}, Origin("a.toml"))``
    """
    problems: list[tuple[KeyPath, str]] = []
    _check_table(dict(tree), Recipe, (), problems)
    if problems:
        raise RecipeError("\n".join(f"{origin.of(p)}: {dotted(p)}: {text}" for p, text in problems))
    try:
        recipe = _converter.structure(dict(tree), Recipe)
    except Exception as e:  # noqa: BLE001 - checked above; anything left is still a recipe problem
        detail = "; ".join(cattrs.transform_error(e)) if isinstance(e, cattrs.BaseValidationError) else str(e)
        raise RecipeError(f"{origin.default}: cannot structure the recipe: {detail}") from None
    return attrs.evolve(recipe, origin=origin)


def _drop_empty_tables(data: dict[str, Any], cls: type) -> dict[str, Any]:
    """``data`` without the schema's table-valued keys (``params``) that are empty; user values are kept as they are."""
    if cls in _INLINE:
        return data
    out = dict(data)
    for f in _fields(cls):
        value = out.get(f.name)
        item = typing.get_args(f.type)[0] if typing.get_origin(f.type) is tuple else None
        if typing.get_origin(f.type) is Mapping and value == {}:
            del out[f.name]
        elif attrs.has(f.type) and isinstance(value, dict):
            out[f.name] = _drop_empty_tables(value, f.type)
        elif item is not None and attrs.has(item) and isinstance(value, list):
            out[f.name] = [_drop_empty_tables(v, item) for v in value]
    return out


def to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (every key, defaults included; unset keys and empty ``params`` left out).

    It is what a checkpoint stores as ``state.recipe`` and what :func:`to_toml` writes.
    """
    return _drop_empty_tables(_plain(_converter.unstructure(recipe)), Recipe)


# --------------------------------------------------------------------------- files, extends, merge


def _show(path: Path) -> str:
    """``path`` as the user would write it: relative to the working directory when it is inside it."""
    try:
        rel = Path(os.path.relpath(path))
    except ValueError:
        return str(path)
    return str(rel) if not str(rel).startswith("..") else str(path)


def _read_toml(path: Path, shown: str, named_by: str | None) -> dict[str, Any]:
    where = f"{named_by}: extends" if named_by else shown
    if not path.exists():
        raise RecipeError(f"{where}: no such recipe file {shown!r}; give the path of a .toml recipe, or a built-in "
                          "recipe's name (smartcash-fn recipe list)")
    if not path.is_file():
        raise RecipeError(f"{where}: {shown!r} is not a file; give the path of a .toml recipe")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{shown}: cannot read the recipe: {e}") from None
    try:
        return tomli.loads(text)
    except tomli.TOMLDecodeError as e:
        raise RecipeError(f"{shown}: invalid TOML: {e}") from None
    except RecursionError:
        raise RecipeError(f"{shown}: invalid TOML: arrays or tables nested too deep; a recipe nests a few "
                          "levels") from None


def _within(path: KeyPath, prefix: KeyPath) -> bool:
    return path[:len(prefix)] == prefix


COMPONENT_PARAMS: Mapping[KeyPath, tuple[str, tuple[str, ...]]] = {
    ("model",): ("use", ("params",)),
    ("data",): ("use", ("params",)),
    ("optimizer",): ("use", ("params",)),
    ("schedule",): ("use", tuple(f.name for f in attrs.fields(ScheduleConfig) if f.name != "use")),
    ("train",): ("loss", ("loss_params", "late_loss_params")),
    ("validation",): ("metrics", ("params",)),
}
"""The tables that name a component, the key naming it and the keys holding its parameters: a recipe
(or a ``--set``) that names another component than its base does not inherit the base's parameters,
which belong to the component it replaced. Every key of ``[schedule]`` but ``use`` is the schedule's own
(a base's ``warmup_steps`` means nothing to ``one_cycle``, which refuses it)."""


def _drop_replaced(base: dict, keys: dict, path: KeyPath, name: Any) -> dict:
    """``base`` (the table at ``path``) without its component's parameters when ``name`` names another one."""
    named = COMPONENT_PARAMS.get(path)
    if named is None or name is None or base.get(named[0], name) == name:
        return base
    out = {k: v for k, v in base.items() if k not in named[1]}
    for q in [q for q in keys if any(_within(q, path + (p,)) for p in named[1])]:
        del keys[q]
    return out


def _merge(base: dict, keys: dict, top: Mapping, top_origin: Origin, path: KeyPath = ()) -> dict:
    """``top`` merged over ``base`` (tables key by key, anything else replaced; a table naming another
    component than ``base`` leaves the base's parameters behind, :data:`COMPONENT_PARAMS`); ``keys``
    records sources."""
    named = COMPONENT_PARAMS.get(path)
    out = _drop_replaced(dict(base), keys, path, top.get(named[0])) if named else dict(base)
    for k, v in top.items():
        p = path + (k,)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], keys, v, top_origin, p)
            continue
        out[k] = copy.deepcopy(v)
        for q in [q for q in keys if _within(q, p)]:
            del keys[q]
        keys[p] = top_origin.of(p)
        for q, src in top_origin.keys.items():
            if _within(q, p) and q != p:
                keys[q] = src
    return out


def _load_tree(path: Path, chain: tuple[Path, ...], named_by: str | None) -> tuple[dict, Origin]:
    shown = _show(path)
    data = _read_toml(path, shown, named_by)
    ext = data.pop("extends", None)
    tree: dict = {}
    keys: dict = {}
    if ext is not None:
        bases = [ext] if isinstance(ext, str) else ext
        if not (isinstance(bases, list) and bases and all(isinstance(b, str) and b for b in bases)):
            raise RecipeError(f"{shown}: extends: expected a recipe file name or an array of them, got {_got(ext)}")
        here = path.resolve()
        for name in bases:
            base_path = path.parent / name
            if not base_path.exists() and len(Path(name).parts) == 1 and Path(name).suffix != ".toml":
                if name not in library.names():
                    raise RecipeError(f"{shown}: extends: no recipe file {name!r} beside it and no built-in recipe of "
                                      f"that name{suggest(name, library.names())} (built-in recipes: "
                                      f"{', '.join(library.names())})")
                base_path = library.path_of(name)  # a built-in recipe by name, unless a file nearby has it
            resolved = base_path.resolve()
            if resolved in chain + (here,):
                cycle = " -> ".join(_show(p) for p in chain + (here, resolved))
                raise RecipeError(f"{shown}: extends: cycle {cycle}; a recipe cannot extend itself")
            base_tree, base_origin = _load_tree(base_path, chain + (here,), shown)
            tree = _merge(tree, keys, base_tree, base_origin)
    tree = _merge(tree, keys, data, Origin(shown))
    return tree, Origin(shown, keys)


def parse_set(arg: str) -> tuple[KeyPath, Any]:
    """Split ``--set`` argument ``"a.b.c=value"`` into the key path and the value read as TOML.

    ``parse_set("train.epochs=5") == (("train", "epochs"), 5)``; a value that
    is not TOML is a string (``run.name=big-run``); ``callbacks.0.patience=3``
    indexes an array.
    """
    where = f"--set {arg}"
    key, sep, text = arg.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"{where}: expected KEY=VALUE, e.g. --set train.epochs=5")
    parts = key.split(".")
    if any(not p.strip() for p in parts):
        raise RecipeError(f"{where}: {key!r} is not a dotted key (like train.epochs)")
    path = tuple(int(p) if p.strip().isdigit() else p.strip() for p in parts)
    if isinstance(path[0], int):
        raise RecipeError(f"{where}: a key starts with a section name, not an index")
    try:
        value = tomli.loads(f"v = {text}")["v"]
    except tomli.TOMLDecodeError:
        value = text.strip()
    except RecursionError:
        raise RecipeError(f"{where}: the value is nested too deep") from None
    return path, value


def apply_sets(tree: Mapping[str, Any], sets: Iterable[str], keys: dict | None = None) -> dict[str, Any]:
    """``tree`` with each ``--set KEY=VALUE`` applied in order; ``keys`` (key path -> source) is updated.

    ``apply_sets({"train": {"epochs": 3}}, ["train.epochs=5"]) == {"train": {"epochs": 5}}``
    """
    out = copy.deepcopy(dict(tree))
    sets = list(sets)
    for arg in sets:  # first: a component replaced drops the recipe's parameters, not those set beside it
        path, value = parse_set(arg)
        table = out.get(path[0]) if len(path) == 2 else None
        if isinstance(table, dict) and path[:1] in COMPONENT_PARAMS and COMPONENT_PARAMS[path[:1]][0] == path[1]:
            out[path[0]] = _drop_replaced(table, {} if keys is None else keys, path[:1], value)
    for arg in sets:
        path, value = parse_set(arg)
        where = f"--set {arg}"
        node: Any = out
        made: KeyPath | None = None  # the first table this argument makes (not in the recipe before it)
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or not 0 <= part < len(node):
                    raise RecipeError(f"{where}: {dotted(path[:i])} has {len(node) if isinstance(node, list) else 'no'} "
                                      f"entries; there is no index {part}")
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise RecipeError(f"{where}: {dotted(path[:i])} is not a table")
                if part not in node and made is None:
                    made = path[:i + 1]
                node = node.setdefault(part, [] if isinstance(nxt, int) else {})
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or not 0 <= last <= len(node):
                raise RecipeError(f"{where}: {dotted(path[:-1])} is not an array with an index {last}")
            if last == len(node):
                node.append(value)
            else:
                node[last] = value
        else:
            if not isinstance(node, dict):
                raise RecipeError(f"{where}: {dotted(path[:-1])} is not a table")
            node[last] = value
        if keys is not None:
            for q in [q for q in keys if _within(q, path)]:
                del keys[q]
            keys[path] = where
            if made is not None:  # `--set trian.epochs=3` made the section `trian`: errors about it name the argument
                keys[made] = where
    return out


def _named(recipe: Recipe, stem: str) -> Recipe:
    if recipe.run.name:
        return recipe
    name = stem if _NAME[0](stem) else "run"
    return attrs.evolve(recipe, run=attrs.evolve(recipe.run, name=name))


def load(path: str | os.PathLike, sets: Iterable[str] = ()) -> Recipe:
    """The recipe at ``path``: ``extends`` merged, ``sets`` (``"key=value"``) applied, validated, structured.

    ``recipe = load("recipes/tiny.toml", sets=["optimizer.lr=0.01"])``; an
    empty ``run.name`` becomes the file's name (``tiny``).
    """
    path = Path(path)
    tree, origin = _load_tree(path, (), None)
    keys = dict(origin.keys)
    tree = apply_sets(tree, sets, keys)
    return _named(structure(tree, Origin(origin.default, keys)), path.stem)


def loads(text: str, source: str = "<recipe>", sets: Iterable[str] = ()) -> Recipe:
    """A recipe from TOML ``text`` (no ``extends``); ``source`` names it in messages.

    ``loads('[model]\\nuse = "mlp"\\n[data]\\nuse = "synthetic"\\n[train]\\nepochs = 1')``
    """
    try:
        tree = tomli.loads(text)
    except tomli.TOMLDecodeError as e:
        raise RecipeError(f"{source}: invalid TOML: {e}") from None
    if "extends" in tree:
        raise RecipeError(f"{source}: extends: only a recipe file can extend another; use load(path)")
    return from_dict(tree, source, sets)


def from_dict(tree: Mapping[str, Any], source: str = "<recipe>", sets: Iterable[str] = ()) -> Recipe:
    """A recipe from plain data, e.g. the resolved recipe a checkpoint stores, with ``sets`` applied.

    ``from_dict(checkpoint.read(path)["state"]["recipe"], source=f"{path} (its recipe)")``
    """
    if not isinstance(tree, Mapping):
        raise RecipeError(f"{source}: expected a recipe table, got {_got(tree)}")
    keys: dict = {}
    tree = apply_sets(tree, sets, keys)
    return _named(structure(tree, Origin(source, keys)), "run")


# --------------------------------------------------------------------------- TOML writer

def to_toml(recipe: Recipe, header: str = "") -> str:
    """The resolved recipe as TOML text (``header`` lines become ``#`` comments on top)."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + dumps(to_dict(recipe))


def write(recipe: Recipe, path: str | os.PathLike, header: str = "") -> Path:
    """Write the resolved recipe to ``path`` (atomically, :func:`~smartcash_fn._files.write_text_atomic`).

    ``write(recipe, "runs/tiny/recipe.toml")`` — ``load`` of that file gives the same recipe.
    """
    return write_text_atomic(path, to_toml(recipe, header))


# --------------------------------------------------------------------------- reference


def _default_text(f: attrs.Attribute) -> str:
    if f.default is attrs.NOTHING:
        return "required"
    default = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default
    if default is None:
        return "unset"
    if attrs.has(type(default)):
        return ""
    return f"`{toml_value(_plain(default))}`"


def _rows(cls: type, prefix: str) -> list[str]:
    rows = []
    reserved = _INLINE.get(cls)
    for f in _fields(cls):
        if reserved is not None and f.name == "params":
            rows.append(f"| `{prefix}<parameter>` | any | | a parameter of the component named by `use` |")
            continue
        item = typing.get_args(f.type)[0] if typing.get_origin(f.type) is tuple else None
        if attrs.has(f.type) or (item is not None and attrs.has(item)):
            continue
        rows.append(f"| `{prefix}{f.name}` | {_type_name(f.type)} | {_default_text(f)} | {f.metadata['doc']} |")
    return rows


def _section(cls: type, key: str, title: str) -> list[str]:
    doc = (cls.__doc__ or "").strip().splitlines()[0]
    head = doc.split(":", 1)[1].strip() if ":" in doc else doc
    head = head[:1].upper() + head[1:]
    out = [f"### `{title}`", "", head, "", "| key | type | default | description |", "|---|---|---|---|"]
    out += _rows(cls, f"{key}.")
    for f in _fields(cls):
        item = typing.get_args(f.type)[0] if typing.get_origin(f.type) is tuple else None
        if item is not None and attrs.has(item):
            out += [f"| `{key}.{f.name}` | array of tables | `[]` | {f.metadata['doc']} |"]
            out += _rows(item, f"{key}.{f.name}[].")
    return out + [""]


def _signature_text(fn: Any) -> str:
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "(any)"
    parts = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        elif p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
        elif p.default is p.empty:
            parts.append(p.name)
        else:
            try:
                default = toml_value(_plain(p.default)) if p.default is not None else "unset"
            except ValueError:
                default = repr(p.default)
            parts.append(f"{p.name} = {default}")
    return ", ".join(parts) or "(none)"


_COMPONENT_KEYS = {
    "model": "model.use", "data": "data.use", "loss": "train.loss", "optimizer": "optimizer.use",
    "schedule": "schedule.use", "step": "train.steps[].use", "callback": "callbacks[].use",
    "metrics": "validation.metrics",
}


def reference() -> str:
    """The Markdown reference of every recipe key (type, default, doc) and of the built-in components.

    Generated from the attrs records and the registry; README.md holds a copy
    that a test keeps in sync (``python -m smartcash_fn.run.recipe --update-readme``).
    """
    out = ["A recipe is a TOML file with the sections below; every key but the required ones may be left out.",
           "`extends = \"base.toml\"` (or an array of files, or a built-in recipe's name) inherits other recipes,",
           "tables merged key by key (a table that names another component, as `[data] use`, leaves the base's",
           "`params` of the one it replaces behind, and `[schedule] use` every other key of the base's",
           "`[schedule]`); `--set key=value` on the command line overrides any key",
           "(the value read as TOML; `--set data.use=...` likewise leaves the recipe's `data.params` behind).", ""]
    for f in _fields(Recipe):
        if attrs.has(f.type):
            out += _section(f.type, f.name, f"[{f.name}]")
        else:
            item = typing.get_args(f.type)[0]
            doc = (item.__doc__ or "").strip().splitlines()[0].split(":", 1)[1].strip()
            doc = doc[:1].upper() + doc[1:]
            out += [f"### `[[{f.name}]]`", "", doc, "", "| key | type | default | description |",
                    "|---|---|---|---|"] + _rows(item, f"{f.name}[].") + [""]
    out += ["### Built-in components", "",
            "Named by `use` (or `train.loss`, `validation.metrics`); anything else is an import path "
            "`package.module:attr`. Parameters are given beside `use` (steps, callbacks), in the section's "
            "keys (optimizer, schedule: the first parameter comes from `optimizer.lr` or a group's `lr`, "
            "`total_steps` is derived) or in its `params` table (model, data, validation).", "",
            "| key | name | parameters |", "|---|---|---|"]
    for kind, names in registry.builtins().items():
        for name in names:
            fn = registry.resolve(kind, name, where="reference")
            out.append(f"| `{_COMPONENT_KEYS[kind]}` | `{name}` | {_signature_text(fn)} |")
    return "\n".join(out) + "\n"


START_MARK = "<!-- recipe-reference:start -->"
END_MARK = "<!-- recipe-reference:end -->"


def with_reference(readme: str) -> str:
    """``readme`` with the text between the recipe-reference markers replaced by :func:`reference`."""
    start, end = readme.find(START_MARK), readme.find(END_MARK)
    if start < 0 or end < start:
        raise RecipeError(f"README: the markers {START_MARK} and {END_MARK} are missing or out of order")
    return readme[:start + len(START_MARK)] + "\n" + reference() + readme[end:]


def main(argv: list[str] | None = None) -> int:
    """``python -m smartcash_fn.run.recipe --reference`` prints the reference; ``--update-readme [PATH]`` writes it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m smartcash_fn.run.recipe", description=main.__doc__)
    parser.add_argument("--reference", action="store_true", help="print the recipe reference (Markdown)")
    parser.add_argument("--update-readme", nargs="?", const="README.md", metavar="PATH",
                        help="write the reference between the markers of README.md (or PATH)")
    args = parser.parse_args(argv)
    if args.update_readme:
        path = Path(args.update_readme)
        text = path.read_text(encoding="utf-8")
        new = with_reference(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
        print(f"{path}: recipe reference {'updated' if new != text else 'already up to date'}")
        return 0
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
