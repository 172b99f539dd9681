"""Metric sinks: the run's history as ``metrics.csv``, ``metrics.jsonl`` and TensorBoard event files.

Each factory returns writer callbacks (``writes=True``, so a replay leaves
them out) that mirror ``state.history`` into files under a run folder. What
to write is computed by pure functions (:func:`csv_update`,
:func:`jsonl_update`, :func:`step_scalars`, :func:`epoch_scalars`); the
callbacks are a thin shell that writes it. They keep nothing in the state:
what they remember (what the file holds, the open event file) lives in a
small object each callback group owns, and at ``training_start`` the files
are made to agree with the state they are handed. So a run that died after its last checkpoint and is
resumed from it drops the rows written past that checkpoint and writes them
again, with no duplicates::

    loop = loop.add(csv_log("runs/a"), jsonl_log("runs/a"), tensorboard_log("runs/a", every_steps=10))
    state = fit(state, loop)        # runs/a/metrics.csv, runs/a/metrics.jsonl, runs/a/tensorboard/
    read_csv("runs/a/metrics.csv")  # the epoch records back, as floats

Numbers are written with Python's shortest round-trip repr, so a value read
back is the same float the history holds. Epochs are counted from 1 in the
files, as on the console and in the checkpoint names (the row of
``epoch-0003.pt`` says ``epoch`` 3); the state counts them from 0. In a
``torch.distributed`` run only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import attrs

from .._files import check_folder, ensure_folder, write_text_atomic
from ..errors import StateError
from ..events import Callback, writer
from ..state import History, TrainState
from .plots import curves_figure, lr_series
from .timing import EpochTimer
from .values import number, one_based, plain

Record = Mapping[str, Any]

# Sinks write after the metric callbacks (keep_best -100, early stopping -50,
# plateau -40) and before the checkpoint writer (1000): a run that dies between
# the two leaves rows past its checkpoint, which the next resume drops.
PRIORITY = 500


# --------------------------------------------------------------------------- helpers shared by the writers


# --------------------------------------------------------------------------- CSV


def _format_cell(value: Any) -> str:
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest repr that reads back to the same float; nan, inf, -inf
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def csv_header(records: Iterable[Record]) -> list[str]:
    """The union of the records' keys in first-seen order: the CSV header.

    ``csv_header([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "val/loss": 2.0}])`` is ``["epoch", "loss", "val/loss"]``.
    """
    seen: dict[str, None] = {}
    for r in records:
        for k in r:
            seen.setdefault(str(k), None)
    return list(seen)


def _csv_lines(rows: Iterable[Iterable[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def csv_text(records: Iterable[Record], header: list[str] | None = None, with_header: bool = True) -> str:
    """The CSV text of ``records``: a header line, then one row per record (missing keys left empty).

    ``csv_text(state.history.epochs)`` — the content :func:`csv_log` writes, ``epoch`` counted from 1.
    """
    records = list(records)
    header = csv_header(records) if header is None else header
    if not header:
        return ""
    rows = [[_format_cell(r.get(k)) for k in header] for r in map(one_based, records)]
    return _csv_lines(([header] if with_header else []) + rows)


def read_csv(path: str | os.PathLike) -> list[dict[str, float | str]]:
    """The rows of a ``metrics.csv``: numbers as floats, empty cells left out.

    ``read_csv("runs/a/metrics.csv")[-1]["val/loss"]``
    """
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rec: dict[str, float | str] = {}
            for k, v in row.items():
                if v == "" or v is None:
                    continue
                try:
                    rec[k] = float(v)
                except ValueError:
                    rec[k] = v
            out.append(rec)
    return out


@attrs.frozen
class OnDisk:
    """What a sink's file holds, as the sink last wrote it: ``epochs`` and ``steps`` records, the CSV ``header``."""

    epochs: int = 0
    steps: int = 0
    header: tuple[str, ...] = ()


@attrs.frozen
class Update:
    """What a sink does to its file: ``mode`` ``"write"`` (the whole file), ``"append"`` or ``""`` (nothing)."""

    mode: str
    text: str
    on_disk: OnDisk


