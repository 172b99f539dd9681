"""Metric sinks and the run summary: the files agree with ``state.history``, also across a resume.

Every fit here is a tiny MLP on 64 samples in batches of 16 (4 steps per
epoch). The TensorBoard files are read back with TensorBoard's own
``EventAccumulator``; scalars are stored as float32, so they are compared
with the history's values rounded to float32, exactly.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tomli

import smartcash_fn as sf
from conftest import make_mlp, tiny_xy
from smartcash_fn.events import Callback
from smartcash_fn.report.sinks import (
    csv_header,
    csv_log,
    csv_text,
    history_lines,
    jsonl_line,
    jsonl_log,
    read_csv,
    kept_times,
    read_jsonl,
    tensorboard_figure,
    tensorboard_log,
)
from smartcash_fn.report.summary import recipe_block, summary_markdown, write_summary
from smartcash_fn.report.values import one_based

BATCHES = 4


def with_lrs(opt, base_lr):
    """``opt`` with the ``lrs`` the loop reads, so each epoch record carries ``lr``."""
    return SimpleNamespace(init=opt.init, update=opt.update, trains=opt.trains,
                           lrs=lambda opt_state, scale: {"": base_lr * scale})


def template(recipe=None):
    return sf.TrainState.create(make_mlp, with_lrs(sf.adamw(1e-2), 1e-2), seed=0, recipe=recipe)


def make_loop(epochs, *callbacks, val_every=1):
    x, y = tiny_xy(64)
    return sf.Loop(step=sf.make_step(sf.classification_loss), data=sf.TensorData((x, y), 64 // BATCHES),
                   epochs=epochs, validation=sf.Validation(sf.TensorData((x, y), 64), every=val_every),
                   callbacks=callbacks)


def events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def f32(v):
    return float(np.float32(v))


def assert_files_match_history(run_dir: Path, history: sf.History) -> None:
    """metrics.csv and metrics.jsonl hold exactly the history's records, values equal as floats, epochs from 1."""
    rows = read_csv(run_dir / "metrics.csv")
    assert len(rows) == len(history.epochs)
    for row, rec in zip(rows, history.epochs):
        assert row == {k: float(v) for k, v in one_based(rec).items()}
        assert row["epoch"] == rec["epoch"] + 1
    with open(run_dir / "metrics.csv", newline="") as f:
        assert f.readline().rstrip("\n").split(",") == csv_header(history.epochs)
    lines = read_jsonl(run_dir / "metrics.jsonl")
    times = [r for r in lines if r["kind"] == "time"]  # timings: the file's own, not the history's
    for r in times:
        assert set(r) == {"kind", "epoch", "step", "time/data", "time/step", "time/val", "time/checkpoint"}
        assert all(r[k] >= 0 for k in r if k.startswith("time/"))
    assert len({r["epoch"] for r in times}) == len(times) <= len(history.epochs)
    lines = [r for r in lines if r["kind"] != "time"]
    assert [r.pop("kind") for r in lines] == [k for k, _ in history_lines(history)]
    assert lines == [one_based(r) for _, r in history_lines(history)]


# --------------------------------------------------------------------------- CSV and JSONL


def test_csv_and_jsonl_agree_with_history(tmp_path):
    # validation every 2 epochs: the val/ keys first appear in epoch 2, widening the CSV header
    loop = make_loop(3, sf.record_steps(3), csv_log(tmp_path), jsonl_log(tmp_path), val_every=2)
    state = sf.fit(template(), loop)
    h = state.history
    assert len(h.epochs) == 3 and len(h.steps) == 12 // 3
    assert "val/loss" not in h.epochs[0] and "val/loss" in h.epochs[1]
    assert_files_match_history(tmp_path, h)
    # the files are byte for byte what the history renders to
    assert (tmp_path / "metrics.csv").read_text() == csv_text(h.epochs)
    times = kept_times(tmp_path / "metrics.jsonl", len(h.epochs))  # one "time" line after each epoch's line
    assert [t["epoch"] for t in times] == [0, 1, 2]  # as the state counts; the file says 1, 2, 3
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "time"] == [1, 2, 3]
    assert [r["epoch"] for r in read_csv(tmp_path / "metrics.csv")] == [1.0, 2.0, 3.0]
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(jsonl_line(k, r) for k, r in history_lines(h, times))
    assert read_csv(tmp_path / "metrics.csv")[0].keys() == {"epoch", "step", "train/loss", "lr"}
    # steps 3, 6, 9, 12 around epoch ends at steps 4, 8, 12
    assert [k for k, _ in history_lines(h)] == ["step", "epoch", "step", "epoch", "step", "step", "epoch"]


