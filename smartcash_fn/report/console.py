"""Console output: the run's facts, its progress, and a table with a row per epoch, through ``logging``.

:func:`console` returns callbacks that report a run as it goes, through the
``logging`` logger named ``smartcash_fn`` (each fact once, on one stream):

- the start (what is trained, where a resumed run picks up, the run folder)
  and the end (finished, stopped early or failed; the wall time; the best);
- progress inside an epoch: a tqdm bar on a terminal, elsewhere (a pipe, a
  CI log) a plain line every tenth of the epoch or 30 s, whichever comes
  first: ``epoch 2/5 batch 120/281  52.1 samples/s  loss 4.512  ETA epoch 58s, run 6m10s``;
- a table with a row per epoch, its header said once: the train and
  validation loss, the monitored metric with the best so far (``*`` marks an
  epoch that set it), one more quality metric, the epoch's time and the ETA;
  every metric stays in ``metrics.csv`` and ``metrics.jsonl``;
- warnings (non-finite metrics, a plateau's lr cut, a slow data loader).

Colour and emoji marks appear on a terminal unless ``NO_COLOR`` is set,
which removes colour only: the bar stays. ``progress`` chooses ``"auto"``
(a bar on a terminal, lines elsewhere), ``"bar"``, ``"lines"`` or ``"none"``;
``quiet=True`` keeps only the facts, warnings and errors::

    loop = loop.add(console())                     # bar on a terminal, progress lines in a CI log
    loop = loop.add(console(progress="none"))      # the table and the facts, no progress
    loop = loop.add(console(quiet=True))           # the start and end, warnings and errors only

What is said is computed from the state by pure functions
(:func:`start_lines`, :func:`epoch_row`, :func:`progress_line`,
:func:`end_lines`); the callbacks are a thin shell that times, draws the bar
and logs. Timings live in the console's own session object, never in the
state, so a run with a console and a replay without one reach the same bits.

Where the lines go: a :class:`ConsoleHandler` on the ``smartcash_fn`` logger
when there is one (the command line installs it with
:func:`console_logging`, on stderr); when nothing is set up the console adds
its own for the run (on stderr); when the application configured logging (a
handler on the root logger) the records go there as plain text; ``stream``,
when given, always gets the console's own handler.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Sequence, TextIO

import attrs

from .. import distributed
from ..events import Callback, writer
from ..state import TrainState
from .timing import data_bound
from .values import fmt_value, number, plural

LOGGER_NAME = "smartcash_fn"
logger = logging.getLogger(LOGGER_NAME)

MARKS = {"start": "🚀", "best": "✨", "saved": "💾", "stop": "🛑", "warning": "⚠️", "error": "❌", "done": "🏁"}
_ANSI = {"good": "32", "bad": "31", "dim": "2", "bold": "1", "warn": "33", "error": "1;31"}
_EXTRA = "smartcash_fn_console"  # the record attribute holding (mark, segments)

ROW_MARK = "  "
"""The mark of a table line that has none: as wide as an emoji, so that the columns stay aligned."""

PROGRESS = ("auto", "bar", "lines", "none")
"""The progress modes: a bar on a terminal and lines elsewhere (``auto``), always a ``bar``, ``lines``, or ``none``."""

DEFAULT_COLUMNS = 80
"""The bar's width when the terminal does not say (a pseudo-terminal that reports 0 columns)."""

Segment = tuple[str, "str | None"]


# --------------------------------------------------------------------------- style


@attrs.frozen
class Style:
    """How console lines look: ANSI ``color``, ``emoji`` marks, and whether the stream can show a ``bar``.

    ``Style()`` is plain text; ``style_for(sys.stderr)`` decides from the stream and the environment.
    """

    color: bool = False
    emoji: bool = False
    bar: bool = False


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def style_for(stream: Any, color: bool | None = None, bar: bool | None = None) -> Style:
    """The :class:`Style` for ``stream``: colour and a bar on a terminal; ``NO_COLOR`` removes the colour only.

    ``color=True`` forces colour and emoji (``FORCE_COLOR`` in the environment
    does too); ``color=False`` forces plain text. A bar needs a terminal that
    can redraw a line (not ``TERM=dumb``)::

        style_for(sys.stderr)              # Style(color=True, emoji=True, bar=True) in a terminal
    """
    no_color = bool(os.environ.get("NO_COLOR"))
    tty = _isatty(stream) and os.environ.get("TERM") != "dumb"
    if color is None:
        forced = os.environ.get("FORCE_COLOR", "")
        color = (tty and not no_color) or (bool(forced) and forced != "0" and not no_color)
    if bar is None:
        bar = tty
    return Style(color=bool(color), emoji=bool(color), bar=bool(bar))


