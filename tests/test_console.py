"""Console output: plain text off a terminal or with NO_COLOR, colour by direction when forced, status marks.

A scripted step sets the step metrics per epoch, so the epoch lines and
their deltas are known exactly: ``loss`` 1.0, 0.5, 0.75 (better, then
worse), ``acc`` 0.25, 0.5, 0.25 (better, then worse), ``grad_norm`` 1, 2, 3
(no direction).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import smartcash_fn as sf
from smartcash_fn import checkpoint
from smartcash_fn.report.sinks import read_csv, read_jsonl
from conftest import make_mlp, tiny_xy
from smartcash_fn.report.console import (
    DEFAULT_COLUMNS,
    LOGGER_NAME,
    MARKS,
    ConsoleHandler,
    Style,
    Table,
    batch_size_of,
    console,
    console_logging,
    direction,
    epoch_row,
    fmt_duration,
    plain_text,
    progress_due,
    progress_kind,
    progress_line,
    style_for,
    table_columns,
    table_header,
    terminal_size,
    tone_of,
)

LOSS = [1.0, 0.5, 0.75, 0.8, 0.9]
ACC = [0.25, 0.5, 0.25, 0.25, 0.25]
GREEN, RED, RESET = "\x1b[32m", "\x1b[31m", "\x1b[0m"


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    for var in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def scripted_step(loss=LOSS):
    def step(state, batch):
        e = state.progress.epoch
        metrics = {"loss": torch.tensor(loss[e]), "acc": torch.tensor(ACC[e]), "grad_norm": torch.tensor(e + 1.0)}
        return state.replace(params=dict(state.params), metrics=metrics)  # new params dict: a "trained" state

    return step


def run(*callbacks, epochs=3, loss=LOSS):
    x, y = tiny_xy(64)
    loop = sf.Loop(step=scripted_step(loss), data=sf.TensorData((x, y), 16), epochs=epochs, callbacks=callbacks)
    return sf.fit(sf.TrainState.create(make_mlp, sf.sgd(0.1), seed=0), loop)


def lines(text):
    return [ln for ln in text.splitlines() if ln.strip()]


def has_emoji(text):
    return any(m in text for m in MARKS.values())


# --------------------------------------------------------------------------- plain and coloured output


class FakeClock:
    """A clock that moves ``dt`` seconds each time it is read: the console's timings, known exactly."""

    def __init__(self, dt=0.1):
        self.t, self.dt = 0.0, dt

    def __call__(self):
        self.t += self.dt
        return self.t


def test_plain_text_when_the_stream_is_not_a_terminal():
    out = io.StringIO()
    before = list(logging.getLogger(LOGGER_NAME).handlers)
    run(console(stream=out, clock=FakeClock()))
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and not has_emoji(text)
    got = lines(text)
    assert got[0] == "training 3 epochs of 4 batches"
    # a header once, then a row per epoch: the loss, the first metric better higher, the epoch's time, the ETA
    assert got[1] == "epoch  train/loss  train/acc  took     ETA"
    assert got[2] == "1/3    1           0.25       0.5s     1.0s"   # 5 clock reads of 0.1 s; 2 epochs left
    assert got[3] == "2/3    0.5         0.5        0.5s     0.5s"
    assert got[4] == "3/3    0.75        0.25       0.5s     -"
    assert got[5] == "finished 3 epochs (12 steps) in 1.9s"
    assert len(got) == 6
    assert logging.getLogger(LOGGER_NAME).handlers == before  # the console's handler is gone after the run


