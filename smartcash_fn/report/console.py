"""Console output: a progress bar per epoch, a line per epoch with its deltas, status marks.

:func:`console` returns callbacks that report a run as it goes, through the
``logging`` logger named ``smartcash_fn``:

- a tqdm bar per epoch (batches done of ``state.run.batches``, ETA, live
  loss and samples/s) on a terminal;
- a line per epoch with every metric and its change since the previous
  epoch, green when better and red when worse (a name with ``loss`` is better
  lower; ``acc``, ``mAP``, ``precision``, ``recall``, ``F1`` better higher);
- marks: 🚀 start, ✨ new best, 💾 checkpoint saved, 🛑 early stop,
  ⚠️ warning, ❌ error (a failed stop), 🏁 finished.

Colour, emoji and the bar appear only on a terminal without ``NO_COLOR``;
elsewhere (a pipe, a CI log, a file) the lines are plain text.
``quiet=True`` prints nothing but errors::

    loop = loop.add(console())                 # on a terminal: bars, colour, emoji
    loop = loop.add(console(quiet=True))       # only a failed stop is reported

What is said is computed from the state by pure functions
(:func:`start_lines`, :func:`epoch_lines`, :func:`saved_lines`,
:func:`end_lines`); the callbacks are a thin shell that times, draws the bar
and logs. Timings live in the console's own session object, never in the
state, so a run with a console and a replay without one reach the same bits.

When nothing is set up for logging, the console adds its own handler to the
``smartcash_fn`` logger for the run (writing through tqdm, so bars and lines
do not tear). When the application has configured logging (a handler on the
root logger), the records go there as plain text instead — unless ``stream``
is given, which always gets the console's own handler.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Mapping, Sequence, TextIO

import attrs

from ..events import Callback, writer
from ..state import TrainState
from .timing import data_bound
from .values import fmt_value, number

LOGGER_NAME = "smartcash_fn"
logger = logging.getLogger(LOGGER_NAME)

MARKS = {"start": "🚀", "best": "✨", "saved": "💾", "stop": "🛑", "warning": "⚠️", "error": "❌", "done": "🏁"}
_ANSI = {"good": "32", "bad": "31", "dim": "2", "bold": "1", "warn": "33", "error": "1;31"}
_EXTRA = "smartcash_fn_console"  # the record attribute holding (mark, segments)

Segment = tuple[str, "str | None"]


# --------------------------------------------------------------------------- style


@attrs.frozen
class Style:
    """How console lines look: ANSI ``color``, ``emoji`` marks, a progress ``bar``.

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
    """The :class:`Style` for ``stream``: fancy on a terminal, plain when not or when ``NO_COLOR`` is set.

    ``color=True`` forces colour and emoji (``FORCE_COLOR`` in the environment
    does too); ``color=False`` forces plain text. The bar needs a terminal::

        style_for(sys.stderr)              # Style(color=True, emoji=True, bar=True) in a terminal
    """
    no_color = bool(os.environ.get("NO_COLOR"))
    tty = _isatty(stream) and os.environ.get("TERM") != "dumb"
    if color is None:
        forced = os.environ.get("FORCE_COLOR", "")
        color = (tty and not no_color) or (bool(forced) and forced != "0" and not no_color)
    if bar is None:
        bar = tty and not no_color
    return Style(color=bool(color), emoji=bool(color), bar=bool(bar))


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