def progress_kind(mode: str, style: Style) -> str:
    """What shows progress inside an epoch: ``"bar"``, ``"lines"`` or ``"none"``, for a mode of :data:`PROGRESS`.

    ``progress_kind("auto", style_for(sys.stderr))`` is ``"bar"`` on a terminal and ``"lines"`` in a pipe.
    """
    if mode not in PROGRESS:
        raise ValueError(f"progress: expected one of {', '.join(PROGRESS)}, got {mode!r}")
    if mode == "auto":
        return "bar" if style.bar else "lines"
    return mode


def terminal_size(stream: Any) -> tuple[int, int, bool]:
    """The bar's columns and rows on ``stream``, and whether the terminal said both.

    A terminal that reports 0 columns or rows (a bare pseudo-terminal) gets
    ``COLUMNS``/``LINES`` or :data:`DEFAULT_COLUMNS` x 24 rather than a bar
    drawn empty or hidden::

        terminal_size(sys.stderr)      # (120, 40, True) in a 120 x 40 terminal
    """
    try:
        cols, rows = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        cols = rows = 0
    if cols > 0 and rows > 0:
        return cols, rows, True

    def env(name: str, default: int) -> int:
        v = os.environ.get(name, "")
        return int(v) if v.isdigit() and int(v) > 0 else default

    return cols or env("COLUMNS", DEFAULT_COLUMNS), rows or env("LINES", 24), False


def render(segments: Sequence[Segment], mark: str | None, style: Style) -> str:
    """One console line from ``(text, tone)`` segments and a status mark, in ``style``.

    Tones are ``good`` (green), ``bad`` (red), ``warn``, ``error``, ``dim``, ``bold`` or None::

        render([("val/loss 0.41", "good")], "✨", Style(color=True, emoji=True))
    """
    parts = []
    for text, tone in segments:
        code = _ANSI.get(tone or "") if style.color else None
        parts.append(f"\x1b[{code}m{text}\x1b[0m" if code else text)
    line = "".join(parts)
    return f"{mark} {line}" if mark and style.emoji else line


def plain_text(segments: Sequence[Segment]) -> str:
    """The segments' text without colour or marks: what a log file or another handler gets."""
    return "".join(text for text, _ in segments)


# --------------------------------------------------------------------------- metrics


def direction(name: str) -> str | None:
    """Whether a metric is better lower (``"min"``), higher (``"max"``) or neither (None), by its name.

    ``direction("val/loss")`` is ``"min"``; ``direction("val/mAP50")`` is ``"max"``; ``direction("lr")`` is None.
    """
    low = name.lower()
    if "loss" in low:
        return "min"
    if any(w in low for w in ("acc", "map", "precision", "recall", "f1")):
        return "max"
    return None


def tone_of(name: str, delta: float) -> str | None:
    """``"good"`` when a change of ``delta`` in metric ``name`` is an improvement, ``"bad"`` when worse.

    ``tone_of("train/loss", -0.1)`` is ``"good"``; no tone for a zero, NaN or undirected change.
    """
    d = direction(name)
    if d is None or not math.isfinite(delta) or delta == 0:
        return None
    return "good" if (delta < 0) == (d == "min") else "bad"


def fmt_duration(seconds: float) -> str:
    """A duration for people: ``'12.3s'``, ``'4m05s'``, ``'1h02m'``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def fmt_rate(rate: float) -> str:
    """Samples per second for people: ``'1,234'`` from 100 up, three significant digits below (``'52.1'``)."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def batch_size_of(batch: Any) -> int | None:
    """The number of samples in a batch: the length of the first tensor of a tuple/list (or of a lone tensor).

    ``batch_size_of((x, y))`` is ``len(x)``; None when the batch holds no tensor first.
    """
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else None


# --------------------------------------------------------------------------- the epoch table (pure)


def _headline(key: str) -> bool:
    return key.count("/") == 1 and key.split("/", 1)[0] in ("train", "val")