def test_a_pipe_gets_a_progress_line_every_tenth_of_an_epoch_or_30_seconds():
    out = io.StringIO()
    run(console(stream=out, batch_size=16, clock=FakeClock(2.0)))  # 2 s a batch: each batch is a tenth and more
    got = [ln for ln in lines(out.getvalue()) if ln.startswith("epoch ") and " batch " in ln]
    assert len(got) == 12
    assert got[0] == "epoch 1/3 batch 1/4  8 samples/s  loss 1  ETA epoch 6.0s, run 22.0s"
    assert got[3] == "epoch 1/3 batch 4/4  8 samples/s  loss 1"   # the epoch's batches are done: no ETA
    assert got[4] == "epoch 2/3 batch 1/4  8 samples/s  loss 0.5  ETA epoch 6.0s, run 16.0s"  # + epoch 1's 10 s
    quick = io.StringIO()
    run(console(stream=quick, batch_size=16, clock=FakeClock(0.1)))  # a short epoch says nothing more
    assert not any(" batch " in ln for ln in lines(quick.getvalue()))
    none = io.StringIO()
    run(console(stream=none, batch_size=16, progress="none", clock=FakeClock(2.0)))
    assert not any(" batch " in ln for ln in lines(none.getvalue())) and "3/3 " in none.getvalue()


def test_a_time_budget_bounds_the_eta_until_it_is_planned():
    out = io.StringIO()
    run(console(stream=out, batch_size=16, clock=FakeClock(2.0), max_time=15.0))
    got = lines(out.getvalue())
    assert got[0] == "training at most 3 epochs of 4 batches, within 15.0s"
    progress = [ln for ln in got if ln.startswith("epoch ") and " batch " in ln]
    # unbounded the run's ETA would be 22.0s (as without max_time); 4 s of the budget are gone: 11 s are left
    assert progress[0] == "epoch 1/3 batch 1/4  8 samples/s  loss 1  ETA epoch 6.0s, run 11.0s"
    assert progress[4].endswith("ETA epoch 6.0s, run 0.0s")  # the budget is spent: the plan will stop the run
    # once a plan is recorded (a time_budget callback's state) the epochs are the plan's, not an upper bound
    x, y = tiny_xy(64)
    planned = sf.TrainState.create(make_mlp, sf.sgd(0.1), seed=0).replace(
        callbacks={"time_budget": {"max_time": 15.0, "cap": 3, "epochs": 3}})
    said = io.StringIO()
    sf.fit(planned, sf.Loop(step=scripted_step(), data=sf.TensorData((x, y), 16), epochs=3,
                            callbacks=console(stream=said, batch_size=16, clock=FakeClock(2.0), max_time=15.0)))
    assert lines(said.getvalue())[0] == "training 3 epochs of 4 batches"
    assert "run 22.0s" in said.getvalue()