def test_jsonl_steps_are_appended_as_they_are_recorded(tmp_path):
    seen = []

    def probe(state):
        seen.append((len(state.history.steps), len(read_jsonl(tmp_path / "metrics.jsonl"))))
        return state

    loop = make_loop(1, sf.record_steps(1), jsonl_log(tmp_path), Callback("batch_end", probe, priority=501))
    sf.fit(template(), loop)
    assert seen == [(1, 1), (2, 2), (3, 3), (4, 4)]


def test_fresh_run_over_old_files_keeps_only_its_own_rows(tmp_path):
    sf.fit(template(), make_loop(3, csv_log(tmp_path), jsonl_log(tmp_path)))
    state = sf.fit(template(), make_loop(1, csv_log(tmp_path), jsonl_log(tmp_path)))
    assert len(state.history.epochs) == 1
    assert_files_match_history(tmp_path, state.history)


def test_non_finite_values_round_trip(tmp_path):
    history = sf.History(epochs=({"epoch": 0, "step": 4, "val/loss": float("nan"), "x": float("inf")},
                                 {"epoch": 1, "step": 8, "val/loss": 0.1, "x": -float("inf")}))
    (tmp_path / "metrics.csv").write_text(csv_text(history.epochs))
    rows = read_csv(tmp_path / "metrics.csv")
    assert np.isnan(rows[0]["val/loss"]) and rows[0]["x"] == float("inf") and rows[1]["x"] == -float("inf")


# --------------------------------------------------------------------------- resume


def checkpointed_loop(run_dir, epochs):
    return make_loop(
        epochs,
        sf.record_steps(3),
        sf.checkpointing(run_dir / "checkpoints", every_epochs=1, every_steps=3),
        csv_log(run_dir), jsonl_log(run_dir), tensorboard_log(run_dir, every_steps=2, curves=False),
    )


def untimed(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith('{"kind": "time"'))