def csv_update(on_disk: OnDisk | None, epochs: Sequence[Record]) -> Update:
    """How ``metrics.csv`` follows the epoch records: append the new rows, or rewrite it (None: unknown file).

    A rewrite when the file's content is unknown, when it holds more rows than
    the history (a resume), or when a new key widens the header::

        csv_update(OnDisk(epochs=2, header=("epoch", "loss")), state.history.epochs)   # Update("append", ...)
    """
    header = tuple(csv_header(epochs))
    now = OnDisk(epochs=len(epochs), header=header)
    if on_disk is None or on_disk.epochs > len(epochs) or header != on_disk.header:
        return Update("write", csv_text(epochs, list(header)), now)
    new = epochs[on_disk.epochs:]
    if not new:
        return Update("", "", on_disk)
    return Update("append", csv_text(new, list(header), with_header=False), now)


@attrs.define
class _File:
    """A sink's file and what it holds as last written (None: not known in this process)."""

    path: Path
    what: str
    on_disk: OnDisk | None = None

    def apply(self, update: Update) -> None:
        if update.mode == "write":
            ensure_folder(self.path.parent, self.what)
            write_text_atomic(self.path, update.text)
        elif update.mode == "append":
            with open(self.path, "a", encoding="utf-8", newline="") as f:
                f.write(update.text)
        self.on_disk = update.on_disk

    def known(self) -> OnDisk | None:
        return self.on_disk if self.on_disk is not None and self.path.exists() else None


def csv_log(run_dir: str | os.PathLike, filename: str = "metrics.csv", priority: int = PRIORITY,
            name: str = "csv_log") -> tuple[Callback, ...]:
    """Callbacks keeping ``run_dir/metrics.csv`` equal to ``state.history.epochs``: one row per epoch.

    The header is the union of the records' keys in first-seen order; when an
    epoch brings a new key (say the first validation) the file is rewritten
    with the wider header. At ``training_start`` the file is rewritten from the
    state's history, dropping rows a dead run wrote past its checkpoint. What
    to write is :func:`csv_update`'s answer::

        loop = loop.add(csv_log("runs/a"))
    """
    file = _File(check_folder(run_dir, name) / filename, name)

    def start(state: TrainState) -> TrainState:
        file.apply(csv_update(None, state.history.epochs))
        return state

    def epoch_end(state: TrainState) -> TrainState:
        file.apply(csv_update(file.known(), state.history.epochs))
        return state

    return (
        writer("training_start", start, priority=priority, name=name),
        writer("epoch_end", epoch_end, priority=priority, name=name),
    )


# --------------------------------------------------------------------------- JSONL


def _step_of(record: Record) -> float:
    s = number(record.get("step"))
    return -math.inf if s is None else s


def history_lines(history: History, times: Sequence[Record] = ()) -> Iterator[tuple[str, Record]]:
    """The history's records in the order they happened: ``("step", rec)`` and ``("epoch", rec)`` pairs.

    Step records come before the epoch record whose ``step`` they do not pass;
    each of ``times`` (:func:`~smartcash_fn.report.timing.time_record`) follows
    the epoch record it belongs to, as ``("time", rec)``::

        [kind for kind, _ in history_lines(state.history)]   # ["step", "step", "epoch", ...]
    """
    steps = history.steps
    by_epoch: dict[Any, list[Record]] = {}
    for t in times:
        by_epoch.setdefault(t.get("epoch"), []).append(t)
    i = 0
    for e in history.epochs:
        end = _step_of(e)
        while i < len(steps) and (end == -math.inf or _step_of(steps[i]) <= end):
            yield "step", steps[i]
            i += 1
        yield "epoch", e
        for t in by_epoch.get(e.get("epoch"), ()):
            yield "time", t
    for s in steps[i:]:
        yield "step", s