def test_no_color_on_a_terminal_removes_the_colour_and_keeps_the_bar(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out = FakeTerminal()
    run(console(stream=out, batch_size=16))
    text = out.getvalue()
    assert "\x1b[" not in text and not has_emoji(text)
    assert "\repoch 1/3:   0%|" in text and "| 1/4 [" in text and "samples/s=" in text  # the bar, 80 columns
    assert "2/3    0.5         0.5        " in text                                # the table as in a pipe
    assert not any(" batch " in ln for ln in lines(text))                     # no progress lines beside the bar


def test_a_terminal_gets_colour_emoji_and_a_bar_with_samples_per_second():
    out = FakeTerminal()
    run(console(stream=out, batch_size=16))
    text = out.getvalue()
    assert f"{MARKS['start']} " in text and GREEN in text and RED in text
    assert "\repoch 1/3:" in text and "1/4 [" in text and "samples/s=" in text and "loss=0.5" in text
    rows = [ln.split("\r")[-1] for ln in text.split("\n") if "/3  " in ln]
    assert len(rows) == 3 and all(r.startswith("   ") for r in rows)  # no best: a blank as wide as a mark


def test_forced_colour_is_green_when_better_and_red_when_worse():
    out = io.StringIO()
    run(console(stream=out, color=True, clock=FakeClock()))
    rows = [ln for ln in lines(out.getvalue()) if "/3  " in ln]
    assert len(rows) == 3
    first, second, third = rows
    assert GREEN not in first and RED not in first  # nothing to compare with yet
    assert f"{GREEN}0.5       {RESET}" in second     # lower loss: better
    assert f"{GREEN}0.5      {RESET}" in second      # higher accuracy: better
    assert f"{RED}0.75      {RESET}" in third
    assert f"{RED}0.25     {RESET}" in third
    assert "\r" not in out.getvalue()  # no bar off a terminal, even in colour


def test_status_marks_start_best_and_early_stop(tmp_path):
    out, debug = io.StringIO(), []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda r: debug.append(r.getMessage())
    logging.getLogger(LOGGER_NAME).addHandler(handler)
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG)
    try:
        state = run(sf.early_stopping(sf.Monitor("train/loss"), patience=1),
                    sf.checkpointing(tmp_path, every_epochs=1), console(stream=out, color=True, clock=FakeClock()),
                    epochs=5)
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(handler)
        logging.getLogger(LOGGER_NAME).setLevel(logging.NOTSET)
    assert state.stop is not None and not state.stop.failed
    got = lines(out.getvalue())
    assert got[0].startswith(MARKS["start"] + " ")
    rows = [ln for ln in got if "/5  " in ln]
    assert [ln.startswith(MARKS["best"]) for ln in rows] == [True, True, False]
    assert "(best 1 *)" in rows[0] and "(best 0.5 *)" in rows[1] and "(best 0.5)" in rows[2]
    # the epoch checkpoints are said only at DEBUG (the table's * marks the best); the restored params at INFO
    saved = [ln for ln in got if ln.startswith(MARKS["saved"])]
    assert len(saved) == 1 and str(tmp_path / "final.pt") in saved[0] and "restored" in saved[0]
    assert [m for m in debug if m.startswith("saved ")][0] == f"saved {tmp_path / 'epoch-0001.pt'}"
    stop = [ln for ln in got if ln.startswith(MARKS["stop"])]
    assert len(stop) == 1 and state.stop.reason in stop[0] and "3 epochs (12 steps)" in stop[0]
    assert "best train/loss 0.5 at epoch 2" in stop[0]
    assert got[-1] == "restored the params of epoch 2"


def test_a_failed_stop_is_an_error_and_quiet_keeps_only_the_facts():
    nan_loss = [1.0, math.nan, 1.0]
    loud, quiet, quiet_ok = io.StringIO(), io.StringIO(), io.StringIO()
    for out, q in ((loud, False), (quiet, True)):
        state = run(sf.nan_guard(), console(quiet=q, stream=out, color=True), loss=nan_loss)
        assert state.stop is not None and state.stop.failed
    assert lines(quiet.getvalue()) == [f"{MARKS['start']} \x1b[1mtraining 3 epochs of 4 batches{RESET}",
                                       f"{MARKS['error']} \x1b[1;31mstopped on error: {state.stop.reason}{RESET}"]
    assert lines(loud.getvalue())[-1] == lines(quiet.getvalue())[-1]
    assert len(lines(loud.getvalue())) == 4  # start, header, the first epoch's row, the error
    run(console(quiet=True, stream=quiet_ok, clock=FakeClock()))
    assert lines(quiet_ok.getvalue()) == ["training 3 epochs of 4 batches", "finished 3 epochs (12 steps) in 0.7s"]


def test_non_finite_epoch_metrics_are_warned_about():
    out = io.StringIO()
    run(console(stream=out), loss=[1.0, math.inf, 1.0])
    assert "non-finite train/loss in epoch 2" in out.getvalue()


def test_configured_logging_gets_plain_records(caplog):
    # pytest has put handlers on the root logger: the console then logs through them, unstyled
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    run(console(color=True, clock=FakeClock()))
    records = [r for r in caplog.records if r.name == LOGGER_NAME]
    messages = [r.getMessage() for r in records]
    assert messages[0] == "training 3 epochs of 4 batches"
    assert messages[3] == "2/3    0.5         0.5        0.5s     0.5s"
    assert not any("\x1b" in m or has_emoji(m) for m in messages)
    assert {r.levelno for r in records} == {logging.INFO}


