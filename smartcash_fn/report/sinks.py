"""Metric sinks: the run's history as ``metrics.csv``, ``metrics.jsonl`` and TensorBoard event files.

Each factory returns callbacks (``writes=True``, so a replay leaves them out)
that mirror ``state.history`` into files under a run folder. They keep no
wall-clock values in the state: what they remember lives in their closure and
in the files, and at ``training_start`` the files are made to agree with the
state they are handed. So a run that died after its last checkpoint and is
resumed from it drops the rows written past that checkpoint and writes them
again, with no duplicates::

    loop = loop.add(csv_log("runs/a"), jsonl_log("runs/a"), tensorboard_log("runs/a", every_steps=10))
    state = fit(state, loop)        # runs/a/metrics.csv, runs/a/metrics.jsonl, runs/a/tensorboard/
    read_csv("runs/a/metrics.csv")  # the epoch records back, as floats

Numbers are written with Python's shortest round-trip repr, so a value read
back is the same float the history holds. In a ``torch.distributed`` run only
rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from .._files import check_folder, ensure_folder, is_main_process, write_text_atomic
from ..errors import StateError
from ..events import Callback
from ..state import History, TrainState
from .plots import curves_figure
from .values import number, plain

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

    ``csv_text(state.history.epochs)`` — the content :func:`csv_log` writes.
    """
    records = list(records)
    header = csv_header(records) if header is None else header
    if not header:
        return ""
    rows = [[_format_cell(r.get(k)) for k in header] for r in records]
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


def csv_log(run_dir: str | os.PathLike, filename: str = "metrics.csv", priority: int = PRIORITY,
            name: str = "csv_log") -> tuple[Callback, ...]:
    """Callbacks keeping ``run_dir/metrics.csv`` equal to ``state.history.epochs``: one row per epoch.

    The header is the union of the records' keys in first-seen order; when an
    epoch brings a new key (say the first validation) the file is rewritten
    with the wider header. At ``training_start`` the file is rewritten from the
    state's history, dropping rows a dead run wrote past its checkpoint::

        loop = loop.add(csv_log("runs/a"))
    """
    folder = check_folder(run_dir, name)
    path = folder / filename
    mem: dict[str, Any] = {"rows": None, "header": []}

    def sync(state: TrainState) -> None:
        ensure_folder(folder, name)
        epochs = state.history.epochs
        header = csv_header(epochs)
        write_text_atomic(path, csv_text(epochs, header))
        mem.update(rows=len(epochs), header=header)

    def start(state: TrainState) -> TrainState:
        if is_main_process():
            sync(state)
        return state

    def epoch_end(state: TrainState) -> TrainState:
        if not is_main_process():
            return state
        epochs = state.history.epochs
        if mem["rows"] is None or mem["rows"] > len(epochs) or not path.exists():
            sync(state)
            return state
        new = epochs[mem["rows"]:]
        if not new:
            return state
        header = csv_header(epochs)
        if header != mem["header"]:
            sync(state)
            return state
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write(csv_text(new, header, with_header=False))
        mem["rows"] = len(epochs)
        return state

    return (
        Callback("training_start", start, priority=priority, name=name, writes=True),
        Callback("epoch_end", epoch_end, priority=priority, name=name, writes=True),
    )


# --------------------------------------------------------------------------- JSONL


def _step_of(record: Record) -> float:
    s = number(record.get("step"))
    return -math.inf if s is None else s


def history_lines(history: History) -> Iterator[tuple[str, Record]]:
    """The history's records in the order they happened: ``("step", rec)`` and ``("epoch", rec)`` pairs.

    Step records come before the epoch record whose ``step`` they do not pass::

        [kind for kind, _ in history_lines(state.history)]   # ["step", "step", "epoch", ...]
    """
    steps = history.steps
    i = 0
    for e in history.epochs:
        end = _step_of(e)
        while i < len(steps) and (end == -math.inf or _step_of(steps[i]) <= end):
            yield "step", steps[i]
            i += 1
        yield "epoch", e
    for s in steps[i:]:
        yield "step", s