def table_columns(record: Mapping[str, Any], monitor: str | None = None) -> list[str]:
    """The metrics the epoch table shows, of an epoch record: the losses, the monitored one, one quality metric.

    ``train/loss`` and ``val/loss`` when recorded, then ``monitor`` when not
    one of them, then the first other headline metric that is better higher
    (validation's first)::

        table_columns({"train/loss": 1, "val/loss": 1, "val/mAP50": 0.3, "val/mAP50-95": 0.1}, "val/mAP50")
        # ['train/loss', 'val/loss', 'val/mAP50', 'val/mAP50-95']
    """
    keys = [k for k in record if number(record[k]) is not None]
    cols = [k for k in ("train/loss", "val/loss") if k in keys]
    if not cols:
        cols = [k for k in keys if _headline(k) and direction(k) == "min"][:1]
    if monitor and monitor in keys and monitor not in cols:
        cols.append(monitor)
    quality = [k for k in keys if _headline(k) and direction(k) == "max" and k not in cols]
    quality.sort(key=lambda k: not k.startswith("val/"))
    return cols + quality[:1]


@attrs.frozen
class Table:
    """The epoch table's layout: the metric ``columns``, the ``monitor`` (its cell carries the best), cell widths.

    ``Table.of(record, "val/mAP50", planned=5)``; :func:`table_header` and :func:`epoch_row` draw it.
    """

    columns: tuple[str, ...]
    monitor: str | None
    widths: tuple[int, ...]
    epoch_width: int

    @classmethod
    def of(cls, record: Mapping[str, Any], monitor: str | None = None, planned: int = 0) -> "Table":
        """The layout for runs whose epoch records look like ``record``, ``planned`` epochs long."""
        cols = tuple(table_columns(record, monitor))
        widths = tuple(max(len(c), 22 if c == monitor else 9) for c in cols)
        return cls(cols, monitor, widths, max(len("epoch"), 2 * len(str(planned or 0)) + 1))


def table_header(table: Table) -> list[Segment]:
    """The table's header line: ``epoch``, the metric names, ``took`` and ``ETA``, aligned over the cells."""
    cells = [f"{'epoch':<{table.epoch_width}}"] + [f"{c:<{w}}" for c, w in zip(table.columns, table.widths)]
    return [("  ".join(cells + [f"{'took':<7}", "ETA"]), "bold")]


def epoch_row(table: Table, epochs: Sequence[Mapping[str, Any]], planned: int = 0, best: Any = None,
              took: float | None = None, eta: float | None = None) -> list[Segment]:
    """The row of the newest epoch record: its number, each column's value, the best, the time, the ETA.

    A value is green when better than the previous epoch's and red when worse;
    the monitor's cell reads ``0.361 (best 0.361 *)``, ``*`` when this epoch
    set the best (``best`` is ``state.best``)::

        plain_text(epoch_row(Table.of(rec, "val/loss", 3), state.history.epochs, 3, state.best, took=4.0))
        # '2/3    0.3521     0.3117 (best 0.3117 *)  4.0s     2.8s'
    """
    rec = epochs[-1]
    prev = epochs[-2] if len(epochs) > 1 else {}
    e = number(rec.get("epoch"))
    n = int(e) + 1 if e is not None else len(epochs)
    segs: list[Segment] = [(f"{f'{n}/{planned}' if planned else n:<{table.epoch_width}}", "bold")]
    for col, w in zip(table.columns, table.widths):
        v, p = number(rec.get(col)), number(prev.get(col))
        text = "-" if v is None else fmt_value(v)
        tone = tone_of(col, v - p) if v is not None and p is not None else None
        segs.append(("  ", None))
        if col == table.monitor and best is not None:
            star = number(rec.get("epoch")) == best.epoch
            tail = f" (best {fmt_value(best.value)}{' *' if star else ''})"
            segs += [(text, tone), (tail, "good" if star else "dim"), (" " * max(0, w - len(text) - len(tail)), None)]
        else:
            segs.append((f"{text:<{w}}", tone))
    segs += [("  ", None), (f"{fmt_duration(took) if took is not None else '-':<7}", "dim"),
             ("  ", None), (fmt_duration(eta) if eta is not None else "-", "dim")]
    return _trim(segs)


def _trim(segs: list[Segment]) -> list[Segment]:
    """The segments without trailing blanks (a row ends where its text does)."""
    while segs and not segs[-1][0].strip():
        segs.pop()
    if segs:
        segs[-1] = (segs[-1][0].rstrip(), segs[-1][1])
    return segs


# --------------------------------------------------------------------------- progress inside an epoch (pure)


