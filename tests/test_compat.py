"""The migration facade: an old SmartCash pipeline script runs unchanged on the functional core.

The scripts below are written as the old pipeline's users wrote them: a
config dict (here the tiny recipe's content), functions registered by event
name taking the old keyword arguments, ``train()`` and its results dict,
``pipeline.metrics``. A run stopped by an exception resumes from its run
folder, and a run trained for fewer epochs goes on from a checkpoint, both to
the very bits of a pipeline that never stopped (checked with ``verify``).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

import smartcash_fn as sf
from smartcash_fn.smartcash.compat import CALLBACK_ARGUMENTS, TrainingPipeline, best_val_loss, old_name, old_style
from smartcash_fn.errors import RecipeError, StateError
from smartcash_fn.run.recipe import load as load_recipe

BATCHES = 8  # 256 samples / batch size 32

# The old pipeline's callback arguments (DESIGN.md), spelled out here rather than read from the module.
OLD_ARGUMENTS = {
    "batch_end": {"epoch", "batch", "loss", "batch_size"},
    "validation_end": {"epoch", "val_loss", "metrics"},
    "epoch_end": {"epoch", "metrics"},
    "checkpoint_saved": {"epoch", "checkpoint_info", "is_best"},
    "training_end": {"epochs_trained", "best_val_loss", "training_history"},
    "training_start": {"start_epoch", "epochs"},
    "epoch_start": {"epoch"},
}


def tiny_config(epochs: int = 3) -> dict:
    """The content of recipes/tiny.toml as the dict an old script passes, with the file loggers off."""
    return {
        "run": {"seed": 0, "name": "tiny"},
        "model": {"use": "mlp", "params": {"hidden": [32]}},
        "data": {"use": "synthetic", "batch_size": 32,
                 "params": {"samples": 256, "val_samples": 64, "features": 8, "classes": 3}},
        "optimizer": {"use": "adamw", "lr": 0.01, "weight_decay": 0.01},
        "schedule": {"use": "warmup_cosine", "warmup_steps": 4},
        "train": {"epochs": epochs, "loss": "cross_entropy", "clip": 10.0},
        "validation": {"every": 1, "metrics": "classification"},
        "callbacks": [{"use": "nan_guard"}, {"use": "early_stopping", "monitor": "val/loss", "patience": 5}],
        "loggers": {"csv": False, "jsonl": False, "tensorboard": False, "plots": False, "console": False,
                    "summary": False},
    }


def fixed_schedule(config: dict, total_epochs: int) -> dict:
    """``config`` with the schedule's length fixed, so a shorter run follows the longer run's learning rates."""
    config = copy.deepcopy(config)
    config["schedule"]["total_steps"] = total_epochs * BATCHES
    return config


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> TrainingPipeline:
    """A pipeline that trained 4 epochs without stopping (schedule fixed at 4 epochs)."""
    pipeline = TrainingPipeline(config=fixed_schedule(tiny_config(epochs=4), 4),
                                run_dir=tmp_path_factory.mktemp("compat") / "reference")
    results = pipeline.train(save_every=1)
    assert results["epochs_trained"] == 4 and not results["early_stopped"]
    return pipeline


def _identical(a: sf.TrainState, b: sf.TrainState) -> None:
    """Bit-identical states, but for the checkpoint writer's bookkeeping of its (different) folders."""
    assert sf.verify(a, b) is None
    for name in b.params:
        assert torch.equal(a.params[name], b.params[name]), name


# --------------------------------------------------------------------------- an old script, unchanged


def test_batch_sizes_read_through_wrappers_to_the_last_smaller_batch():
    from smartcash_fn.run.build import OnDevice
    from smartcash_fn.smartcash.compat import _batch_sizes

    x, y = torch.rand(20, 3), torch.arange(20)
    source = sf.LoaderData(list(zip(x, y)), 8)  # batches of 8, 8 and 4
    for data in (source, sf.Finish(source, source, 1), OnDevice(sf.Finish(source, source, 1), "cpu")):
        assert [_batch_sizes(data)(b) for b in range(3)] == [8, 8, 4], type(data).__name__