def jsonl_line(kind: str, record: Record) -> str:
    """One JSON line for a history record, marked ``"kind": "epoch"`` or ``"step"`` (newline included).

    The ``epoch`` is counted from 1 (the state's record says 0 for the first):
    ``jsonl_line("epoch", {"epoch": 0, "loss": 1.2})`` is ``'{"kind": "epoch", "epoch": 1, "loss": 1.2}\\n'``.
    Non-finite numbers are written as ``NaN``/``Infinity``, as Python's ``json`` reads them back.
    """
    fields = {str(k): plain(v) for k, v in one_based(record).items() if k != "kind"}
    return json.dumps({"kind": kind, **fields}) + "\n"


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, each with its ``kind``.

    ``[r for r in read_jsonl("runs/a/metrics.jsonl") if r["kind"] == "epoch"]``
    """
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def jsonl_update(on_disk: OnDisk | None, history: History, times: Sequence[Record] = ()) -> Update:
    """How ``metrics.jsonl`` follows the history: append the new step and epoch lines, or rewrite it.

    A rewrite when the file's content is unknown (None) or holds more than
    the history (a resume); a rewrite keeps the ``times`` lines (appended as
    each epoch ends, see :func:`jsonl_log`) after their epochs::

        jsonl_update(OnDisk(epochs=1, steps=4), state.history).text   # the lines since
    """
    now = OnDisk(epochs=len(history.epochs), steps=len(history.steps))
    if on_disk is None or on_disk.epochs > now.epochs or on_disk.steps > now.steps:
        return Update("write", "".join(jsonl_line(k, r) for k, r in history_lines(history, times)), now)
    lines = [jsonl_line("step", r) for r in history.steps[on_disk.steps:]]
    lines += [jsonl_line("epoch", r) for r in history.epochs[on_disk.epochs:]]
    return Update("append", "".join(lines), now) if lines else Update("", "", on_disk)


def jsonl_log(run_dir: str | os.PathLike, filename: str = "metrics.jsonl", priority: int = PRIORITY,
              name: str = "jsonl_log") -> tuple[Callback, ...]:
    """Callbacks keeping ``run_dir/metrics.jsonl`` equal to the history: epoch lines and step lines.

    A line per epoch record (``"kind": "epoch"``) and per step record
    (``"kind": "step"``, as :func:`~smartcash_fn.callbacks.record_steps`
    appends them), in the order they happened. After each epoch's checkpoint
    a ``"kind": "time"`` line says where the epoch's time went
    (``time/data``, ``time/step``, ``time/val``, ``time/checkpoint`` seconds,
    :mod:`~smartcash_fn.report.timing`): timings are not the state's, so they
    live only in this file. At ``training_start`` the file is rewritten from
    the state's history, so a resumed run holds no duplicates and nothing
    from past its checkpoint (:func:`jsonl_update`); the time lines of the
    epochs kept are kept::

        loop = loop.add(record_steps(10), jsonl_log("runs/a"))
    """
    file = _File(check_folder(run_dir, name) / filename, name)
    timer = EpochTimer()

    def start(state: TrainState) -> TrainState:
        timer.records = kept_times(file.path, len(state.history.epochs))
        file.apply(jsonl_update(None, state.history, timer.records))
        return state

    def append(state: TrainState) -> TrainState:
        file.apply(jsonl_update(file.known(), state.history, timer.records))
        return state

    def timed(state: TrainState, record: dict[str, Any]) -> None:
        known = file.known()
        if known is not None:
            file.apply(Update("append", jsonl_line("time", record), known))

    def batch_end(state: TrainState) -> TrainState:
        if file.on_disk is not None and len(state.history.steps) == file.on_disk.steps:
            return state  # the common case: nothing new, no file touched
        return append(state)

    return (
        writer("training_start", start, priority=priority, name=name),
        writer("batch_end", batch_end, priority=priority, name=name),
        writer("epoch_end", append, priority=priority, name=name),
        *timer.callbacks(name, timed),
        writer("training_end", append, priority=priority, name=name),
    )


def kept_times(path: str | os.PathLike, epochs: int) -> list[dict[str, Any]]:
    """The ``"time"`` lines of a ``metrics.jsonl`` for the first ``epochs`` epochs (none when unreadable).

    What a resumed run keeps of the timings the file already holds, as the
    state counts epochs (from 0; the file from 1): ``kept_times("runs/a/metrics.jsonl", 2)``.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed run
        if (isinstance(r, dict) and r.get("kind") == "time" and isinstance(r.get("epoch"), int)
                and 1 <= r["epoch"] <= epochs):
            out.append({**{k: v for k, v in r.items() if k != "kind"}, "epoch": r["epoch"] - 1})
    return out