def progress_due(done: int, total: int, last_done: int, last_time: float, now: float, every: float = 0.1,
                 seconds: float = 30.0, gap: float = 1.0) -> bool:
    """Whether a progress line is due after batch ``done`` of ``total``: a new tenth reached, or 30 s passed.

    ``last_done``/``last_time`` are the batch and the time of the last line
    (or the epoch's start); never two lines within ``gap`` seconds, so a
    short epoch says little::

        progress_due(30, 281, 27, t0, t0 + 2.0)     # True: 10% of 281 passed since batch 27
    """
    if now - last_time < gap or done <= last_done:
        return False
    if now - last_time >= seconds:
        return True
    if total <= 0:
        return False
    step = max(1, math.ceil(total * every))
    return done // step > last_done // step or done == total


def progress_line(epoch: int, planned: int, done: int, total: int, rate: float | None = None,
                  loss: float | None = None, eta_epoch: float | None = None,
                  eta_run: float | None = None) -> list[Segment]:
    """A progress line for a pipe or a CI log: where the run is, samples/s, the step's loss, the ETA.

    ``epoch`` counts from 1; the epoch's last batch has no ETA::

        plain_text(progress_line(2, 5, 120, 281, 52.1, 4.512, 58.0, 370.0))
        # 'epoch 2/5 batch 120/281  52.1 samples/s  loss 4.512  ETA epoch 58.0s, run 6m10s'
    """
    where = f"epoch {epoch}/{planned}" if planned else f"epoch {epoch}"
    text = f"{where} batch {done}/{total}" if total else f"{where} batch {done}"
    if rate is not None:
        text += f"  {fmt_rate(rate)} samples/s"
    if loss is not None:
        text += f"  loss {fmt_value(loss)}"
    if eta_epoch is not None and not (total and done >= total):
        text += f"  ETA epoch {fmt_duration(eta_epoch)}" + (f", run {fmt_duration(eta_run)}" if eta_run is not None
                                                             else "")
    return [(text, None)]


def bar_postfix(state: TrainState, rate: float | None) -> dict[str, str]:
    """What the progress bar shows beside the count: the step's loss, samples/s, and when validation is next.

    ``bar_postfix(state, 1234.0)`` -> ``{"loss": "0.4123", "samples/s": "1,234"}``.
    """
    post = {}
    loss = state.metrics.get("loss")
    if loss is not None:
        post["loss"] = fmt_value(float(loss))
    if rate is not None:
        post["samples/s"] = fmt_rate(rate)
    if state.run.batches and state.progress.batch >= state.run.batches and state.run.val_batches:
        post["next"] = "validation"
    return post


# --------------------------------------------------------------------------- logging


def log(level: int, segments: Sequence[Segment], mark: str | None = None) -> None:
    """Log a console line on the ``smartcash_fn`` logger: plain text for any handler, styled for the console's.

    ``log(logging.INFO, [("saved last.pt", None)], MARKS["saved"])``
    """
    logger.log(level, plain_text(segments), extra={_EXTRA: (mark, tuple(segments))})


class ConsoleHandler(logging.Handler):
    """A logging handler writing styled console lines through ``tqdm.write`` (bars are redrawn below).

    ``stream`` None means ``sys.stderr`` as it is when a line is written; the
    style is decided from the stream unless given::

        logging.getLogger("smartcash_fn").addHandler(ConsoleHandler(sys.stderr))
    """

    def __init__(self, stream: TextIO | None = None, style: Style | None = None, level: int = logging.INFO,
                 transient: bool = False) -> None:
        super().__init__(level)
        self._stream, self._style, self.transient = stream, style, transient
        self._styled: tuple[Any, Style] | None = None

    @property
    def stream(self) -> TextIO:
        """Where the lines go."""
        return self._stream if self._stream is not None else sys.stderr

    @property
    def style(self) -> Style:
        """How the lines look on :attr:`stream`."""
        if self._style is not None:
            return self._style
        out = self.stream
        if self._styled is None or self._styled[0] is not out:
            self._styled = (out, style_for(out))
        return self._styled[1]

    def line(self, record: logging.LogRecord) -> str:
        """The text this handler writes for ``record``."""
        payload = getattr(record, _EXTRA, None)
        if payload is not None:
            mark, segments = payload
            return render(segments, mark, self.style)
        mark = MARKS["error"] if record.levelno >= logging.ERROR else (
            MARKS["warning"] if record.levelno >= logging.WARNING else None)
        tone = "error" if record.levelno >= logging.ERROR else ("warn" if record.levelno >= logging.WARNING else None)
        return render([(record.getMessage(), tone)], mark, self.style)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            out = self.stream
            tqdm.write(self.line(record), file=out)
            out.flush()
        except Exception:  # noqa: BLE001 - logging must never break training
            self.handleError(record)


