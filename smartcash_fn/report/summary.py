"""The run summary: ``summary.md`` written at the end of training.

:func:`write_summary` is a ``training_end`` callback; :func:`summary_markdown`
is the pure function that builds the text from a state. The summary names the
run, says how it ended (epochs run, stop reason, wall time of this session, the time
budget when there is one, where the time went),
says which checkpoint file holds what (``last.pt`` the last trained state,
``best.pt`` the best epoch, ``final.pt`` the restored best params), lists
the best epoch's metrics (``state.best``) and the last epoch's, the sections
other callbacks handed it (:func:`add_section`: an application's own tables),
and closes with the resolved recipe as TOML (written by :func:`smartcash_fn.run.recipe.dumps`)::

    loop = loop.add(write_summary("runs/a"))
    print(summary_markdown(state, run_name="a"))
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs

from .._files import ensure_folder, write_text_atomic
from ..errors import StateError
from ..events import Callback, writer
from ..state import TrainState
from .console import fmt_duration
from .timing import EpochTimer, totals
from .toml import dumps
from .values import fmt_value, number, plain, plural

SECTIONS_LOGGER = "smartcash_fn.summary"
"""The logger that carries :func:`add_section`'s records: the summary collects them, the console prints them."""
_SECTION = "smartcash_fn_section"  # the record attribute holding (title, markdown)


def add_section(title: str, markdown: str, text: str | None = None) -> None:
    """Hand the run's summary a section, and the console its text: one INFO record, whatever the logger's level.

    A callback of an application calls it (at ``training_end``, before the
    summary is written at priority 1100): ``summary.md`` gets ``## title`` and
    ``markdown``; the console, like any handler of the ``smartcash_fn``
    logger, prints ``title:`` and ``text`` (default: ``markdown``)::

        add_section("Per class", markdown_of(table), table)   # a callback's own table, in a fenced block
    """
    log = logging.getLogger(SECTIONS_LOGGER)
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, f"{title}:\n{markdown if text is None else text}",
                            None, None, extra={_SECTION: (title, markdown)})
    log.handle(record)