def test_old_style_script_gets_the_old_keyword_arguments(tmp_path):
    calls: list[tuple[str, dict]] = []
    files_at_save: list[bool] = []

    # -- the old script ------------------------------------------------------------
    pipeline = TrainingPipeline(config=tiny_config(), run_dir=tmp_path / "run")

    def on_batch_end(epoch, batch, loss, batch_size):
        calls.append(("batch_end", dict(epoch=epoch, batch=batch, loss=loss, batch_size=batch_size)))

    def on_validation_end(epoch, val_loss, metrics):
        calls.append(("validation_end", dict(epoch=epoch, val_loss=val_loss, metrics=metrics)))

    def on_epoch_end(epoch, metrics):
        calls.append(("epoch_end", dict(epoch=epoch, metrics=metrics)))

    def on_checkpoint_saved(epoch, checkpoint_info, is_best):
        files_at_save.append(Path(checkpoint_info["path"]).is_file())
        calls.append(("checkpoint_saved", dict(epoch=epoch, checkpoint_info=checkpoint_info, is_best=is_best)))

    def on_training_end(**kwargs):
        calls.append(("training_end", kwargs))

    pipeline.register_callback("batch_end", on_batch_end)
    pipeline.register_callback("validation_end", on_validation_end)
    pipeline.register_callback("epoch_end", on_epoch_end)
    pipeline.register_callback("checkpoint_saved", on_checkpoint_saved)
    pipeline.register_callback("training_end", on_training_end)
    pipeline.register_callback("training_start", lambda **kw: calls.append(("training_start", kw)))
    pipeline.register_callback("epoch_start", lambda **kw: calls.append(("epoch_start", kw)))
    results = pipeline.train(save_every=1)
    # ------------------------------------------------------------------------------

    state = pipeline.state
    records = state.history.epochs
    assert len(records) == 3 and state.progress.epoch == 3
    for event, kwargs in calls:
        assert set(kwargs) == OLD_ARGUMENTS[event], event
    by_event = {e: [kw for ev, kw in calls if ev == e] for e in OLD_ARGUMENTS}

    assert calls[0] == ("training_start", {"start_epoch": 0, "epochs": 3})
    assert [kw["epoch"] for kw in by_event["epoch_start"]] == [0, 1, 2]

    batches = by_event["batch_end"]
    assert [(kw["epoch"], kw["batch"]) for kw in batches] == [(e, b) for e in range(3) for b in range(BATCHES)]
    assert all(kw["batch_size"] == 32 for kw in batches)
    assert all(isinstance(kw["loss"], float) and math.isfinite(kw["loss"]) for kw in batches)
    # the epoch's mean training loss is the mean of the losses handed to batch_end
    for e in range(3):
        losses = [kw["loss"] for kw in batches if kw["epoch"] == e]
        assert sum(losses) / len(losses) == pytest.approx(records[e]["train/loss"], rel=1e-5)

    vals = by_event["validation_end"]
    assert [kw["epoch"] for kw in vals] == [0, 1, 2]
    assert [kw["val_loss"] for kw in vals] == [r["val/loss"] for r in records]
    assert [kw["metrics"] for kw in vals] == [{"val_acc": r["val/acc"]} for r in records]

    ends = by_event["epoch_end"]
    assert [kw["epoch"] for kw in ends] == [0, 1, 2]
    for kw, record in zip(ends, records):
        assert kw["metrics"]["train_loss"] == record["train/loss"]
        assert kw["metrics"]["val_loss"] == record["val/loss"]
        assert kw["metrics"]["val_acc"] == record["val/acc"]
        assert kw["metrics"]["lr"] == record["lr"]  # the old epoch_end metrics carried the learning rate
        assert "epoch" not in kw["metrics"] and not any("/" in k for k in kw["metrics"])

    saves = by_event["checkpoint_saved"]
    assert files_at_save == [True] * 3
    assert [kw["epoch"] for kw in saves] == [0, 1, 2]
    best_so_far = math.inf
    for e, kw in enumerate(saves):
        info = kw["checkpoint_info"]
        assert Path(info["path"]).name == f"epoch-{e + 1:04d}.pt"
        assert info["epoch"] == e and info["step"] == BATCHES * (e + 1)
        assert info["metrics"]["val_loss"] == records[e]["val/loss"]
        assert kw["is_best"] == info["is_best"] == (records[e]["val/loss"] < best_so_far)
        best_so_far = min(best_so_far, records[e]["val/loss"])
        # the file holds the state of that epoch
        assert sf.read(info["path"])["state"]["progress"]["step"] == info["step"]
    # each checkpoint_saved comes right after its epoch_end, as in the old pipeline
    order = [ev for ev, _ in calls if ev in ("epoch_end", "checkpoint_saved")]
    assert order == ["epoch_end", "checkpoint_saved"] * 3

    (end,) = by_event["training_end"]
    assert calls[-1][0] == "training_end"
    val_losses = [r["val/loss"] for r in records]
    assert end["epochs_trained"] == 3
    assert end["best_val_loss"] == min(val_losses)
    assert end["training_history"]["val_loss"] == val_losses

    assert {"start_epoch", "epochs_trained", "best_val_loss", "early_stopped", "training_history"} <= set(results)
    assert results["start_epoch"] == 0 and results["epochs_trained"] == 3
    assert results["best_val_loss"] == min(val_losses)
    assert results["early_stopped"] is False and results["success"] is True
    assert results["training_history"] == end["training_history"]
    assert (tmp_path / "run" / "recipe.toml").is_file()