def console_handler() -> ConsoleHandler | None:
    """The :class:`ConsoleHandler` on the ``smartcash_fn`` logger, if there is one."""
    return next((h for h in logger.handlers if isinstance(h, ConsoleHandler)), None)


@contextlib.contextmanager
def console_logging(stream: TextIO | None = None) -> Iterator[ConsoleHandler]:
    """The ``smartcash_fn`` logger writing to ``stream`` (default: ``sys.stderr``) at INFO while the block runs.

    What a program does once, so that its own facts and a run's console share
    one handler and one stream (the command line does)::

        with console_logging():
            fit(state, loop.add(console()))     # the console finds the handler and uses it
    """
    handler = ConsoleHandler(stream)
    level = logger.level
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --------------------------------------------------------------------------- what is said at each event (pure)

Line = tuple[int, list[Segment], "str | None"]
"""A console line: ``(logging level, segments, status mark or None)``."""


def start_lines(state: TrainState, run_dir: Any = None, processes: int = 1, max_time: float | None = None
                ) -> list[Line]:
    """The line at ``training_start``: what is trained, where a resumed run picks up, and the run folder.

    Epochs and batches are counted from 1; with a time budget (``max_time``
    seconds) not yet planned, the epochs are an upper bound::

        plain_text(start_lines(state, "runs/tiny")[0][1])
        # 'training tiny: 3 epochs of 8 batches -> runs/tiny', or on resume
        # 'resuming tiny at epoch 2/3, batch 5/8 (step 12) -> runs/tiny'; with max_time=600.0:
        # 'training tiny: at most 3 epochs of 8 batches, within 10m00s -> runs/tiny'
    """
    p, r = state.progress, state.run
    name = _run_name(state)
    if p.step or p.epoch or p.batch:
        at = f"epoch {p.epoch + 1}" + (f"/{r.epochs}" if r.epochs else "")
        if p.batch:
            at += f", batch {p.batch + 1}" + (f"/{r.batches}" if r.batches else "")
        text = f"resuming{' ' + name if name else ''} at {at} (step {p.step})"
    else:
        budget = max_time is not None and not state.callbacks.get("time_budget")
        text = f"training{' ' + name + ':' if name else ''}"
        text += f" {'at most ' if budget else ''}{plural(r.epochs, 'epoch')}" if r.epochs else ""
        text += f" of {plural(r.batches, 'batch', 'batches')}" if r.batches else ""
        text += f", within {fmt_duration(max_time)}" if budget else ""
    if processes > 1:
        text += f" on each of {processes} processes"
    segs: list[Segment] = [(text, "bold")]
    if run_dir is not None:
        segs.append((f" -> {run_dir}", None))
    return [(logging.INFO, segs, MARKS["start"])]


def _run_name(state: TrainState) -> str:
    run = (state.recipe or {}).get("run")
    name = run.get("name") if isinstance(run, Mapping) else None
    return name if isinstance(name, str) else ""


def epoch_warnings(state: TrainState, previous_scale: float | None = None) -> list[Line]:
    """The warnings at ``epoch_end``: non-finite metrics, and an lr cut by a plateau (``previous_scale`` before).

    ``epoch_warnings(state, previous_scale=1.0)`` -> ``[]`` or ``lr scale 1 -> 0.5 (plateau)``.
    """
    epochs = state.history.epochs
    if not epochs:
        return []
    rec = epochs[-1]
    out: list[Line] = []
    bad = [k for k, v in rec.items() if (x := number(v)) is not None and not math.isfinite(x)]
    if bad:
        out.append((logging.WARNING, [(f"non-finite {', '.join(bad)} in epoch {len(epochs)}", "warn")],
                    MARKS["warning"]))
    if previous_scale is not None and state.lr_scale != previous_scale:
        out.append((logging.INFO, [(f"lr scale {previous_scale:.3g} -> {state.lr_scale:.3g} (plateau)", "warn")],
                    MARKS["warning"]))
    return out


def clock_lines(state: TrainState) -> list[Line]:
    """A warning at ``epoch_end`` when the epoch waited longer for batches than it spent in steps.

    Read from ``state.clock`` (the loop's timings, transient)::

        clock_lines(state)   # [] or "data loader is the bottleneck: waited 12.1 s for batches, 4.0 s in steps ..."
    """
    c = state.clock
    if not data_bound(c):
        return []
    return [(logging.WARNING, [(f"data loader is the bottleneck: waited {c.data:.1f} s for batches, {c.step:.1f} s "
                                "in steps this epoch (more loader workers, or a cheaper augmentation)", "warn")],
             MARKS["warning"])]