def jsonl_line(kind: str, record: Record) -> str:
    """One JSON line for a history record, marked ``"kind": "epoch"`` or ``"step"`` (newline included).

    ``jsonl_line("epoch", {"epoch": 0, "loss": 1.2})`` is ``'{"kind": "epoch", "epoch": 0, "loss": 1.2}\\n'``.
    Non-finite numbers are written as ``NaN``/``Infinity``, as Python's ``json`` reads them back.
    """
    return json.dumps({"kind": kind, **{str(k): plain(v) for k, v in record.items() if k != "kind"}}) + "\n"


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, each with its ``kind``.

    ``[r for r in read_jsonl("runs/a/metrics.jsonl") if r["kind"] == "epoch"]``
    """
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def jsonl_log(run_dir: str | os.PathLike, filename: str = "metrics.jsonl", priority: int = PRIORITY,
              name: str = "jsonl_log") -> tuple[Callback, ...]:
    """Callbacks keeping ``run_dir/metrics.jsonl`` equal to the history: epoch lines and step lines.

    A line per epoch record (``"kind": "epoch"``) and per step record
    (``"kind": "step"``, as :func:`~smartcash_fn.callbacks.record_steps`
    appends them), in the order they happened. At ``training_start`` the file
    is rewritten from the state's history, so a resumed run holds no
    duplicates and nothing from past its checkpoint::

        loop = loop.add(record_steps(10), jsonl_log("runs/a"))
    """
    folder = check_folder(run_dir, name)
    path = folder / filename
    mem: dict[str, Any] = {"epochs": None, "steps": 0}

    def sync(state: TrainState) -> None:
        ensure_folder(folder, name)
        h = state.history
        write_text_atomic(path, "".join(jsonl_line(k, r) for k, r in history_lines(h)))
        mem.update(epochs=len(h.epochs), steps=len(h.steps))

    def start(state: TrainState) -> TrainState:
        if is_main_process():
            sync(state)
        return state

    def append(state: TrainState) -> TrainState:
        if not is_main_process():
            return state
        h = state.history
        if mem["epochs"] is None or mem["epochs"] > len(h.epochs) or mem["steps"] > len(h.steps) \
                or not path.exists():
            sync(state)
            return state
        lines = [jsonl_line("step", r) for r in h.steps[mem["steps"]:]]
        lines += [jsonl_line("epoch", r) for r in h.epochs[mem["epochs"]:]]
        if lines:
            with open(path, "a", encoding="utf-8") as f:
                f.write("".join(lines))
            mem.update(epochs=len(h.epochs), steps=len(h.steps))
        return state

    def batch_end(state: TrainState) -> TrainState:
        if mem["epochs"] is not None and len(state.history.steps) == mem["steps"]:
            return state  # the common case: nothing new, no file touched
        return append(state)

    return (
        Callback("training_start", start, priority=priority, name=name, writes=True),
        Callback("batch_end", batch_end, priority=priority, name=name, writes=True),
        Callback("epoch_end", append, priority=priority, name=name, writes=True),
        Callback("training_end", append, priority=priority, name=name, writes=True),
    )


# --------------------------------------------------------------------------- TensorBoard

# Open event writers by log folder, so figures from other callbacks go into the
# run's one event file: TensorBoard reads a folder's files one after another,
# and two writers appending at once would hide one of them.
_WRITERS: dict[str, Any] = {}


def _key(log_dir: Path) -> str:
    return str(log_dir.resolve())


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

    Goes into the event file :func:`tensorboard_log` holds open for ``run_dir``
    (or a short-lived one when none is open); for callbacks that make their
    own figures, such as a confusion matrix after validation::

        tensorboard_figure("runs/a", "val/confusion", confusion_matrix_figure(m, names), state.progress.step)
    """
    if not is_main_process():
        return
    log_dir = Path(run_dir) / "tensorboard"
    image = figure_image(figure)
    writer = _WRITERS.get(_key(log_dir)) if log_dir.exists() else None
    if writer is not None:
        writer.add_image(tag, image, int(step), dataformats="HWC")
        return
    from torch.utils.tensorboard import SummaryWriter

    ensure_folder(log_dir, "tensorboard_figure")
    _after_existing(_event_times(log_dir))
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        writer.add_image(tag, image, int(step), dataformats="HWC")
    finally:
        writer.close()


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