@pytest.mark.parametrize("resume_from", ["epoch-0002.pt", "step-00000006.pt"])
def test_resume_after_a_kill_gives_files_without_duplicates(tmp_path, resume_from):
    run = tmp_path / "run"
    full = sf.fit(template(), checkpointed_loop(run, 4))
    reference = {n: (run / n).read_text() for n in ("metrics.csv", "metrics.jsonl")}
    (tmp_path / "reference.jsonl").write_text(reference["metrics.jsonl"])
    # The run "died" after writing rows past the checkpoint we resume from (and mid-line).
    with open(run / "metrics.csv", "a") as f:
        f.write("3,16,0.12")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "epoch", "epo')
    ckpt = run / "checkpoints" / resume_from
    shutil.copy(ckpt, tmp_path / "resume.pt")  # the resumed run rewrites its checkpoints
    start = sf.load(tmp_path / "resume.pt", like=template())

    at_start = {}

    def probe(state):  # right after the sinks synced the files to the resumed state
        at_start["csv"] = read_csv(run / "metrics.csv")
        at_start["jsonl"] = read_jsonl(run / "metrics.jsonl")
        return state

    loop = checkpointed_loop(run, 4).add(Callback("training_start", probe, priority=10_000))
    resumed = sf.fit(start, loop)
    assert sf.verify(resumed, full) is None

    assert len(at_start["csv"]) == len(start.history.epochs)
    kept = [r for r in at_start["jsonl"] if r["kind"] != "time"]
    assert len(kept) == len(start.history.epochs) + len(start.history.steps)
    # the time lines of the epochs before the checkpoint are kept as they were
    assert [r for r in at_start["jsonl"] if r["kind"] == "time"] == [
        {"kind": "time", **one_based(t)} for t in kept_times(tmp_path / "reference.jsonl", len(start.history.epochs))]
    assert_files_match_history(run, resumed.history)
    for n, text in reference.items():  # timings differ from run to run: every other line is the same
        assert untimed((run / n).read_text()) == untimed(text), n

    # TensorBoard: each tag's steps once each, values of the final history
    acc = events(run / "tensorboard")
    for tag in ("train/loss", "val/loss", "val/acc", "lr", "epoch"):
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert got == [(r["step"], f32(one_based(r)[tag])) for r in resumed.history.epochs], tag
    steps = [e.step for e in acc.Scalars("train/loss_step")]
    assert steps == list(range(2, 17, 2))


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_scalars_and_images_read_back(tmp_path):
    from smartcash_fn.report.plots import confusion_matrix_figure

    def confusion(state):
        return confusion_matrix_figure([[3, 1], [0, 4]], ["a", "b"])

    def extra_figure(state):  # another callback adding its own figure: to tensorboard/figures, its own file
        tensorboard_figure(tmp_path, "val/extra", confusion(state), state.progress.step)
        return state

    keep = sf.keep_best(sf.Monitor("val/acc", "max"))
    loop = make_loop(2, keep, tensorboard_log(tmp_path, every_steps=3, figures={"val/confusion": confusion}),
                     Callback("validation_end", extra_figure))
    state = sf.fit(template(), loop)
    acc = events(tmp_path / "tensorboard")
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"train/loss_step", "lr_step", "epoch", "train/loss", "lr", "val/loss", "val/acc",
                                    "hparams/train/loss", "hparams/lr", "hparams/val/loss", "hparams/val/acc",
                                    "hparams/best/val/acc"}
    # step metrics every 3 steps, from the step's own loss (checked against record_steps-free training)
    assert [e.step for e in acc.Scalars("train/loss_step")] == [3, 6]
    for tag in ("train/loss", "lr", "val/loss", "val/acc", "epoch"):
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [(r["step"], f32(one_based(r)[tag])) for r in state.history.epochs]
    assert acc.Scalars("lr")[0].value == f32(1e-2)
    assert set(tags["images"]) == {"val/confusion", "curves"}
    assert [e.step for e in events(tmp_path / "tensorboard" / "figures").Images("val/extra")] == [4, 8]
    assert [e.step for e in acc.Images("val/confusion")] == [4, 8]
    assert [e.step for e in acc.Images("curves")] == [8]
    curves = acc.Images("curves")[0]
    assert curves.width > 100 and curves.height > 100
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    # after the run: another figure gets a file of its own, read after the others
    tensorboard_figure(tmp_path, "test/confusion", confusion(state), state.progress.step)
    figures = events(tmp_path / "tensorboard" / "figures")
    assert [e.step for e in figures.Images("test/confusion")] == [8] and len(figures.Images("val/extra")) == 2


def test_tensorboard_step_scalars_are_the_step_losses(tmp_path):
    loop = make_loop(1, sf.record_steps(1), tensorboard_log(tmp_path, every_steps=1))
    state = sf.fit(template(), loop)
    got = [(e.step, e.value) for e in events(tmp_path / "tensorboard").Scalars("train/loss_step")]
    assert got == [(s["step"], f32(s["loss"])) for s in state.history.steps]


def test_tensorboard_every_steps_zero_logs_epochs_only(tmp_path):
    sf.fit(template(), make_loop(1, tensorboard_log(tmp_path, every_steps=0, curves=False)))
    tags = events(tmp_path / "tensorboard").Tags()
    assert "train/loss_step" not in tags["scalars"] and "train/loss" in tags["scalars"]
    assert tags["images"] == []


# --------------------------------------------------------------------------- purity and errors


def test_writers_leave_the_state_bit_identical(tmp_path):
    import io

    from smartcash_fn.report.console import console
    from smartcash_fn.report.plots import plot_curves

    base = (sf.keep_best(sf.Monitor("val/acc", "max")), sf.record_steps(2))
    plain = sf.fit(template(), make_loop(2, *base))
    writers = (csv_log(tmp_path), jsonl_log(tmp_path), tensorboard_log(tmp_path, every_steps=1, curves=False),
               plot_curves(tmp_path, every_epochs=0, per_metric=False), write_summary(tmp_path),
               console(stream=io.StringIO(), color=True, bar=True, batch_size=16))
    written = sf.fit(template(), make_loop(2, *base, *writers))
    assert sf.verify(written, plain) is None
    assert all(c.writes for group in writers for c in group)