# --------------------------------------------------------------------------- TensorBoard

FIGURES = "figures"
"""The sub-folder of ``tensorboard/`` where :func:`tensorboard_figure` writes (TensorBoard shows it as its own run)."""


def figure_image(figure: Any) -> "Any":
    """A matplotlib figure rendered by Agg as an ``H x W x 3`` uint8 numpy array (no pyplot needed).

    ``figure_image(curves_figure(state.history))``
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


def tensorboard_figure(run_dir: str | os.PathLike, tag: str, figure: Any, step: int) -> None:
    """Add a matplotlib ``figure`` as an image under ``tag`` at global ``step`` to the run's TensorBoard log.

    For callbacks that make their own figures, such as a confusion matrix
    after validation. It goes to ``tensorboard/figures`` through a writer
    opened and closed for it, so it never appends beside the event file
    :func:`tensorboard_log` holds open (TensorBoard would stop reading that
    one); figures known when building the loop go through
    ``tensorboard_log(figures=...)`` instead::

        tensorboard_figure("runs/a", "val/confusion", confusion_matrix_figure(m, names), state.progress.step)
    """
    tensorboard_figures(run_dir, [(tag, figure)], step)


def tensorboard_figures(run_dir: str | os.PathLike, figures: Iterable[tuple[str, Any]], step: int) -> None:
    """Add ``(tag, figure)`` pairs as images at ``step`` to ``run_dir/tensorboard/figures``, in one event file.

    Call it from a writer callback (:func:`~smartcash_fn.events.writer`, rank 0 only):
    ``tensorboard_figures("runs/a", [("val/pr_curves", fig1), ("val/confusion", fig2)], state.progress.step)``
    """
    from torch.utils.tensorboard import SummaryWriter

    images = [(tag, figure_image(fig)) for tag, fig in figures]
    if not images:
        return
    log_dir = Path(run_dir) / "tensorboard" / FIGURES
    ensure_folder(log_dir, "tensorboard_figure")
    _after_existing(_event_times(log_dir))
    w = SummaryWriter(log_dir=str(log_dir))
    try:
        for tag, image in images:
            w.add_image(tag, image, int(step), dataformats="HWC")
    finally:
        w.close()


def _event_times(log_dir: Path) -> list[int]:
    """The creation seconds in the names of the event files in ``log_dir`` (``events.out.tfevents.<sec>...``)."""
    if not log_dir.is_dir():
        return []
    out = []
    for p in log_dir.iterdir():
        parts = p.name.split(".")
        if p.name.startswith("events.out.tfevents.") and len(parts) > 3 and parts[3].isdigit():
            out.append(int(parts[3]))
    return out


def _after_existing(times: list[int]) -> None:
    """Wait for the clock's second to pass the newest event file's, so the new file sorts after it.

    TensorBoard reads a folder's event files in name order, and the name
    starts with the second the file was made; a writer opened in the same
    second as the last one (a resume within a second) could sort first.
    """
    if not times:
        return
    wait = max(times) + 1 - time.time()
    if 0 < wait <= 1:  # same second as the newest file (a clock far behind it is not waited for)
        time.sleep(wait + 0.01)


Scalar = tuple[str, float, int]
"""A TensorBoard scalar: ``(tag, value, global step)``."""


def step_scalars(state: TrainState, every_steps: int) -> list[Scalar]:
    """The step metrics to log at this ``batch_end`` every ``every_steps`` steps (0: never): ``train/<name>_step``,
    and the learning rate of the next update, ``lr_step`` (``lr_step/<group>`` per parameter group).

    The rate is the optimizer's ``lrs(opt_state, lr_scale)``, read, never
    changed: the epoch record's ``lr`` is the same number at an epoch's end.
    ``step_scalars(state, 10)`` -> ``[("train/loss_step", 0.41, 20), ("lr_step", 0.001, 20)]`` at step 20,
    ``[]`` at step 21.
    """
    step = state.progress.step
    if not every_steps or step % every_steps:
        return []
    out = [(f"train/{k}_step", x, step) for k, v in state.metrics.items() if (x := number(v)) is not None]
    lrs = getattr(state.optimizer, "lrs", None)
    if lrs is not None:
        out += [("lr_step" if label == "" else f"lr_step/{label}", float(lr), step)
                for label, lr in lrs(state.opt_state, state.lr_scale).items()]
    return out


def epoch_scalars(epochs: Sequence[Record], since: int = 0, step: int = 0) -> list[Scalar]:
    """Every numeric key of the epoch records from index ``since``, each at its record's ``step`` (else ``step``).

    The ``epoch`` scalar is counted from 1, as in the other files
    (:func:`~smartcash_fn.report.values.one_based`):
    ``epoch_scalars(state.history.epochs, since=2)`` -> ``[("epoch", 3.0, 30), ("train/loss", 0.4, 30), ...]``.
    """
    out = []
    for rec in map(one_based, epochs[since:]):
        at = number(rec.get("step"))
        s = step if at is None else int(at)
        out += [(str(k), x, s) for k, v in rec.items() if k != "step" and (x := number(v)) is not None]
    return out


HParam = bool | int | float | str
"""A hyperparameter value TensorBoard's HParams dashboard takes: bool, int, float or str."""