def epoch_segments(history_epochs: Sequence[Mapping[str, Any]], planned: int = 0) -> list[Segment]:
    """The segments of the line for the newest epoch record: each metric, its delta, coloured by direction.

    ``plain_text(epoch_segments(state.history.epochs, 10))`` reads
    ``epoch 3/10  train/loss 0.4123 (-0.0312)  val/acc 0.91 (+0.02)  lr 0.001``.
    """
    if not history_epochs:
        return []
    rec = history_epochs[-1]
    prev = history_epochs[-2] if len(history_epochs) > 1 else {}
    e = number(rec.get("epoch"))
    n = int(e) + 1 if e is not None else len(history_epochs)
    segs: list[Segment] = [(f"epoch {n}/{planned}" if planned else f"epoch {n}", "bold")]
    for key, raw in rec.items():
        if key in ("epoch", "step"):
            continue
        v = number(raw)
        if v is None:
            continue
        segs.append(("  ", None))
        if key == "lr" or key.startswith("lr/"):
            segs.append((f"{key} {v:.3g}", None))
            continue
        p = number(prev.get(key))
        segs.append((f"{key} ", None))
        if p is None:
            segs.append((fmt_value(v), None))
            continue
        delta = v - p
        segs.append((f"{fmt_value(v)} ({delta:+.3g})", tone_of(key, delta)))
    return segs


def batch_size_of(batch: Any) -> int | None:
    """The number of samples in a batch: the length of the first tensor of a tuple/list (or of a lone tensor).

    ``batch_size_of((x, y))`` is ``len(x)``; None when the batch holds no tensor first.
    """
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else None


# --------------------------------------------------------------------------- logging


def log(level: int, segments: Sequence[Segment], mark: str | None = None) -> None:
    """Log a console line on the ``smartcash_fn`` logger: plain text for any handler, styled for the console's.

    ``log(logging.INFO, [("saved last.pt", None)], MARKS["saved"])``
    """
    logger.log(level, plain_text(segments), extra={_EXTRA: (mark, tuple(segments))})


class ConsoleHandler(logging.Handler):
    """A logging handler writing styled console lines through ``tqdm.write`` (bars are redrawn below).

    ``logging.getLogger("smartcash_fn").addHandler(ConsoleHandler(sys.stderr, style_for(sys.stderr)))``
    """

    def __init__(self, stream: TextIO, style: Style, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.stream, self.style = stream, style

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

            tqdm.write(self.line(record), file=self.stream)
            self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break training
            self.handleError(record)


# --------------------------------------------------------------------------- what is said at each event (pure)

Line = tuple[int, list[Segment], "str | None"]
"""A console line: ``(logging level, segments, status mark or None)``."""


def start_lines(state: TrainState) -> list[Line]:
    """The line at ``training_start``: what is trained, and where a resumed run picks up.

    ``plain_text(start_lines(state)[0][1])`` reads ``training 10 epochs of 50 batches, resuming at epoch 3 (step 100)``.
    """
    p, r = state.progress, state.run
    segs: list[Segment] = [(f"training {r.epochs} epochs" if r.epochs else "training", "bold")]
    if r.batches:
        segs.append((f" of {r.batches} batches", None))
    if p.step:
        where = f"epoch {p.epoch + 1}" + (f", batch {p.batch}" if p.batch else "")
        segs.append((f", resuming at {where} (step {p.step})", None))
    return [(logging.INFO, segs, MARKS["start"])]


def epoch_lines(state: TrainState, took: float | None = None, eta: float | None = None,
                previous_scale: float | None = None) -> list[Line]:
    """The lines at ``epoch_end``: the epoch's metrics and deltas, then warnings (non-finite, lr cut).

    ``took`` is the epoch's wall time and ``eta`` the time left (both measured
    by the console, never in the state); ``previous_scale`` the lr scale seen
    at the epoch before::

        [plain_text(segs) for _, segs, _ in epoch_lines(state, took=3.2, eta=30.0)]
    """
    epochs = state.history.epochs
    if not epochs:
        return []
    segs = epoch_segments(epochs, state.run.epochs)
    mark = None
    rec = epochs[-1]
    b = state.best
    if b is not None and number(rec.get("epoch")) == b.epoch:
        mark = MARKS["best"]
        segs += [("  ", None), (f"best {b.monitor}", "good")]
    if took is not None:
        segs += [("  ", None), (fmt_duration(took), "dim")]
        if eta is not None:
            segs.append((f"  eta {fmt_duration(eta)}", "dim"))
    out: list[Line] = [(logging.INFO, segs, mark)]
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
                             f"most {plan['cap']} epochs", None)], None)]