def test_save_every_sets_the_periodic_checkpoints(tmp_path):
    saved: list[str] = []
    pipeline = TrainingPipeline(config=tiny_config(epochs=3), run_dir=tmp_path / "every2")
    pipeline.register_callback("checkpoint_saved",
                               lambda epoch, checkpoint_info, is_best: saved.append(checkpoint_info["path"]))
    pipeline.train(save_every=2)
    names = {p.name for p in (tmp_path / "every2" / "checkpoints").glob("*.pt")}
    assert "epoch-0002.pt" in names and "last.pt" in names and "best.pt" in names
    assert "epoch-0001.pt" not in names and "epoch-0003.pt" not in names
    assert str(tmp_path / "every2" / "checkpoints" / "epoch-0002.pt") in saved

    # the old default: every 5 epochs, so a 3-epoch run keeps only best.pt and last.pt
    TrainingPipeline(config=tiny_config(epochs=3), run_dir=tmp_path / "default").train()
    names = {p.name for p in (tmp_path / "default" / "checkpoints").glob("*.pt")}
    assert not any(n.startswith("epoch-") for n in names) and {"best.pt", "last.pt"} <= names


def test_early_stop_is_reported_as_the_old_flag(tmp_path):
    config = tiny_config(epochs=4)
    # min_delta 10: no epoch after the first counts as better, so patience 1 stops after epoch 2
    config["callbacks"] = [{"use": "early_stopping", "monitor": "val/loss", "patience": 1, "min_delta": 10.0}]
    ended: list[dict] = []
    pipeline = TrainingPipeline(config=config, run_dir=tmp_path / "stop")
    pipeline.register_callback("training_end", lambda **kw: ended.append(kw))
    results = pipeline.train()
    assert results["early_stopped"] is True and results["success"] is True
    assert results["epochs_trained"] == 2 and ended[0]["epochs_trained"] == 2
    assert results["stop_reason"].startswith("early stop")

    # a stopped run is not trained on: train() returns at once and calls nothing
    again = TrainingPipeline(config=config, run_dir=tmp_path / "stop")
    called: list[dict] = []
    again.register_callback("training_start", lambda **kw: called.append(kw))
    resumed = again.train(resume_from_checkpoint=tmp_path / "stop")
    assert resumed["start_epoch"] == 2 and resumed["epochs_trained"] == 0 and resumed["early_stopped"]
    assert called == []


# --------------------------------------------------------------------------- .metrics