def hparams_of(recipe: Mapping[str, Any] | None) -> dict[str, HParam]:
    """The recipe's scalar keys, flattened to dotted names: the hyperparameters of the run.

    Tables nest with dots, arrays of tables with an index (``callbacks[0].patience``);
    an array of plain values is one hyperparameter, its JSON text::

        hparams_of({"optimizer": {"lr": 0.01}, "model": {"params": {"hidden": [32]}}})
        # {"optimizer.lr": 0.01, "model.params.hidden": "[32]"}
    """
    out: dict[str, HParam] = {}

    def visit(value: Any, name: str) -> None:
        value = plain(value)
        if isinstance(value, Mapping):
            for k, v in value.items():
                visit(v, f"{name}.{k}" if name else str(k))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                visit(v, f"{name}[{i}]")
        elif isinstance(value, list):
            out[name] = json.dumps(value)
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value

    visit(recipe or {}, "")
    return out


def hparam_metrics(state: TrainState) -> dict[str, float]:
    """The metrics the HParams dashboard shows beside the hyperparameters: the last epoch's numbers as
    ``hparams/<key>``, and the best monitored value as ``hparams/best/<monitor>``.

    ``hparam_metrics(state)`` -> ``{"hparams/val/loss": 0.41, ..., "hparams/best/val/loss": 0.39}``
    """
    last = state.history.last() or {}
    out = {f"hparams/{k}": x for k, v in last.items() if k not in ("epoch", "step") and (x := number(v)) is not None}
    if state.best is not None and (x := number(state.best.value)) is not None:
        out[f"hparams/best/{state.best.monitor}"] = x
    return out


def add_hparams(w: Any, state: TrainState) -> None:
    """Write the run's hyperparameters (:func:`hparams_of` its recipe) and :func:`hparam_metrics` into the event
    file of the writer ``w``, at the state's step.

    Unlike ``SummaryWriter.add_hparams``, which opens a folder of its own, it
    writes into the run's own event file, so the HParams dashboard's session
    is the run itself, beside its curves: ``add_hparams(writer, state)``.
    """
    from torch.utils.tensorboard.summary import hparams

    metrics = hparam_metrics(state)
    hp = hparams_of(state.recipe)
    if not hp and not metrics:
        return
    step = state.progress.step
    for summary in hparams(hp, metrics):
        w.file_writer.add_summary(summary, step)
    for tag, value in metrics.items():
        w.add_scalar(tag, value, step)