class _Sections(logging.Filter):
    """Collects the sections :func:`add_section` hands out while a run goes (a filter that lets all through)."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[tuple[str, str]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        got = getattr(record, _SECTION, None)
        if got is not None:
            self.sections.append(got)
        return True


# --------------------------------------------------------------------------- markdown


def recipe_block(recipe: Mapping[str, Any] | None) -> str:
    """The recipe as a fenced TOML block (or JSON when it holds something TOML cannot say).

    ``recipe_block(state.recipe)``
    """
    if not recipe:
        return "_No recipe: the run was built in code._\n"
    try:
        return f"```toml\n{dumps(plain(recipe))}```\n"
    except (TypeError, ValueError):
        return f"```json\n{json.dumps(plain(recipe), indent=2, default=str)}\n```\n"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _metric_table(record: Mapping[str, Any]) -> list[str]:
    rows = ["| metric | value |", "|---|---|"]
    for k, v in record.items():
        if k in ("epoch", "step"):
            continue
        x = number(v)
        rows.append(f"| {_cell(k)} | {fmt_value(x) if x is not None else _cell(plain(v))} |")
    return rows


def run_name(state: TrainState, default: str = "run") -> str:
    """The run's name: the recipe's ``name`` (top level or under ``run``), else ``default``.

    ``run_name(state, Path(run_dir).name)``
    """
    r = state.recipe or {}
    for where in (r, r.get("run") if isinstance(r.get("run"), Mapping) else {}):
        n = where.get("name") if isinstance(where, Mapping) else None
        if isinstance(n, str) and n:
            return n
    return default


CHECKPOINT_ROLES = {
    "last.pt": "the last trained state (resume from it; replay to its step verifies against it)",
    "best.pt": "the best epoch by the monitor",
    "final.pt": "the state as training ended, with the best params restored (early stopping): not a trained state",
}
"""What each named checkpoint file holds, as the summary says it."""


def checkpoint_lines(names: Sequence[str]) -> list[str]:
    """The summary's "Checkpoints" section for the files in the run's ``checkpoints/`` folder (none: no section).

    ``checkpoint_lines(["best.pt", "epoch-0003.pt", "last.pt"])`` names ``last.pt`` and ``best.pt`` with their roles.
    """
    named = [n for n in CHECKPOINT_ROLES if n in names]
    if not named:
        return []
    others = sum(1 for n in names if n.endswith(".pt") and n not in CHECKPOINT_ROLES)
    rows = ["## Checkpoints", "", "| file | holds |", "|---|---|",
            *[f"| `checkpoints/{n}` | {CHECKPOINT_ROLES[n]} |" for n in named]]
    if others:
        rows.append(f"| {others} more | periodic (`epoch-*`, `step-*`, `final-*`) and top-k (`top-*`) files |")
    return rows + [""]


def budget_text(plan: Mapping[str, Any] | None, wall_seconds: float | None = None) -> str | None:
    """What a time budget (``state.callbacks["time_budget"]``) planned, and the wall time used; None without one.

    ``budget_text({"max_time": 600.0, "epochs": 5, "cap": 5}, 590.0)`` reads
    ``max_time 10m00s: 5 of at most 5 epochs planned; used 9m50s``.
    """
    if not isinstance(plan, Mapping) or "max_time" not in plan:
        return None
    text = f"max_time {fmt_duration(float(plan['max_time']))}: {plan['epochs']} of at most {plan['cap']} epochs planned"
    return text + (f"; used {fmt_duration(wall_seconds)}" if wall_seconds is not None else "")


def time_lines(times: Sequence[Mapping[str, Any]]) -> list[str]:
    """The summary's "Time" section: data wait, step, validation and checkpoint seconds, summed and per epoch.

    ``times`` are this session's :func:`~smartcash_fn.report.timing.time_record` records; no lines without them.
    """
    if not times:
        return []
    total = totals(times)
    whole = sum(total.values()) or 1.0
    names = {"time/data": "data wait", "time/step": "step", "time/val": "validation", "time/checkpoint": "checkpoint"}
    lines = ["## Time", "", f"Where the {plural(len(times), 'epoch')} of this session went (wall seconds; the data "
             "loader held training back where data wait exceeds step time):", "",
             "| | total | share | per epoch |", "|---|---|---|---|"]
    for k, label in names.items():
        lines.append(f"| {label} | {fmt_duration(total[k])} | {100 * total[k] / whole:.0f}% | "
                     f"{total[k] / len(times):.2f} s |")
    return lines + [""]


def model_lines(rows: Sequence[tuple[str, str]]) -> list[str]:
    """The summary's "Model" section: the model's footprint as ``(what, value)`` rows (none: no section).

    ``model_lines([("parameters", "1.23 M"), ("FLOPs of one forward pass", "0.86 GFLOPs")])``
    """
    if not rows:
        return []
    return ["## Model", "", "| | |", "|---|---|", *[f"| {_cell(k)} | {_cell(v)} |" for k, v in rows], ""]


def summary_markdown(state: TrainState, run_name: str = "run", wall_seconds: float | None = None,
                     session_epochs: int | None = None, checkpoints: Sequence[str] = (),
                     times: Sequence[Mapping[str, Any]] = (), model: Sequence[tuple[str, str]] = (),
                     sections: Sequence[tuple[str, str]] = ()) -> str:
    """The Markdown summary of a finished (or stopped) run.

    ``wall_seconds`` is this session's wall time and ``session_epochs`` the
    epochs it trained (both measured by :func:`write_summary`); ``checkpoints``
    the names in the run's ``checkpoints/`` folder, each named file's role said;
    ``times`` the session's epoch time records (see :func:`time_lines`); ``model``
    the model's footprint rows (see :func:`model_lines`); ``sections``
    ``(title, markdown)`` pairs other callbacks handed in (:func:`add_section`)::

        Path("summary.md").write_text(summary_markdown(state, "a", wall_seconds=93.0))
    """
    p, h, stop, best = state.progress, state.history, state.stop, state.best
    planned = state.run.epochs
    if stop is None:
        status = "finished"
        if planned and p.epoch >= planned:
            reason = f"all {p.epoch} planned epochs ran"
        else:
            reason = f"ended after epoch {p.epoch}" + (f" of {planned}" if planned else "")
    elif stop.failed:
        status, reason = "failed", stop.reason
    else:
        status, reason = "stopped early", stop.reason
    lines = [f"# Run summary: {run_name}", "", "| | |", "|---|---|", f"| status | {status} |",
             f"| stop reason | {_cell(reason)} |",
             f"| epochs run | {p.epoch}" + (f" of {planned}" if planned else "")
             + (f" ({session_epochs} in this session)" if session_epochs is not None and session_epochs != p.epoch
                else "") + " |",
             f"| steps | {p.step} |"]
    if wall_seconds is not None:
        lines.append(f"| wall time | {fmt_duration(wall_seconds)}"
                     + (" (this session)" if session_epochs is not None and session_epochs != p.epoch else "")
                     + " |")
    budget = budget_text(state.callbacks.get("time_budget"), wall_seconds)
    if budget is not None:
        lines.append(f"| time budget | {_cell(budget)} |")
    if best is not None:
        lines.append(f"| best | {_cell(best.monitor)} = {fmt_value(best.value)} at epoch {best.epoch + 1} "
                     f"({best.mode}) |")
    for cb in state.callbacks.values():
        if isinstance(cb, Mapping) and "restored_epoch" in cb:
            lines.append(f"| params restored | epoch {int(cb['restored_epoch']) + 1} |")
    lines.append("")
    lines += checkpoint_lines(checkpoints)
    if best is not None:
        lines += [f"## Best epoch: {best.epoch + 1} (by {best.monitor}, {best.mode})", "",
                  *_metric_table(best.metrics), ""]
    last = h.last()
    if last:
        e = number(last.get("epoch"))
        lines += [f"## Last epoch: {int(e) + 1 if e is not None else len(h.epochs)}", "",
                  *_metric_table(last), ""]
    else:
        lines += ["## Last epoch", "", "_No epoch finished._", ""]
    for title, markdown in sections:
        lines += [f"## {title}", "", markdown.rstrip("\n"), ""]
    lines += time_lines(times)
    lines += model_lines(model)
    lines += ["## Recipe", "", recipe_block(state.recipe)]
    lines += data_lines(state.data_info.get("problems") or ())
    return "\n".join(lines)


def data_lines(problems: Sequence[str], shown: int = 20) -> list[str]:
    """The summary's "Data" section: how many bad files or label lines the data factory skipped (or label files it
    found missing), the first
    ``shown`` of them (all are in ``data-problems.txt``); no lines when there were none.

    ``data_lines(["images/a.jpg: cannot decode"])``
    """
    if not problems:
        return []
    more = [f"- ... and {len(problems) - shown} more"] if len(problems) > shown else []
    return ["", "## Data", "", f"{plural(len(problems), 'data problem')} (bad files or label lines skipped, label "
            "files missing), all listed in `data-problems.txt`:", "", *[f"- `{s}`" for s in problems[:shown]],
            *more, ""]


def write_summary(run_dir: str | os.PathLike, filename: str = "summary.md", priority: int = 1100,
                  name: str = "summary", model: Callable[[], Sequence[tuple[str, str]]] | None = None
                  ) -> tuple[Callback, ...]:
    """Callbacks writing ``run_dir/summary.md`` at ``training_end`` (atomically; after the final checkpoint).

    The wall time is measured from ``training_start`` in this session and kept
    in the callback, never in the state; the checkpoint files are listed from
    ``run_dir/checkpoints``; ``model`` gives the rows of the "Model" section
    (a recipe's run passes the footprint of its model; this layer knows no model)::

        loop = loop.add(write_summary("runs/a"))
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise StateError(f"{name}: run_dir must be a path (str or os.PathLike), got {type(run_dir).__name__}")
    folder = Path(run_dir)
    clock = _Clock()
    timer = EpochTimer()
    handed = _Sections()
    sections_logger = logging.getLogger(SECTIONS_LOGGER)

    def start(state: TrainState) -> TrainState:
        clock.t0, clock.epoch0 = time.perf_counter(), state.progress.epoch
        timer.records = []
        handed.sections = []
        sections_logger.addFilter(handed)
        return state

    def end(state: TrainState) -> TrainState:
        wall = time.perf_counter() - clock.t0 if clock.t0 is not None else None
        ckpts = folder / "checkpoints"
        names = sorted(os.listdir(ckpts)) if ckpts.is_dir() else []
        sections_logger.removeFilter(handed)
        text = summary_markdown(state, run_name(state, folder.resolve().name), wall,
                                state.progress.epoch - clock.epoch0, names, timer.records,
                                model() if model is not None else (), handed.sections)
        ensure_folder(folder, name)
        write_text_atomic(folder / filename, text)
        return state

    return (
        writer("training_start", start, priority=priority, name=name),
        *timer.callbacks(name),
        writer("training_end", end, priority=priority, name=name),
    )


@attrs.define
class _Clock:
    """When this session started and at which epoch (kept by the callback, never in the state)."""

    t0: float | None = None
    epoch0: int = 0