def test_metrics_history_update_and_json_round_trip(tmp_path):
    pipeline = TrainingPipeline(config=tiny_config(epochs=2), run_dir=tmp_path / "run")
    seen_inside: list[list[float]] = []

    def on_epoch_end(epoch, metrics):  # old scripts added their own series as the run went
        pipeline.metrics.update_history("gap", metrics["val_loss"] - metrics["train_loss"])
        seen_inside.append(list(pipeline.metrics.get_all_history()["val_loss"]))

    pipeline.register_callback("epoch_end", on_epoch_end)
    results = pipeline.train()
    state = pipeline.state
    history = pipeline.metrics.get_all_history()

    # the state's history, by old name, series by series
    for record in state.history.epochs:
        for name in record:
            assert history[old_name(name)] == state.history.series(name), name
    assert history["epoch"] == [0, 1]
    assert seen_inside == [state.history.series("val/loss")[:1], state.history.series("val/loss")]
    gaps = [r["val/loss"] - r["train/loss"] for r in state.history.epochs]
    assert history["gap"] == pytest.approx(gaps)
    assert results["training_history"] == history
    assert pipeline.metrics.get_history("val/loss") == pipeline.metrics.get_history("val_loss") == history["val_loss"]
    assert pipeline.metrics.get_history("nothing") == []

    # added values live in the facade, not in the state: checkpoints and replay never see them
    before = sf.read(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all("gap" not in r for r in before["state"]["history"]["epochs"])
    pipeline.metrics.update_history("val_loss", torch.tensor(0.25))  # appended after the recorded values
    assert pipeline.metrics.get_history("val_loss") == state.history.series("val/loss") + [0.25]
    assert state.history.series("val/loss") == [r["val/loss"] for r in before["state"]["history"]["epochs"]]

    path = pipeline.metrics.save_to_json(tmp_path / "out" / "history.json")
    assert json.loads(path.read_text(encoding="utf-8")) == pipeline.metrics.get_all_history()
    assert not list((tmp_path / "out").glob(".*"))  # no temp file left behind

    with pytest.raises(StateError, match="name must be a non-empty str"):
        pipeline.metrics.update_history("", 1.0)


# --------------------------------------------------------------------------- resume


def test_resume_after_a_crash_reaches_the_uninterrupted_bits(tmp_path, reference):
    config = fixed_schedule(tiny_config(epochs=4), 4)
    run = tmp_path / "crashed"

    def power_cut(epoch, checkpoint_info, is_best):
        if epoch == 1:
            raise RuntimeError("power cut")

    crashed = TrainingPipeline(config=config, run_dir=run)
    crashed.register_callback("checkpoint_saved", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        crashed.train(save_every=1)
    assert (run / "checkpoints" / "epoch-0002.pt").is_file()

    epochs_seen: list[int] = []
    resumed = TrainingPipeline(config=config, run_dir=run)
    resumed.register_callback("epoch_end", lambda epoch, metrics: epochs_seen.append(epoch))
    results = resumed.train(resume_from_checkpoint=run, save_every=1)

    assert results["start_epoch"] == 2 and results["epochs_trained"] == 2
    assert epochs_seen == [2, 3]
    assert (run / "checkpoints" / "epoch-0004.pt").is_file()
    _identical(resumed.state, reference.state)
    assert results["training_history"] == reference.metrics.get_all_history()
    assert results["best_val_loss"] == best_val_loss(reference.state)


def test_resume_with_more_epochs_from_a_checkpoint_file(tmp_path, reference):
    run = tmp_path / "short"
    short = TrainingPipeline(config=fixed_schedule(tiny_config(epochs=2), 4), run_dir=run)
    first = short.train(save_every=1)
    assert first["epochs_trained"] == 2

    more = TrainingPipeline(config=fixed_schedule(tiny_config(epochs=4), 4), run_dir=run)
    starts: list[dict] = []
    more.register_callback("training_start", lambda **kw: starts.append(kw))
    results = more.train(resume_from_checkpoint=run / "checkpoints" / "epoch-0002.pt", save_every=1)

    assert starts == [{"start_epoch": 2, "epochs": 4}]
    assert results["start_epoch"] == 2 and results["epochs_trained"] == 2
    _identical(more.state, reference.state)
    assert more.state.recipe["train"]["epochs"] == 4  # the state carries the recipe it goes on with
    assert load_recipe(run / "recipe.toml").train.epochs == 4  # and so does the run folder


# --------------------------------------------------------------------------- bad input


def test_bad_event_name_and_bad_callbacks_error_clearly():
    pipeline = TrainingPipeline(config=tiny_config())
    with pytest.raises(StateError, match=r"unknown event 'epoch_ends'; did you mean 'epoch_end'\?"):
        pipeline.register_callback("epoch_ends", lambda epoch, metrics: None)
    with pytest.raises(StateError, match="the events are training_start, epoch_start"):
        pipeline.register_callback("on_fire", lambda **kw: None)
    with pytest.raises(StateError, match="must be callable"):
        pipeline.register_callback("epoch_end", "print")

    def on_epoch_end(epoch, loss):
        pass

    with pytest.raises(StateError, match=r"called as on_epoch_end\(epoch=\.\.\., metrics=\.\.\.\)"):
        pipeline.register_callback("epoch_end", on_epoch_end)


def test_bad_config_and_arguments_error_clearly(tmp_path, reference):
    bad = tiny_config()
    bad["train"]["epochs"] = "three"
    with pytest.raises(RecipeError, match=r"TrainingPipeline config: train\.epochs"):
        TrainingPipeline(config=bad)
    bad = tiny_config()
    bad["optimizer"]["learning_rate"] = 0.1
    with pytest.raises(RecipeError, match=r"optimizer\.learning_rate"):
        TrainingPipeline(config=bad)
    with pytest.raises(StateError, match=r"model_handler is no longer taken.*\[model\]"):
        TrainingPipeline(config=tiny_config(), model_handler=object())

    pipeline = TrainingPipeline(config=tiny_config(), run_dir=reference.run_dir)
    with pytest.raises(RecipeError, match=r"save_every=-1.*an int >= 0"):
        pipeline.train(save_every=-1)
    with pytest.raises(RecipeError, match="already holds a run.*resume_from_checkpoint"):
        pipeline.train()
    with pytest.raises(StateError, match=r"dataloaders is no longer taken.*\[data\]"):
        pipeline.train({"train": [], "val": []})
    with pytest.raises(sf.CheckpointError, match="no such checkpoint"):
        pipeline.train(resume_from_checkpoint=tmp_path / "missing")
    other = tmp_path / "other"
    other.mkdir()
    (other / "recipe.toml").write_text("# another run\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="holds another run"):
        TrainingPipeline(config=fixed_schedule(tiny_config(epochs=4), 4), run_dir=other).train(
            resume_from_checkpoint=reference.run_dir)
    assert (other / "recipe.toml").read_text(encoding="utf-8") == "# another run\n"
    reseeded = fixed_schedule(tiny_config(epochs=4), 4)
    reseeded["run"]["seed"] = 3
    with pytest.raises(RecipeError, match=r"run\.seed: the config says 3.*trained with seed 0"):
        TrainingPipeline(config=reseeded).train(resume_from_checkpoint=reference.run_dir)


def test_pieces():
    assert old_name("val/loss") == "val_loss" and old_name("lr/backbone") == "lr_backbone" and old_name("lr") == "lr"
    assert best_val_loss(None) == math.inf
    assert set(CALLBACK_ARGUMENTS) == set(sf.EVENTS) == set(OLD_ARGUMENTS)
    assert {k: set(v) for k, v in CALLBACK_ARGUMENTS.items()} == OLD_ARGUMENTS
    cb = old_style("epoch_end", lambda epoch, metrics: None, ctx=None)
    assert cb.writes and cb.event == "epoch_end"  # replay leaves old-style functions out


def test_migration_guide_examples_run(tmp_path, monkeypatch):
    """docs/migration.md's Python blocks run as written (all but the old pipeline's 'before' script)."""
    import re

    guide = Path(__file__).resolve().parents[1] / "docs" / "migration.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(encoding="utf-8"), re.S)
    new = [b for b in blocks if "smartcash.utils" not in b]
    assert len(blocks) - len(new) == 1 and len(new) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "migration"}
    exec(compile("\n".join(new), str(guide), "exec"), namespace)  # noqa: S102 - our own guide
    assert namespace["results"]["start_epoch"] == 5  # the resume example found the run complete
    assert namespace["pipeline"].state.progress.epoch == 5
    assert json.loads((tmp_path / "runs" / "rupiah" / "history.json").read_text(encoding="utf-8"))["val_loss"]
    assert namespace["state"].progress.epoch == 5  # the native run, in a folder of its own
    assert (tmp_path / "runs" / "rupiah-native" / "checkpoints" / "last.pt").is_file()
    # resuming the complete run trained nothing and wrote nothing
    assert namespace["results"]["epochs_trained"] == 0
    assert not list((tmp_path / "runs" / "rupiah" / "checkpoints").glob("final-*.pt"))