def test_bad_arguments_name_what_to_fix(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(sf.StateError, match=r"a-file is a file; give a folder"):
        csv_log(f)
    with pytest.raises(sf.StateError, match=r"run_dir must be a path"):
        jsonl_log(3)
    with pytest.raises(sf.StateError, match=r"every_steps must be an int >= 0, got -1"):
        tensorboard_log(tmp_path, every_steps=-1)
    with pytest.raises(sf.StateError, match=r"figures\['x'\] must be a function"):
        tensorboard_log(tmp_path, figures={"x": 3})


# --------------------------------------------------------------------------- summary

RECIPE = {
    "run": {"name": "tiny-mlp", "seed": 0},
    "train": {"epochs": 6, "steps": [{"use": "clip", "max_norm": 10.0}]},
    "optimizer": {"use": "adamw", "lr": 0.01, "groups": [{"prefix": "0.", "lr": 0.001}]},
    "callbacks": [{"use": "early_stopping", "patience": 1}],
}


def test_summary_of_an_early_stopped_run(tmp_path):
    # a constant-lr SGD that overshoots makes val/loss stop improving quickly
    state = sf.TrainState.create(make_mlp, with_lrs(sf.sgd(5.0), 5.0), seed=0, recipe=RECIPE)
    loop = make_loop(6, sf.early_stopping(sf.Monitor("val/loss"), patience=1),
                     sf.checkpointing(tmp_path / "checkpoints"), write_summary(tmp_path))
    state = sf.fit(state, loop)
    assert state.stop is not None and not state.stop.failed, "the fixture run must stop early"
    text = (tmp_path / "summary.md").read_text()
    b, last = state.best, state.history.last()
    assert text.startswith("# Run summary: tiny-mlp\n")
    assert "| status | stopped early |" in text
    assert f"| stop reason | {state.stop.reason} |" in text
    assert f"| epochs run | {state.progress.epoch} of 6 |" in text
    assert f"| best | val/loss = {b.value:.4g} at epoch {b.epoch + 1} (min) |" in text
    assert f"| params restored | epoch {b.epoch + 1} |" in text
    assert "| wall time | " in text
    assert f"## Best epoch: {b.epoch + 1} (by val/loss, min)" in text
    assert f"## Last epoch: {int(last['epoch']) + 1}" in text
    last_table = text.split("## Last epoch")[1].split("## Recipe")[0]
    for k in ("train/loss", "val/loss", "val/acc", "lr"):
        assert f"| {k} | {last[k]:.4g} |" in last_table
    recipe_toml = text.split("```toml\n")[1].split("```")[0]
    assert tomli.loads(recipe_toml) == RECIPE


def test_summary_of_a_finished_run_without_recipe(tmp_path):
    state = sf.fit(template(), make_loop(2, write_summary(tmp_path / "out")))
    text = (tmp_path / "out" / "summary.md").read_text()
    assert text.startswith("# Run summary: out\n")
    assert "| status | finished |" in text and "| stop reason | all 2 planned epochs ran |" in text
    assert "| best |" not in text and "## Best epoch" not in text
    assert "_No recipe: the run was built in code._" in text
    assert "## Time" in text and "| data wait |" in text  # the session's timings, measured by the writer

    def without_timings(t):
        lines = [ln for ln in t.splitlines() if not ln.startswith("| wall time |")]
        if "## Time" in lines:
            lines = lines[:lines.index("## Time")] + lines[lines.index("## Recipe"):]
        return lines

    assert without_timings(summary_markdown(state, "out")) == without_timings(text)


def test_summary_of_a_failed_run_and_an_untoml_recipe():
    state = template().replace(stop=sf.Stop("non-finite loss at step 3", failed=True),
                               recipe={"run": {"name": "x"}, "odd": [1, None]})
    text = summary_markdown(state, "x")
    assert "| status | failed |" in text and "| stop reason | non-finite loss at step 3 |" in text
    assert "_No epoch finished._" in text
    assert "```json" in recipe_block(state.recipe)


def test_a_new_event_file_waits_for_the_next_second_only_when_needed(monkeypatch):
    from smartcash_fn.report import sinks

    slept = []
    monkeypatch.setattr(sinks, "time", SimpleNamespace(time=lambda: 100.25, sleep=slept.append))
    sinks._after_existing([100, 97])  # made this very second: the new file must sort after it
    sinks._after_existing([99])  # an older second: no wait
    sinks._after_existing([105])  # a file from the future (clock skew): no wait either
    sinks._after_existing([])
    assert slept == [pytest.approx(0.76)]


# --------------------------------------------------------------------------- what to write, as pure functions


def test_csv_and_jsonl_updates_append_or_rewrite():
    from smartcash_fn.report.sinks import OnDisk, csv_update, jsonl_update

    e = ({"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5})
    first = csv_update(None, e[:1])
    assert first.mode == "write" and first.text == "epoch,loss\n1,1.0\n"          # the file counts from 1
    nxt = csv_update(first.on_disk, e)
    assert (nxt.mode, nxt.text, nxt.on_disk.epochs) == ("append", "2,0.5\n", 2)
    assert csv_update(nxt.on_disk, e).mode == ""
    assert csv_update(nxt.on_disk, e[:1]).mode == "write"                         # a resume: fewer rows
    assert csv_update(nxt.on_disk, e + ({"epoch": 2, "val/loss": 0.4},)).mode == "write"   # a wider header
    h = sf.History(epochs=e[:1], steps=({"step": 1, "loss": 1.2},))
    up = jsonl_update(OnDisk(epochs=0, steps=1), h)
    assert up.mode == "append" and up.text == '{"kind": "epoch", "epoch": 1, "loss": 1.0}\n'
    assert jsonl_update(None, h).text.count("\n") == 2


def test_tensorboard_scalars_are_computed_from_the_state():
    import torch

    from smartcash_fn.report.sinks import epoch_scalars, step_scalars

    s = template().replace(progress=sf.Progress(0, 20, 4), metrics={"loss": torch.tensor(0.25)})
    assert step_scalars(s, 10) == [("train/loss_step", 0.25, 20), ("lr_step", 1e-2, 20)]
    assert step_scalars(s, 3) == [] and step_scalars(s, 0) == []
    epochs = ({"epoch": 0, "step": 10, "train/loss": 1.0, "note": "x"}, {"epoch": 1, "step": 20, "train/loss": 0.5})
    assert epoch_scalars(epochs, since=1) == [("epoch", 2.0, 20), ("train/loss", 0.5, 20)]  # counted from 1


def test_tensorboard_from_a_recipe_logs_the_rate_every_n_steps_and_the_hparams(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    from smartcash_fn.run.build import build
    from smartcash_fn.run.recipe import load

    tiny = Path(sf.__file__).resolve().parents[1] / "recipes" / "tiny.toml"
    sets = ["train.epochs=2", "schedule.warmup_steps=3", "data.params.samples=128", "loggers.console=false",
            "loggers.plots=false", "loggers.tensorboard_every_steps=3"]
    off = build(load(tiny, sets + ["loggers.tensorboard=false"]), tmp_path / "off", quiet=True)
    built = build(load(tiny, sets), tmp_path / "on", quiet=True)
    state = sf.fit(built.template, built.loop)
    without = sf.fit(off.template.replace(recipe=built.template.recipe), off.loop)
    assert sf.verify(state, without) is None                                # the writer only observes
    acc = events(tmp_path / "on" / "tensorboard")
    rates = [(e.step, e.value) for e in acc.Scalars("lr_step")]
    from smartcash_fn.schedule import warmup_cosine

    schedule = warmup_cosine(0.01, warmup_steps=3, total_steps=8)
    assert rates == [(s, f32(schedule(s))) for s in (3, 6)]                 # the next update's rate, every 3 steps
    assert [e.step for e in acc.Scalars("train/loss_step")] == [3, 6]
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.lr"].number_value == 0.01 and start.hparams["model.use"].string_value == "mlp"
    assert start.hparams["model.params.hidden"].string_value == "[32]"
    assert start.hparams["callbacks[1].patience"].number_value == 5
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"hparams/val/loss", "hparams/val/acc", "hparams/best/val/loss"} <= metrics
    for tag in metrics:                                                       # each one's value is in the run itself
        assert len(acc.Scalars(tag)) == 1 and acc.Scalars(tag)[0].step == state.progress.step
    assert acc.Scalars("hparams/best/val/loss")[0].value == f32(state.best.value)


def test_hparams_flatten_the_recipe_scalars():
    from smartcash_fn.report.sinks import hparams_of

    got = hparams_of({"run": {"seed": 0, "parent": None}, "model": {"params": {"hidden": [32, 16]}},
                      "callbacks": [{"use": "nan_guard"}, {"use": "early_stopping", "patience": 5}], "train": {}})
    assert got == {"run.seed": 0, "model.params.hidden": "[32, 16]", "callbacks[0].use": "nan_guard",
                   "callbacks[1].use": "early_stopping", "callbacks[1].patience": 5}