def saved_lines(info: Mapping[str, Any] | None) -> list[Line]:
    """The line at ``checkpoint_saved`` from the writer's notice: the path, and whether it is best or restored.

    ``saved_lines({"last": "runs/a/checkpoints/epoch-0003.pt", "is_best": True})`` -> ``saved ... (best)``.
    """
    last = (info or {}).get("last")
    if not last:
        return []
    segs: list[Segment] = [(f"saved {last}", None)]
    if info.get("is_best"):
        segs.append((" (best)", "good"))
    if info.get("restored"):
        segs.append((" (the restored params, as training ended)", None))
    return [(logging.INFO, segs, MARKS["saved"])]


def end_lines(state: TrainState, wall: float | None = None) -> list[Line]:
    """The lines at ``training_end``: finished, stopped early or failed, with the wall time and the best.

    ``end_lines(state, wall=93.0)`` — ``wall`` is this session's time, measured by the console.
    """
    took = fmt_duration(wall) if wall is not None else "?"
    stop, b = state.stop, state.best
    best = f"; best {b.monitor} {fmt_value(b.value)} at epoch {b.epoch + 1}" if b is not None else ""
    if stop is not None and stop.failed:
        out: list[Line] = [(logging.ERROR, [(f"stopped on error: {stop.reason}", "error")], MARKS["error"])]
    elif stop is not None:
        out = [(logging.INFO, [(f"{stop.reason}", "warn"), (f" ({took}){best}", None)], MARKS["stop"])]
    else:
        out = [(logging.INFO, [(f"finished {state.progress.epoch} epochs", "bold"), (f" in {took}{best}", None)],
                MARKS["done"])]
    plan = state.callbacks.get("time_budget")
    if isinstance(plan, Mapping) and "max_time" in plan:
        out.append((logging.INFO, [(f"time budget {fmt_duration(float(plan['max_time']))}, used {took}", None)],
                    None))
    for cb_state in state.callbacks.values():
        if isinstance(cb_state, Mapping) and "restored_epoch" in cb_state:
            out.append((logging.INFO, [(f"restored the params of epoch {cb_state['restored_epoch'] + 1}", None)], None))
    return out


def bar_postfix(state: TrainState, rate: float | None) -> dict[str, str]:
    """What the progress bar shows beside the count: the step's loss, samples/s, and when validation is next.

    ``bar_postfix(state, 1234.0)`` -> ``{"loss": "0.4123", "samples/s": "1,234"}``.
    """
    post = {}
    loss = state.metrics.get("loss")
    if loss is not None:
        post["loss"] = fmt_value(float(loss))
    if rate is not None:
        post["samples/s"] = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
    if state.run.batches and state.progress.batch >= state.run.batches and state.run.val_batches:
        post["next"] = "validation"
    return post


# --------------------------------------------------------------------------- the I/O shell


