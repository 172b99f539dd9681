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

Timings live in the callbacks' closure, never in the state, so a run with a
console and a replay without one reach the same bits.

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

from .._files import is_main_process
from ..events import Callback
from ..state import TrainState
from .values import number

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


def fmt_value(v: float) -> str:
    """A metric value in four significant digits: ``fmt_value(0.123456)`` is ``'0.1235'``."""
    return f"{v:.4g}"


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


# --------------------------------------------------------------------------- the callbacks


def console(quiet: bool = False, *, stream: TextIO | None = None, color: bool | None = None,
            bar: bool | None = None, batch_size: int | None = None, checkpoint: str = "checkpoint",
            name: str = "console") -> tuple[Callback, ...]:
    """Callbacks reporting a run on the console: bars, a coloured line per epoch, status marks.

    ``stream`` defaults to ``sys.stderr`` (looked up when the run starts);
    ``color``/``bar`` force the style either way (default: from the stream
    and ``NO_COLOR``). Samples/s in the bar needs the batch size: pass
    ``batch_size`` (a ``state.run`` that carries ``batch_size`` serves too).
    ``checkpoint`` names the checkpoint writer whose ``last`` path is shown::

        loop = loop.add(console())
        loop = loop.add(console(stream=open("train.log", "a")))   # plain text in a file
    """
    explicit_stream = stream
    mem: dict[str, Any] = {"handler": None, "level": None, "style": Style(), "bar": None, "t0": None,
                           "t_epoch": None, "epoch_times": [], "scale": 1.0, "postfix_at": 0.0,
                           "bar_t0": None, "bar_n0": 0}

    def say(level: int, segments: Sequence[Segment], mark: str | None = None) -> None:
        if quiet and level < logging.ERROR:
            return
        log(level, segments, mark)

    def close_bar() -> None:
        if mem["bar"] is not None:
            mem["bar"].close()
            mem["bar"] = None

    def install() -> None:
        uninstall()
        for h in list(logger.handlers):  # a console left behind by a run that raised
            if isinstance(h, ConsoleHandler):
                logger.removeHandler(h)
        out = explicit_stream if explicit_stream is not None else sys.stderr
        mem["style"] = style_for(out, color, bar)
        mem["out"] = out
        if explicit_stream is None and logger.hasHandlers():
            return  # the application configured logging: records go to its handlers
        handler = ConsoleHandler(out, mem["style"], logging.ERROR if quiet else logging.INFO)
        logger.addHandler(handler)
        mem["handler"] = handler
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            mem["level"] = logger.level
            logger.setLevel(logging.INFO)

    def uninstall() -> None:
        close_bar()
        if mem["handler"] is not None:
            logger.removeHandler(mem["handler"])
            mem["handler"] = None
        if mem["level"] is not None:
            logger.setLevel(mem["level"])
            mem["level"] = None

    def run_batch_size(state: TrainState) -> int | None:
        return batch_size or getattr(state.run, "batch_size", None) or None

    def open_bar(state: TrainState, done: int) -> None:
        close_bar()
        if quiet or not mem["style"].bar:
            return
        from tqdm import tqdm

        total = state.run.batches or None
        planned = state.run.epochs
        e = state.progress.epoch + 1
        mem["bar"] = tqdm(total=total, initial=done, desc=f"epoch {e}/{planned}" if planned else f"epoch {e}",
                          unit="batch", file=mem["out"], leave=False, dynamic_ncols=True, mininterval=0.2)
        mem["bar_t0"], mem["bar_n0"], mem["postfix_at"] = time.perf_counter(), done, 0.0

    def start(state: TrainState) -> TrainState:
        if not is_main_process():
            return state
        install()
        mem.update(t0=time.perf_counter(), t_epoch=None, epoch_times=[], scale=state.lr_scale)
        p, r = state.progress, state.run
        segs: list[Segment] = [(f"training {r.epochs} epochs" if r.epochs else "training", "bold")]
        if r.batches:
            segs.append((f" of {r.batches} batches", None))
        if p.step:
            where = f"epoch {p.epoch + 1}" + (f", batch {p.batch}" if p.batch else "")
            segs.append((f", resuming at {where} (step {p.step})", None))
        say(logging.INFO, segs, MARKS["start"])
        return state

    def epoch_start(state: TrainState) -> TrainState:
        if not is_main_process():
            return state
        mem["t_epoch"] = time.perf_counter()
        open_bar(state, 0)
        return state

    def batch_end(state: TrainState) -> TrainState:
        if quiet or not mem["style"].bar or not is_main_process():
            return state
        if mem["t_epoch"] is None:
            mem["t_epoch"] = time.perf_counter()  # resumed mid-epoch: no epoch_start fired
        b = mem["bar"]
        if b is None:
            open_bar(state, max(state.progress.batch - 1, 0))
            b = mem["bar"]
            if b is None:
                return state
        b.update(1)
        now = time.perf_counter()
        if now - mem["postfix_at"] >= 0.5:
            mem["postfix_at"] = now
            post = {}
            loss = state.metrics.get("loss")
            if loss is not None:
                post["loss"] = fmt_value(float(loss))
            bs = run_batch_size(state)
            elapsed = now - mem["bar_t0"]
            if bs and elapsed > 0:
                rate = (b.n - mem["bar_n0"]) * bs / elapsed
                post["samples/s"] = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
            if state.run.batches and state.progress.batch >= state.run.batches and state.run.val_batches:
                post["next"] = "validation"
            b.set_postfix(post, refresh=True)  # at most every 0.5 s
        return state

    def epoch_end(state: TrainState) -> TrainState:
        if not is_main_process():
            return state
        close_bar()
        now = time.perf_counter()
        epochs = state.history.epochs
        if not epochs:
            return state
        segs = epoch_segments(epochs, state.run.epochs)
        mark = None
        rec = epochs[-1]
        b = state.best
        if b is not None and number(rec.get("epoch")) == b.epoch:
            mark = MARKS["best"]
            segs += [("  ", None), (f"best {b.monitor}", "good")]
        if mem["t_epoch"] is not None:
            took = now - mem["t_epoch"]
            mem["epoch_times"].append(took)
            segs += [("  ", None), (fmt_duration(took), "dim")]
            left = state.run.epochs - state.progress.epoch
            times = mem["epoch_times"]
            if left > 0 and state.stop is None:
                segs.append((f"  eta {fmt_duration(sum(times) / len(times) * left)}", "dim"))
        mem["t_epoch"] = None
        say(logging.INFO, segs, mark)
        bad = [k for k, v in rec.items() if (x := number(v)) is not None and not math.isfinite(x)]
        if bad:
            say(logging.WARNING, [(f"non-finite {', '.join(bad)} in epoch {len(epochs)}", "warn")],
                MARKS["warning"])
        if state.lr_scale != mem["scale"]:
            say(logging.INFO, [(f"lr scale {mem['scale']:.3g} -> {state.lr_scale:.3g} (plateau)", "warn")],
                MARKS["warning"])
            mem["scale"] = state.lr_scale
        return state

    def saved(state: TrainState) -> TrainState:
        if not is_main_process():
            return state
        st = state.callbacks.get(checkpoint) or {}
        last = st.get("last")
        if last:
            segs: list[Segment] = [(f"saved {last}", None)]
            if st.get("is_best"):
                segs.append((" (best)", "good"))
            say(logging.INFO, segs, MARKS["saved"])
        return state

    def end(state: TrainState) -> TrainState:
        if not is_main_process():
            return state
        close_bar()
        wall = fmt_duration(time.perf_counter() - mem["t0"]) if mem["t0"] is not None else "?"
        stop, b = state.stop, state.best
        best = f"; best {b.monitor} {fmt_value(b.value)} at epoch {b.epoch + 1}" if b is not None else ""
        if stop is not None and stop.failed:
            say(logging.ERROR, [(f"stopped on error: {stop.reason}", "error")], MARKS["error"])
        elif stop is not None:
            say(logging.INFO, [(f"{stop.reason}", "warn"), (f" ({wall}){best}", None)], MARKS["stop"])
        else:
            say(logging.INFO, [(f"finished {state.progress.epoch} epochs", "bold"), (f" in {wall}{best}", None)],
                MARKS["done"])
        for cb_state in state.callbacks.values():
            if isinstance(cb_state, Mapping) and "restored_epoch" in cb_state:
                say(logging.INFO, [(f"restored the params of epoch {cb_state['restored_epoch'] + 1}", None)])
        uninstall()
        return state

    return (
        Callback("training_start", start, priority=-1000, name=name, writes=True),
        Callback("epoch_start", epoch_start, priority=-1000, name=name, writes=True),
        Callback("batch_end", batch_end, priority=1100, name=name, writes=True),
        Callback("epoch_end", epoch_end, priority=950, name=name, writes=True),
        Callback("checkpoint_saved", saved, priority=-1000, name=name, writes=True),
        Callback("training_end", end, priority=1200, name=name, writes=True),
    )
