"""Console output: plain text off a terminal or with NO_COLOR, colour by direction when forced, status marks.

A scripted step sets the step metrics per epoch, so the epoch lines and
their deltas are known exactly: ``loss`` 1.0, 0.5, 0.75 (better, then
worse), ``acc`` 0.25, 0.5, 0.25 (better, then worse), ``grad_norm`` 1, 2, 3
(no direction).
"""

from __future__ import annotations

import io
import logging
import math

import pytest
import torch

import smartcash_fn as sf
from conftest import make_mlp, tiny_xy
from smartcash_fn.report.console import (
    LOGGER_NAME,
    MARKS,
    Style,
    batch_size_of,
    console,
    direction,
    fmt_duration,
    style_for,
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


def test_plain_text_when_the_stream_is_not_a_terminal():
    out = io.StringIO()
    before = list(logging.getLogger(LOGGER_NAME).handlers)
    run(console(stream=out))
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and not has_emoji(text)
    got = lines(text)
    assert got[0] == "training 3 epochs of 4 batches"
    assert got[1].startswith("epoch 1/3  train/loss 1  train/acc 0.25  train/grad_norm 1  ")
    assert got[2].startswith("epoch 2/3  train/loss 0.5 (-0.5)  train/acc 0.5 (+0.25)  train/grad_norm 2 (+1)  ")
    assert got[3].startswith("epoch 3/3  train/loss 0.75 (+0.25)  train/acc 0.25 (-0.25)  train/grad_norm 3 (+1)  ")
    assert got[4].startswith("finished 3 epochs in ")
    assert len(got) == 5
    assert logging.getLogger(LOGGER_NAME).handlers == before  # the console's handler is gone after the run


def test_no_color_on_a_terminal_gives_plain_text_without_a_bar(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out = FakeTerminal()
    run(console(stream=out, batch_size=16))
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and not has_emoji(text)
    assert "epoch 2/3  train/loss 0.5 (-0.5)" in text


def test_a_terminal_gets_colour_emoji_and_a_bar_with_samples_per_second():
    out = FakeTerminal()
    run(console(stream=out, batch_size=16))
    text = out.getvalue()
    assert f"{MARKS['start']} " in text and GREEN in text and RED in text
    assert "\repoch 1/3:" in text and "1/4 [" in text and "samples/s=" in text and "loss=0.5" in text


def test_forced_colour_is_green_when_better_and_red_when_worse():
    out = io.StringIO()
    run(console(stream=out, color=True))
    epoch_lines = [ln for ln in lines(out.getvalue()) if "epoch " in ln and "/3" in ln]
    assert len(epoch_lines) == 3
    first, second, third = epoch_lines
    assert GREEN not in first and RED not in first  # nothing to compare with yet
    assert f"train/loss {GREEN}0.5 (-0.5){RESET}" in second  # lower loss: better
    assert f"train/acc {GREEN}0.5 (+0.25){RESET}" in second  # higher accuracy: better
    assert f"train/loss {RED}0.75 (+0.25){RESET}" in third
    assert f"train/acc {RED}0.25 (-0.25){RESET}" in third
    assert "train/grad_norm 3 (+1)  " in third  # no direction: no colour
    assert "\r" not in out.getvalue()  # no bar off a terminal, even in colour


def test_status_marks_start_best_checkpoint_early_stop(tmp_path):
    out = io.StringIO()
    state = run(sf.early_stopping(sf.Monitor("train/loss"), patience=1),
                sf.checkpointing(tmp_path, every_epochs=1), console(stream=out, color=True), epochs=5)
    assert state.stop is not None and not state.stop.failed
    got = lines(out.getvalue())
    assert got[0].startswith(MARKS["start"] + " ")
    best_lines = [ln for ln in got if ln.startswith(MARKS["best"])]
    assert [("epoch 1/5" in ln, "epoch 2/5" in ln) for ln in best_lines] == [(True, False), (False, True)]
    assert all("best train/loss" in ln for ln in best_lines)
    saved = [ln for ln in got if ln.startswith(MARKS["saved"])]
    # three epoch checkpoints (last.pt: epoch 3, the last trained), then the restored best params in final.pt
    assert len(saved) == 4 and str(tmp_path / "epoch-0001.pt") in saved[0]
    assert str(tmp_path / "final.pt") in saved[3] and "restored" in saved[3]
    stop = [ln for ln in got if ln.startswith(MARKS["stop"])]
    assert len(stop) == 1 and state.stop.reason in stop[0] and "best train/loss 0.5 at epoch 2" in stop[0]
    assert got[-1] == "restored the params of epoch 2"


def test_a_failed_stop_is_an_error_and_quiet_prints_only_errors():
    nan_loss = [1.0, math.nan, 1.0]
    loud, quiet, quiet_ok = io.StringIO(), io.StringIO(), io.StringIO()
    for out, q in ((loud, False), (quiet, True)):
        state = run(sf.nan_guard(), console(quiet=q, stream=out, color=True), loss=nan_loss)
        assert state.stop is not None and state.stop.failed
    assert lines(quiet.getvalue()) == [f"{MARKS['error']} \x1b[1;31mstopped on error: {state.stop.reason}{RESET}"]
    assert lines(loud.getvalue())[-1] == lines(quiet.getvalue())[0]
    run(console(quiet=True, stream=quiet_ok, color=True))
    assert quiet_ok.getvalue() == ""


def test_non_finite_epoch_metrics_are_warned_about():
    out = io.StringIO()
    run(console(stream=out), loss=[1.0, math.inf, 1.0])
    assert "non-finite train/loss in epoch 2" in out.getvalue()


def test_configured_logging_gets_plain_records(caplog):
    # pytest has put handlers on the root logger: the console then logs through them, unstyled
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    run(console(color=True))
    records = [r for r in caplog.records if r.name == LOGGER_NAME]
    messages = [r.getMessage() for r in records]
    assert messages[0] == "training 3 epochs of 4 batches"
    assert messages[2].startswith("epoch 2/3  train/loss 0.5 (-0.5)  train/acc 0.5 (+0.25)")
    assert not any("\x1b" in m or has_emoji(m) for m in messages)
    assert {r.levelno for r in records} == {logging.INFO}


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
    assert style_for(FakeTerminal()) == Style(False, False, False)
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.delenv("FORCE_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert style_for(FakeTerminal()) == Style(False, False, False)


def test_small_helpers():
    assert [fmt_duration(s) for s in (3.21, 65, 3725, -1)] == ["3.2s", "1m05s", "1h02m", "?"]
    x = torch.zeros(7, 3)
    assert batch_size_of((x, torch.zeros(7))) == 7 and batch_size_of([x]) == 7 and batch_size_of(x) == 7
    assert batch_size_of({"a": 1}) is None and batch_size_of(()) is None


# --------------------------------------------------------------------------- the lines, as pure functions


def test_epoch_and_end_lines_are_computed_from_the_state():
    from smartcash_fn.report.console import end_lines, epoch_lines, plain_text, saved_lines, start_lines
    from smartcash_fn.state import History, Progress, RunInfo, Stop

    s = sf.TrainState(params={}, buffers={}, opt_state={}, run=RunInfo(epochs=4, batches=10),
                      history=History(epochs=({"epoch": 0, "step": 10, "val/loss": 1.0},
                                              {"epoch": 1, "step": 20, "val/loss": float("nan")})),
                      progress=Progress(2, 20, 0), lr_scale=0.5)
    lines = epoch_lines(s, took=2.0, eta=4.0, previous_scale=1.0)
    assert [plain_text(segs) for _, segs, _ in lines] == [
        "epoch 2/4  val/loss nan (+nan)  2.0s  eta 4.0s", "non-finite val/loss in epoch 2",
        "lr scale 1 -> 0.5 (plateau)"]
    assert plain_text(start_lines(s)[0][1]) == "training 4 epochs of 10 batches, resuming at epoch 3 (step 20)"
    (level, segs, mark), = end_lines(s.replace(stop=Stop("boom", failed=True)))
    assert level == logging.ERROR and plain_text(segs) == "stopped on error: boom" and mark == MARKS["error"]
    assert plain_text(saved_lines({"last": "a/best.pt", "is_best": True})[0][1]) == "saved a/best.pt (best)"
    assert saved_lines(None) == [] and saved_lines({}) == []