def plan_lines(plan: Mapping[str, Any] | None, first: float | None = None) -> list[Line]:
    """The line that says what a time budget planned (``state.callbacks["time_budget"]``), when it is fixed.

    ``first`` is the first epoch's wall time as the console measured it::

        plan_lines({"max_time": 600.0, "epochs": 5, "cap": 8}, first=118.0)
        # time budget 10m00s: the first epoch took 1m58s, so 5 of at most 8 epochs
    """
    if not isinstance(plan, Mapping) or "max_time" not in plan:
        return []
    took = f" the first epoch took {fmt_duration(first)}, so" if first is not None else ""
    return [(logging.INFO, [(f"time budget {fmt_duration(float(plan['max_time']))}:{took} {plan['epochs']} of at "
                             f"most {plural(int(plan['cap']), 'epoch')}", None)], None)]


def saved_lines(info: Mapping[str, Any] | None) -> list[Line]:
    """The line at ``checkpoint_saved`` from the writer's notice: the path, and whether it is best or restored.

    The epoch table's ``*`` already says when an epoch is the best, so these
    lines are DEBUG, except the restored params written as training ends::

        saved_lines({"last": "runs/a/checkpoints/epoch-0003.pt", "is_best": True})   # saved ... (best)
    """
    last = (info or {}).get("last")
    if not last:
        return []
    segs: list[Segment] = [(f"saved {last}", None)]
    if info.get("is_best"):
        segs.append((" (best)", "good"))
    if info.get("restored"):
        segs.append((" (the restored params, as training ended)", None))
    return [(logging.INFO if info.get("restored") else logging.DEBUG, segs, MARKS["saved"])]


def end_lines(state: TrainState, wall: float | None = None) -> list[Line]:
    """The lines at ``training_end``: finished, stopped early or failed, with the epochs, wall time and the best.

    ``end_lines(state, wall=93.0)`` — ``wall`` is this session's time, measured by the console; epochs count from 1.
    """
    took = fmt_duration(wall) if wall is not None else "?"
    stop, b, p = state.stop, state.best, state.progress
    best = f"; best {b.monitor} {fmt_value(b.value)} at epoch {b.epoch + 1}" if b is not None else ""
    ran = f"{plural(p.epoch, 'epoch')} ({plural(p.step, 'step')})"
    if stop is not None and stop.failed:
        out: list[Line] = [(logging.ERROR, [(f"stopped on error: {stop.reason}", "error")], MARKS["error"])]
    elif stop is not None:
        out = [(logging.INFO, [(f"stopped: {stop.reason}", "warn"), (f"; {ran} in {took}{best}", None)],
                MARKS["stop"])]
    else:
        out = [(logging.INFO, [(f"finished {ran}", "bold"), (f" in {took}{best}", None)], MARKS["done"])]
    plan = state.callbacks.get("time_budget")
    if isinstance(plan, Mapping) and "max_time" in plan:
        out.append((logging.INFO, [(f"time budget {fmt_duration(float(plan['max_time']))}, used {took}", None)],
                    None))
    for cb_state in state.callbacks.values():
        if isinstance(cb_state, Mapping) and "restored_epoch" in cb_state:
            out.append((logging.INFO, [(f"restored the params of epoch {cb_state['restored_epoch'] + 1}", None)], None))
    return out


# --------------------------------------------------------------------------- the I/O shell