def test_a_shared_handler_carries_the_console_and_the_programs_own_lines(capsys):
    # what the command line does: one handler on stderr, for its facts and the run's console alike
    with console_logging():
        logging.getLogger(LOGGER_NAME).info("a fact of the program")
        run(console(clock=FakeClock()))
    out, err = capsys.readouterr()
    assert out == "" and lines(err)[:2] == ["a fact of the program", "training 3 epochs of 4 batches"]
    assert not any(isinstance(h, ConsoleHandler) for h in logging.getLogger(LOGGER_NAME).handlers)


# --------------------------------------------------------------------------- pure pieces


def test_direction_by_metric_name():
    assert [direction(n) for n in ("train/loss", "val/box_loss", "val/acc", "val/mAP50", "val/precision",
                                   "val/recall", "val/F1", "lr", "grad_norm")] == \
        ["min", "min", "max", "max", "max", "max", "max", None, None]
    assert tone_of("val/loss", -0.1) == "good" and tone_of("val/loss", 0.1) == "bad"
    assert tone_of("val/mAP50", 0.1) == "good" and tone_of("val/mAP50", -0.1) == "bad"
    assert tone_of("val/loss", 0.0) is None and tone_of("lr", 0.5) is None and tone_of("val/acc", math.nan) is None


def test_style_follows_the_stream_and_the_environment(monkeypatch):
    assert style_for(io.StringIO()) == Style(False, False, False)
    assert style_for(FakeTerminal()) == Style(True, True, True)
    assert style_for(FakeTerminal(), color=False) == Style(False, False, True)
    assert style_for(io.StringIO(), color=True) == Style(True, True, False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert style_for(io.StringIO()) == Style(True, True, False)
    monkeypatch.setenv("NO_COLOR", "1")
    assert style_for(FakeTerminal()) == Style(False, False, True)  # NO_COLOR removes the colour, not the bar
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.delenv("FORCE_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert style_for(FakeTerminal()) == Style(False, False, False)


def test_small_helpers():
    assert [fmt_duration(s) for s in (3.21, 65, 3725, -1)] == ["3.2s", "1m05s", "1h02m", "?"]
    x = torch.zeros(7, 3)
    assert batch_size_of((x, torch.zeros(7))) == 7 and batch_size_of([x]) == 7 and batch_size_of(x) == 7
    assert batch_size_of({"a": 1}) is None and batch_size_of(()) is None
    assert [progress_kind(m, Style(bar=True)) for m in ("auto", "bar", "lines", "none")] == \
        ["bar", "bar", "lines", "none"]
    assert progress_kind("auto", Style()) == "lines"
    with pytest.raises(ValueError, match="progress: expected one of auto, bar, lines, none, got 'fancy'"):
        console(progress="fancy")


def test_the_command_line_offers_the_consoles_progress_modes(capsys):
    from smartcash_fn import cli
    from smartcash_fn.report import console as module

    assert cli.PROGRESS == module.PROGRESS
    assert cli.parser().parse_args(["train", "tiny", "--progress", "lines"]).progress == "lines"
    assert cli.parser().parse_args(["resume", "runs/tiny"]).progress is None     # the recipe's loggers.progress
    assert cli.main(["train", "tiny", "--progress", "fancy"]) == 2
    assert "--progress: invalid choice: 'fancy'" in capsys.readouterr().err


def test_a_terminal_of_zero_columns_gets_a_default_width(monkeypatch):
    import os

    master, slave = os.openpty()  # a fresh pseudo-terminal reports 0 x 0
    try:
        with open(slave, "w", closefd=False) as tty:
            monkeypatch.delenv("COLUMNS", raising=False)
            monkeypatch.delenv("LINES", raising=False)
            assert terminal_size(tty) == (DEFAULT_COLUMNS, 24, False)
            monkeypatch.setenv("COLUMNS", "132")
            assert terminal_size(tty) == (132, 24, False)
    finally:
        os.close(master)
        os.close(slave)
    assert terminal_size(io.StringIO())[:2] == (132, 24)  # no terminal at all


def test_progress_is_due_every_tenth_or_30_seconds_never_twice_a_second():
    assert progress_due(29, 281, 0, 0.0, 5.0)                 # 29 // 29: the first tenth
    assert not progress_due(28, 281, 0, 0.0, 5.0)
    assert not progress_due(30, 281, 29, 5.0, 9.0)            # the same tenth
    assert progress_due(31, 281, 30, 5.0, 35.0)               # 30 s
    assert not progress_due(58, 281, 29, 5.0, 5.5)            # a new tenth, but within a second
    assert progress_due(8, 8, 7, 0.0, 2.0) and not progress_due(8, 8, 8, 0.0, 99.0)
    assert progress_due(5, 0, 0, 0.0, 31.0) and not progress_due(5, 0, 0, 0.0, 29.0)  # unknown length: by time
    assert plain_text(progress_line(2, 5, 120, 281, 52.1, 4.512, 58.0, 370.0)) == \
        "epoch 2/5 batch 120/281  52.1 samples/s  loss 4.512  ETA epoch 58.0s, run 6m10s"
    assert plain_text(progress_line(1, 0, 3, 0)) == "epoch 1 batch 3"


# --------------------------------------------------------------------------- the lines, as pure functions


def test_rows_start_and_end_lines_are_computed_from_the_state():
    from smartcash_fn.report.console import end_lines, epoch_warnings, saved_lines, start_lines
    from smartcash_fn.state import Best, History, Progress, RunInfo, Stop

    epochs = ({"epoch": 0, "step": 10, "train/loss": 2.0, "val/loss": 1.0, "val/acc": 0.5},
              {"epoch": 1, "step": 20, "train/loss": 1.5, "val/loss": float("nan"), "val/acc": 0.75})
    s = sf.TrainState(params={}, buffers={}, opt_state={}, run=RunInfo(epochs=4, batches=10),
                      history=History(epochs=epochs), progress=Progress(2, 20, 0), lr_scale=0.5,
                      recipe={"run": {"name": "tiny"}})
    best = Best("val/loss", "min", 1.0, 0, 10, {}, {}, {})
    t = Table.of(epochs[-1], "val/loss", planned=4)
    assert t.columns == ("train/loss", "val/loss", "val/acc")
    assert plain_text(table_header(t)) == "epoch  train/loss  val/loss                val/acc    took     ETA"
    assert plain_text(epoch_row(t, epochs, 4, best, took=2.0, eta=4.0)) == \
        "2/4    1.5         nan (best 1)            0.75       2.0s     4.0s"
    assert plain_text(epoch_row(t, epochs[:1], 4, best, took=2.0)) == \
        "1/4    2           1 (best 1 *)            0.5        2.0s     -"
    assert [plain_text(segs) for _, segs, _ in epoch_warnings(s, previous_scale=1.0)] == [
        "non-finite val/loss in epoch 2", "lr scale 1 -> 0.5 (plateau)"]
    assert plain_text(start_lines(s, "runs/tiny")[0][1]) == "resuming tiny at epoch 3/4 (step 20) -> runs/tiny"
    mid = s.replace(progress=Progress(2, 24, 4))
    assert plain_text(start_lines(mid)[0][1]) == "resuming tiny at epoch 3/4, batch 5/10 (step 24)"
    fresh = s.replace(progress=Progress(0, 0, 0), run=RunInfo(epochs=1, batches=1))
    assert plain_text(start_lines(fresh, "r", processes=2)[0][1]) == \
        "training tiny: 1 epoch of 1 batch on each of 2 processes -> r"
    (level, segs, mark), = end_lines(s.replace(stop=Stop("boom", failed=True)))
    assert level == logging.ERROR and plain_text(segs) == "stopped on error: boom" and mark == MARKS["error"]
    (_, segs, _), = end_lines(s.replace(progress=Progress(1, 1, 0), best=best), wall=3.0)
    assert plain_text(segs) == "finished 1 epoch (1 step) in 3.0s; best val/loss 1 at epoch 1"
    (level, segs, _), = saved_lines({"last": "a/best.pt", "is_best": True})
    assert plain_text(segs) == "saved a/best.pt (best)" and level == logging.DEBUG
    assert saved_lines(None) == [] and saved_lines({}) == []


def test_the_detector_table_is_narrow_and_labels_the_best_and_the_time():
    from smartcash_fn.smartcash import scenes as rupiah
    from smartcash_fn.smartcash.metrics import evaluate
    from smartcash_fn.state import Best

    # every metric the detector records: the loss terms, then evaluate()'s metrics per layer and class
    report = evaluate([], [], rupiah.CLASSES, rupiah.LAYERS)
    names = ["mAP50", "mAP50-95", "precision", "recall", "F1"]
    names += [f"{m}/{layer}" for layer in rupiah.LAYERS for m in ("mAP50", "mAP50-95")]
    names += [f"{m}/{c}" for c in rupiah.CLASSES for m in ("AP50", "AP50-95")]
    assert set(report.metrics()) <= set(names)
    rec = {"epoch": 11, "step": 3372, "train/loss": 4.51234, "train/box": 1.1, "train/obj": 2.2, "train/cls": 1.2,
           "train/grad_norm": 12.5, "lr": 0.0011, **{f"val/{n}": 0.123456 for n in names}}
    assert len("  ".join(f"{k} {v}" for k, v in rec.items())) > 1000  # what one line of every metric would be
    best = Best("val/mAP50", "max", 0.361, 11, 3372, {}, {}, {})
    t = Table.of(rec, "val/mAP50", planned=100)
    assert t.columns == ("train/loss", "val/mAP50", "val/mAP50-95")
    header, row = plain_text(table_header(t)), plain_text(epoch_row(t, [rec], 100, best, took=102.0, eta=9000.0))
    assert row == "12/100   4.512       0.1235 (best 0.361 *)   0.1235        1m42s    2h30m"
    assert len(header) <= 120 and len(row) <= 120
    assert header.index("val/mAP50 ") == row.index("0.1235 (best") and header.index("took") == row.index("1m42s")


# --------------------------------------------------------------------------- on the command line

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"
MANY_BATCHES = ["--set", "data.params.samples=8192", "--set", "data.batch_size=4", "--set", "train.epochs=2",
                "--set", "loggers.tensorboard=false", "--set", "loggers.plots=false",
                "--set", "checkpoint.every_steps=4000"]
"""tiny, 2048 batches an epoch: seconds long, so that a pipe gets progress lines (at most one a second)."""
PROGRESS_LINE = re.compile(r"^epoch [12]/2 batch \d+/2048  [\d,.]+ samples/s  loss [\d.e+-]+"
                           r"(  ETA epoch [\dhms.]+, run [\dhms.]+)?$")
ROW = re.compile(r"^[12]/2 ")


def cli(*args, cwd, env=None):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full = {k: v for k, v in full.items() if k not in ("NO_COLOR", "FORCE_COLOR")} | (env or {})
    return subprocess.run([sys.executable, "-m", "smartcash_fn", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=600)


def in_a_terminal(*args, cwd, env):
    """``smartcash-fn ARGS`` with stdin, stdout and stderr on a pseudo-terminal: the exit status and what it showed."""
    master, slave = os.openpty()
    full = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", **env}
    proc = subprocess.Popen([sys.executable, "-m", "smartcash_fn", *args], cwd=cwd, env=full, stdin=slave,
                            stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    got = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        got += chunk
    os.close(master)
    return proc.wait(timeout=600), got.decode()


@pytest.fixture(scope="module")
def piped(tmp_path_factory):
    work = tmp_path_factory.mktemp("piped")
    out = cli("train", str(TINY), *MANY_BATCHES, "--out", "run", cwd=work)
    assert out.returncode == 0, out.stderr
    return work, out


def test_a_piped_run_says_each_fact_once_on_stderr_and_progress_lines_inside_epochs(piped):
    work, out = piped
    run = work / "run"
    assert out.stdout == ""
    said = out.stderr.splitlines()
    assert said[0] == "training tiny: 2 epochs of 2048 batches -> run"  # the folder as given
    assert said[1].startswith("model: params 387")
    progress = [ln for ln in said if ln.startswith("epoch ") and " batch " in ln]
    assert {ln.split()[1] for ln in progress} == {"1/2", "2/2"}          # each epoch says how it goes
    assert all(PROGRESS_LINE.match(ln) for ln in progress), progress
    rows = [ln for ln in said if ROW.match(ln)]
    assert len(rows) == 2 and all(len(ln) <= 120 for ln in rows)
    assert said.count("epoch  train/loss  val/loss                val/acc    took     ETA") == 1
    facts = [ln for ln in said if ln not in progress and ln not in rows and not ln.startswith("epoch  ")]
    assert len(facts) == 4 and len(set(facts)) == 4
    best = checkpoint.read(run / "checkpoints" / "best.pt")["state"]["best"]["epoch"] + 1
    assert facts[2].startswith("finished 2 epochs (4096 steps) in ") and facts[2].endswith(f" at epoch {best}")
    assert facts[3] == "summary: run/summary.md"
    assert "\x1b" not in out.stderr and "\r" not in out.stderr and not has_emoji(out.stderr)


def test_epochs_count_from_1_in_the_files_and_inspect_as_on_the_console(piped):
    work, _ = piped
    run = work / "run"
    assert [r["epoch"] for r in read_csv(run / "metrics.csv")] == [1.0, 2.0]
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] in ("epoch", "time")] == [1, 1, 2, 2]
    info = json.loads(cli("inspect", str(run / "checkpoints" / "epoch-0002.pt"), "--json", cwd=work).stdout)
    assert info["metrics"]["epoch"] == 2 and info["progress"] == {"epoch": 2, "step": 4096, "batch": 0}
    best = checkpoint.read(run / "checkpoints" / "best.pt")["state"]
    assert info["best"]["epoch"] == best["history"]["epochs"][-1]["epoch"] + 1
    assert "| best | val/loss = " in (run / "summary.md").read_text()
    assert f"at epoch {info['best']['epoch']} (min) |" in (run / "summary.md").read_text()


def test_a_resumed_fork_says_where_it_goes_on_once_with_epochs_from_1(piped):
    work, _ = piped
    ckpt = work / "run" / "checkpoints" / "step-00004000.pt"             # inside the second epoch
    out = cli("resume", str(ckpt), "--out", "fork", "--progress", "none", cwd=work)
    assert out.returncode == 0, out.stderr
    said = out.stderr.splitlines()
    assert out.stdout == "" and said[:2] == [f"forking {ckpt}",
                                             "resuming fork at epoch 2/2, batch 1953/2048 (step 4000) -> fork"]
    assert not any(ln.startswith("epoch 2/2 batch ") for ln in said)     # --progress none
    assert [ln[:4] for ln in said if ROW.match(ln)] == ["2/2 "]
    assert sum(ln.startswith("finished 2 epochs (4096 steps)") for ln in said) == 1
    assert not any(ln.startswith("model:") for ln in said)              # said when the run began, not again


def test_no_color_in_a_terminal_keeps_the_bar_and_drops_the_colour(tmp_path):
    code, shown = in_a_terminal("train", str(TINY), "--set", "train.epochs=1", "--set", "loggers.tensorboard=false",
                                "--out", "run", cwd=tmp_path, env={"NO_COLOR": "1"})
    assert code == 0, shown
    assert "\repoch 1/1:" in shown and "batch/s" in shown and "/8 [" in shown    # 80 columns: the pty says 0
    assert not re.search(r"\x1b\[[0-9;]*m", shown) and not has_emoji(shown)
    lines_shown = [ln.split("\r")[-1] for ln in shown.split("\r\n")]
    assert not any(PROGRESS_LINE.match(ln) for ln in lines_shown)      # a bar, not lines
    assert sum(ln.startswith("1/1 ") for ln in lines_shown) == 1
    assert lines_shown[0] == "training tiny: 1 epoch of 8 batches -> run"