def tensorboard_log(run_dir: str | os.PathLike, every_steps: int = 10,
                    figures: Mapping[str, Callable[[TrainState], Any]] | None = None, curves: bool = True,
                    priority: int = PRIORITY, name: str = "tensorboard_log") -> tuple[Callback, ...]:
    """Callbacks writing TensorBoard event files to ``run_dir/tensorboard``.

    - every ``every_steps`` steps (0: never), each step metric as
      ``train/<name>_step`` (``train/loss_step``);
    - at each epoch end, every numeric key of the epoch record (``train/loss``,
      ``val/acc``, ``lr``, ``epoch``), then each of ``figures`` — a mapping
      ``tag -> fn(state) -> matplotlib Figure or None``;
    - at ``training_end`` the metric-curves figure (``curves``), then the file
      is flushed and closed. It is flushed at each epoch end and checkpoint too.

    Every value is logged at the global step (``state.progress.step``), one
    axis for all tags. When the folder already holds event files, the writer
    starts with ``purge_step = step + 1``: TensorBoard hides what a dead run
    logged past the state being resumed, and the resumed run logs it again::

        loop = loop.add(tensorboard_log("runs/a", every_steps=20))
        # tensorboard --logdir runs/a/tensorboard
    """
    if not isinstance(every_steps, int) or isinstance(every_steps, bool) or every_steps < 0:
        raise StateError(f"{name}: every_steps must be an int >= 0, got {every_steps!r}")
    figures = dict(figures or {})
    for tag, fn in figures.items():
        if not callable(fn):
            raise StateError(f"{name}: figures[{tag!r}] must be a function state -> Figure, got {type(fn).__name__}")
    log_dir = check_folder(run_dir, name) / "tensorboard"
    mem: dict[str, Any] = {"writer": None, "epochs": 0}

    def close() -> None:
        w = mem["writer"]
        if w is not None:
            w.close()
            if _WRITERS.get(_key(log_dir)) is w:
                del _WRITERS[_key(log_dir)]
        mem["writer"] = None

    def open_writer(state: TrainState) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        close()
        ensure_folder(log_dir, name)
        existing = _event_times(log_dir)
        _after_existing(existing)
        purge = state.progress.step + 1 if existing else None
        w = SummaryWriter(log_dir=str(log_dir), purge_step=purge, flush_secs=30)
        mem.update(writer=w, epochs=len(state.history.epochs))
        _WRITERS[_key(log_dir)] = w
        return w

    def writer(state: TrainState) -> Any:
        return mem["writer"] if mem["writer"] is not None else open_writer(state)

    def start(state: TrainState) -> TrainState:
        if is_main_process():
            open_writer(state)
        return state

    def batch_end(state: TrainState) -> TrainState:
        step = state.progress.step
        if not every_steps or step % every_steps or not is_main_process():
            return state
        w = writer(state)
        for k, v in state.metrics.items():
            x = number(v)
            if x is not None:
                w.add_scalar(f"train/{k}_step", x, step)
        return state

    def epoch_end(state: TrainState) -> TrainState:
        if not is_main_process():
            return state
        w = writer(state)
        epochs = state.history.epochs
        for rec in epochs[mem["epochs"]:]:
            at = number(rec.get("step"))
            step = state.progress.step if at is None else int(at)
            for k, v in rec.items():
                x = number(v)
                if x is not None and k != "step":
                    w.add_scalar(str(k), x, step)
        mem["epochs"] = len(epochs)
        for tag, fn in figures.items():
            fig = fn(state)
            if fig is not None:
                w.add_image(tag, figure_image(fig), state.progress.step, dataformats="HWC")
        w.flush()
        return state

    def flush(state: TrainState) -> TrainState:
        if mem["writer"] is not None:
            mem["writer"].flush()
        return state

    def end(state: TrainState) -> TrainState:
        if not is_main_process():
            return state
        if curves and state.history.epochs:
            writer(state).add_image("curves", figure_image(curves_figure(state.history, state.best)),
                                    state.progress.step, dataformats="HWC")
        close()
        return state

    return (
        Callback("training_start", start, priority=priority, name=name, writes=True),
        Callback("batch_end", batch_end, priority=priority, name=name, writes=True),
        Callback("epoch_end", epoch_end, priority=priority, name=name, writes=True),
        Callback("checkpoint_saved", flush, priority=priority, name=name, writes=True),
        Callback("training_end", end, priority=priority + 550, name=name, writes=True),
    )