@attrs.define
class _Session:
    """What one console holds while a run goes: its handler, the bar, the table, the clocks (never the state)."""

    quiet: bool
    stream: TextIO | None
    color: bool | None
    bar_on: bool | None
    mode: str
    run_dir: Any
    clock: Callable[[], float]
    max_time: float | None = None
    handler: ConsoleHandler | None = None
    level: int | None = None
    style: Style = Style()
    kind: str = "none"
    out: Any = None
    bar: Any = None
    table: Table | None = None
    t0: float | None = None
    t_epoch: float | None = None
    epoch_times: list = attrs.Factory(list)
    scale: float = 1.0
    plan_shown: bool = False
    postfix_at: float = 0.0
    rate_t0: float = 0.0
    rate_n0: int = 0
    line_at: tuple[int, float] = (0, 0.0)

    def say(self, lines: Sequence[Line]) -> None:
        for level, segments, mark in lines:
            log(level, segments, mark)

    def install(self) -> None:
        self.uninstall()
        for h in list(logger.handlers):  # a console left behind by a run that raised
            if isinstance(h, ConsoleHandler) and h.transient:
                logger.removeHandler(h)
        shared = console_handler()
        if self.stream is None and shared is not None:
            self.out, self.style = shared.stream, style_for(shared.stream, self.color, self.bar_on)
        else:
            self.out = self.stream if self.stream is not None else sys.stderr
            self.style = style_for(self.out, self.color, self.bar_on)
            if self.stream is not None or not logging.getLogger().handlers:
                self.handler = ConsoleHandler(self.out, self.style, transient=True)
                logger.addHandler(self.handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            self.level = logger.level
            logger.setLevel(logging.INFO)
        self.kind = "none" if self.quiet else progress_kind(self.mode, self.style)

    def uninstall(self) -> None:
        self.close_bar()
        if self.handler is not None:
            logger.removeHandler(self.handler)
            self.handler = None
        if self.level is not None:
            logger.setLevel(self.level)
            self.level = None

    def open_bar(self, state: TrainState, done: int) -> None:
        self.close_bar()
        from tqdm import tqdm

        planned, e = state.run.epochs, state.progress.epoch + 1
        cols, rows, measured = terminal_size(self.out)
        size = {"dynamic_ncols": True} if measured else {"ncols": cols, "nrows": rows}
        self.bar = tqdm(total=state.run.batches or None, initial=done,
                        desc=f"epoch {e}/{planned}" if planned else f"epoch {e}", unit="batch", file=self.out,
                        leave=False, mininterval=0.2, **size)
        self.postfix_at = 0.0  # the first batch of each epoch shows its loss and rate

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def rate(self, state: TrainState, batch_size: int | None, now: float) -> float | None:
        bs = batch_size or getattr(state.run, "batch_size", None) or None
        elapsed = now - self.rate_t0
        done = state.progress.batch - self.rate_n0
        return done * bs / elapsed if bs and elapsed > 0 and done > 0 else None

    def etas(self, state: TrainState, now: float) -> tuple[float | None, float | None]:
        """Seconds left in this epoch's training, and in the run (the epochs after it at their mean time).

        Before a time budget is planned the run's ETA is at most what is left of ``max_time``.
        """
        p, r = state.progress, state.run
        done = p.batch - self.rate_n0
        if not r.batches or done <= 0:
            return None, None
        per_batch = (now - self.rate_t0) / done
        left = (r.batches - p.batch) * per_batch
        after = max(r.epochs - p.epoch - 1, 0)
        mean = sum(self.epoch_times) / len(self.epoch_times) if self.epoch_times else r.batches * per_batch
        run = left + after * mean if r.epochs else None
        return left, self.capped(state, run, now)

    def capped(self, state: TrainState, eta: float | None, now: float) -> float | None:
        """``eta``, or what is left of the time budget when that is sooner and the budget is not planned yet."""
        if eta is None or self.max_time is None or self.t0 is None or state.callbacks.get("time_budget"):
            return eta
        return max(0.0, min(eta, self.max_time - (now - self.t0)))


def console(quiet: bool = False, *, stream: TextIO | None = None, color: bool | None = None,
            bar: bool | None = None, progress: str = "auto", run_dir: Any = None, batch_size: int | None = None,
            checkpoint: str = "checkpoint", clock: Callable[[], float] = time.perf_counter,
            max_time: float | None = None, name: str = "console") -> tuple[Callback, ...]:
    """Callbacks reporting a run on the console: its facts, progress, and a table with a row per epoch.

    ``stream`` defaults to the command line's handler (:func:`console_logging`)
    or ``sys.stderr``; ``color``/``bar`` force the style either way (default:
    from the stream and ``NO_COLOR``); ``progress`` is one of :data:`PROGRESS`;
    ``run_dir`` is named in the start line. Samples/s needs the batch size:
    pass ``batch_size`` (a ``state.run`` that carries ``batch_size`` serves
    too). ``checkpoint`` names the checkpoint writer whose saves are noticed;
    ``clock`` is the time source (seconds); ``max_time`` the run's time
    budget in seconds (``train.max_time``), which bounds the ETA until the
    budget's plan is made. What is said is computed by
    :func:`start_lines`, :func:`epoch_row`, :func:`progress_line` and
    :func:`end_lines`; the callbacks only time and print::

        loop = loop.add(console())
        loop = loop.add(console(stream=open("train.log", "a")))   # plain text in a file
    """
    progress_kind(progress, Style())  # a bad mode fails here, not when the run starts
    session = _Session(quiet=quiet, stream=stream, color=color, bar_on=bar, mode=progress, run_dir=run_dir,
                       clock=clock, max_time=max_time)

    def start(state: TrainState) -> TrainState:
        session.install()
        session.t0, session.t_epoch, session.epoch_times, session.scale = session.clock(), None, [], state.lr_scale
        session.table = None
        session.plan_shown = bool(state.callbacks.get("time_budget"))  # a resumed run's plan was said before
        session.say(start_lines(state, session.run_dir, distributed.world().size, session.max_time))
        return state

    def epoch_start(state: TrainState) -> TrainState:
        session.t_epoch = session.rate_t0 = session.clock()
        session.rate_n0 = state.progress.batch
        session.line_at = (state.progress.batch, session.t_epoch)
        if session.kind == "bar":
            session.open_bar(state, state.progress.batch)
        return state

    def batch_end(state: TrainState) -> TrainState:
        if session.kind == "none":
            return state
        now = session.clock()
        if session.t_epoch is None:  # resumed mid-epoch: no epoch_start fired
            session.t_epoch = session.rate_t0 = now
            session.rate_n0 = state.progress.batch - 1
            session.line_at = (session.rate_n0, now)
        if session.kind == "lines":
            done, total = state.progress.batch, state.run.batches
            if progress_due(done, total, *session.line_at, now):
                session.line_at = (done, now)
                loss = number(state.metrics.get("loss"))
                eta_epoch, eta_run = session.etas(state, now)
                session.say([(logging.INFO, progress_line(state.progress.epoch + 1, state.run.epochs, done, total,
                                                          session.rate(state, batch_size, now), loss, eta_epoch,
                                                          eta_run), None)])
            return state
        if session.bar is None:
            session.open_bar(state, max(state.progress.batch - 1, 0))
        b = session.bar
        b.update(1)
        if now - session.postfix_at >= 0.5:  # at most every 0.5 s
            session.postfix_at = now
            b.set_postfix(bar_postfix(state, session.rate(state, batch_size, now)), refresh=True)
        return state

    def epoch_end(state: TrainState) -> TrainState:
        session.close_bar()
        epochs = state.history.epochs
        if not epochs:
            return state
        took = eta = None
        if session.t_epoch is not None:
            now = session.clock()
            took = now - session.t_epoch
            session.epoch_times.append(took)
            left = state.run.epochs - state.progress.epoch
            if left > 0 and state.stop is None:
                eta = session.capped(state, sum(session.epoch_times) / len(session.epoch_times) * left, now)
        session.t_epoch = None
        if not session.quiet:
            best = state.best
            monitor = best.monitor if best is not None else None
            t = session.table
            if t is None or t.monitor != monitor or not set(table_columns(epochs[-1], monitor)) <= set(t.columns):
                session.table = t = Table.of(epochs[-1], monitor, state.run.epochs)
                session.say([(logging.INFO, table_header(t), ROW_MARK)])
            mark = MARKS["best"] if best is not None and number(epochs[-1].get("epoch")) == best.epoch else ROW_MARK
            session.say([(logging.INFO, epoch_row(t, epochs, state.run.epochs, best, took, eta), mark)])
        session.say(epoch_warnings(state, session.scale))
        session.say(clock_lines(state))
        plan = state.callbacks.get("time_budget")
        if plan and not session.plan_shown:
            session.say(plan_lines(plan, session.epoch_times[0] if len(session.epoch_times) == 1 else None))
        session.plan_shown = bool(plan)
        session.scale = state.lr_scale
        return state

    def saved(state: TrainState) -> TrainState:
        session.say(saved_lines(state.callbacks.get(checkpoint)))
        return state

    def end(state: TrainState) -> TrainState:
        session.close_bar()
        session.say(end_lines(state, session.clock() - session.t0 if session.t0 is not None else None))
        session.uninstall()
        return state

    return (
        writer("training_start", start, priority=-1000, name=name),
        writer("epoch_start", epoch_start, priority=-1000, name=name),
        writer("batch_end", batch_end, priority=1100, name=name),
        writer("epoch_end", epoch_end, priority=950, name=name),
        writer("checkpoint_saved", saved, priority=-1000, name=name),
        writer("training_end", end, priority=1200, name=name),
    )