@attrs.define
class _Session:
    """What one console holds while a run goes: its handler, the bar and the clocks (never the state)."""

    quiet: bool
    stream: TextIO | None
    color: bool | None
    bar_on: bool | None
    handler: ConsoleHandler | None = None
    level: int | None = None
    style: Style = Style()
    out: Any = None
    bar: Any = None
    t0: float | None = None
    t_epoch: float | None = None
    epoch_times: list = attrs.Factory(list)
    scale: float = 1.0
    plan_shown: bool = False
    postfix_at: float = 0.0
    bar_t0: float = 0.0
    bar_n0: int = 0

    def say(self, lines: Sequence[Line]) -> None:
        for level, segments, mark in lines:
            if self.quiet and level < logging.ERROR:
                continue
            log(level, segments, mark)

    def install(self) -> None:
        self.uninstall()
        for h in list(logger.handlers):  # a console left behind by a run that raised
            if isinstance(h, ConsoleHandler):
                logger.removeHandler(h)
        self.out = self.stream if self.stream is not None else sys.stderr
        self.style = style_for(self.out, self.color, self.bar_on)
        if self.stream is None and logger.hasHandlers():
            return  # the application configured logging: records go to its handlers
        self.handler = ConsoleHandler(self.out, self.style, logging.ERROR if self.quiet else logging.INFO)
        logger.addHandler(self.handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            self.level = logger.level
            logger.setLevel(logging.INFO)

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
        if self.quiet or not self.style.bar:
            return
        from tqdm import tqdm

        planned, e = state.run.epochs, state.progress.epoch + 1
        self.bar = tqdm(total=state.run.batches or None, initial=done,
                        desc=f"epoch {e}/{planned}" if planned else f"epoch {e}", unit="batch", file=self.out,
                        leave=False, dynamic_ncols=True, mininterval=0.2)
        self.bar_t0, self.bar_n0, self.postfix_at = time.perf_counter(), done, 0.0

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def console(quiet: bool = False, *, stream: TextIO | None = None, color: bool | None = None,
            bar: bool | None = None, batch_size: int | None = None, checkpoint: str = "checkpoint",
            name: str = "console") -> tuple[Callback, ...]:
    """Callbacks reporting a run on the console: bars, a coloured line per epoch, status marks.

    ``stream`` defaults to ``sys.stderr`` (looked up when the run starts);
    ``color``/``bar`` force the style either way (default: from the stream
    and ``NO_COLOR``). Samples/s in the bar needs the batch size: pass
    ``batch_size`` (a ``state.run`` that carries ``batch_size`` serves too).
    ``checkpoint`` names the checkpoint writer whose saves are shown. What is
    said is computed by :func:`start_lines`, :func:`epoch_lines`,
    :func:`saved_lines` and :func:`end_lines`; the callbacks only time and print::

        loop = loop.add(console())
        loop = loop.add(console(stream=open("train.log", "a")))   # plain text in a file
    """
    session = _Session(quiet=quiet, stream=stream, color=color, bar_on=bar)

    def start(state: TrainState) -> TrainState:
        session.install()
        session.t0, session.t_epoch, session.epoch_times, session.scale = time.perf_counter(), None, [], state.lr_scale
        session.plan_shown = bool(state.callbacks.get("time_budget"))  # a resumed run's plan was said before
        session.say(start_lines(state))
        return state

    def epoch_start(state: TrainState) -> TrainState:
        session.t_epoch = time.perf_counter()
        session.open_bar(state, 0)
        return state

    def batch_end(state: TrainState) -> TrainState:
        if quiet or not session.style.bar:
            return state
        if session.t_epoch is None:
            session.t_epoch = time.perf_counter()  # resumed mid-epoch: no epoch_start fired
        if session.bar is None:
            session.open_bar(state, max(state.progress.batch - 1, 0))
            if session.bar is None:
                return state
        b = session.bar
        b.update(1)
        now = time.perf_counter()
        if now - session.postfix_at >= 0.5:  # at most every 0.5 s
            session.postfix_at = now
            bs = batch_size or getattr(state.run, "batch_size", None) or None
            elapsed = now - session.bar_t0
            rate = (b.n - session.bar_n0) * bs / elapsed if bs and elapsed > 0 else None
            b.set_postfix(bar_postfix(state, rate), refresh=True)
        return state

    def epoch_end(state: TrainState) -> TrainState:
        session.close_bar()
        if not state.history.epochs:
            return state
        took = eta = None
        if session.t_epoch is not None:
            took = time.perf_counter() - session.t_epoch
            session.epoch_times.append(took)
            left = state.run.epochs - state.progress.epoch
            if left > 0 and state.stop is None:
                eta = sum(session.epoch_times) / len(session.epoch_times) * left
        session.t_epoch = None
        session.say(epoch_lines(state, took, eta, session.scale))
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
        session.say(end_lines(state, time.perf_counter() - session.t0 if session.t0 is not None else None))
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