@attrs.define
class _EventFile:
    """The one TensorBoard event writer a :func:`tensorboard_log` owns, opened lazily, closed at ``training_end``."""

    log_dir: Path
    what: str
    writer: Any = None
    epochs: int = 0

    def open(self, state: TrainState) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        ensure_folder(self.log_dir, self.what)
        existing = _event_times(self.log_dir)
        _after_existing(existing)
        purge = state.progress.step + 1 if existing else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge, flush_secs=30)
        self.epochs = len(state.history.epochs)
        return self.writer

    def get(self, state: TrainState) -> Any:
        return self.writer if self.writer is not None else self.open(state)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


def tensorboard_log(run_dir: str | os.PathLike, every_steps: int = 10,
                    figures: Mapping[str, Callable[[TrainState], Any]] | None = None, curves: bool = True,
                    hparams: bool = True, priority: int = PRIORITY,
                    name: str = "tensorboard_log") -> tuple[Callback, ...]:
    """Callbacks writing TensorBoard event files to ``run_dir/tensorboard``.

    - every ``every_steps`` steps (0: never), each step metric as
      ``train/<name>_step`` (``train/loss_step``) and the learning rate as
      ``lr_step`` (``lr_step/<group>`` per parameter group; :func:`step_scalars`);
    - at each epoch end, every numeric key of the epoch record (``train/loss``,
      ``val/acc``, ``lr``, ``epoch``; :func:`epoch_scalars`), then each of
      ``figures`` — a mapping ``tag -> fn(state) -> matplotlib Figure or None``;
    - at ``training_end`` the metric-curves figure (``curves``), the run's
      hyperparameters with its final and best metrics for the HParams
      dashboard (``hparams``; :func:`add_hparams`), then the file is flushed
      and closed. It is flushed at each epoch end and checkpoint too.

    Every value is logged at the global step (``state.progress.step``), one
    axis for all tags. When the folder already holds event files, the writer
    starts with ``purge_step = step + 1``: TensorBoard hides what a dead run
    logged past the state being resumed, and the resumed run logs it again.
    The open event file belongs to these callbacks alone::

        loop = loop.add(tensorboard_log("runs/a", every_steps=20))
        # tensorboard --logdir runs/a/tensorboard
    """
    if not isinstance(every_steps, int) or isinstance(every_steps, bool) or every_steps < 0:
        raise StateError(f"{name}: every_steps must be an int >= 0, got {every_steps!r}")
    figures = dict(figures or {})
    for tag, fn in figures.items():
        if not callable(fn):
            raise StateError(f"{name}: figures[{tag!r}] must be a function state -> Figure, got {type(fn).__name__}")
    events = _EventFile(check_folder(run_dir, name) / "tensorboard", name)

    def add(w: Any, scalars: Iterable[Scalar]) -> None:
        for tag, value, step in scalars:
            w.add_scalar(tag, value, step)

    def start(state: TrainState) -> TrainState:
        events.open(state)
        return state

    def batch_end(state: TrainState) -> TrainState:
        scalars = step_scalars(state, every_steps)
        if scalars:
            add(events.get(state), scalars)
        return state

    def epoch_end(state: TrainState) -> TrainState:
        w = events.get(state)
        epochs = state.history.epochs
        add(w, epoch_scalars(epochs, events.epochs, state.progress.step))
        events.epochs = len(epochs)
        for tag, fn in figures.items():
            fig = fn(state)
            if fig is not None:
                w.add_image(tag, figure_image(fig), state.progress.step, dataformats="HWC")
        w.flush()
        return state

    def flush(state: TrainState) -> TrainState:
        if events.writer is not None:
            events.writer.flush()
        return state

    def end(state: TrainState) -> TrainState:
        if curves and state.history.epochs:
            events.get(state).add_image("curves", figure_image(curves_figure(state.history, state.best,
                                                                             lr=lr_series(state))),
                                        state.progress.step, dataformats="HWC")
        if hparams:
            add_hparams(events.get(state), state)
        events.close()
        return state

    return (
        writer("training_start", start, priority=priority, name=name),
        writer("batch_end", batch_end, priority=priority, name=name),
        writer("epoch_end", epoch_end, priority=priority, name=name),
        writer("checkpoint_saved", flush, priority=priority, name=name),
        writer("training_end", end, priority=priority + 550, name=name),
    )
