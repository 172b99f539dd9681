"""Built-in callbacks through ``fit`` on tiny data.

Validation metrics are scripted: the evaluator ignores the model and returns
the next row of a table, so each test states the metric sequence it needs
(one metric stalling while another improves, a plateau, a best epoch) and
the epoch where something must happen follows from that table alone.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from smartcash_fn import callbacks as C
from smartcash_fn import checkpoint
from smartcash_fn.callbacks import (
    Monitor,
    checkpointing,
    early_stopping,
    memory_cleanup,
    nan_guard,
    record_steps,
    reduce_on_plateau,
)
from smartcash_fn.data import Batches
from smartcash_fn.errors import StateError
from smartcash_fn.events import Callback
from smartcash_fn.loop import Evaluator, Loop, Validation, fit
from smartcash_fn.optim import sgd
from smartcash_fn.state import History, TrainState
from smartcash_fn.step import classification_loss, make_step

# --------------------------------------------------------------------------- helpers


def tiny_state(lr: float = 0.1) -> TrainState:
    return TrainState.create(lambda: nn.Linear(3, 2), sgd(lr), seed=0)


def tiny_batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(4, 3, generator=g)
        out.append((x, (x[:, 0] > 0).long()))
    return out


def scripted(rows: list[dict[str, float]]) -> Validation:
    """A validation whose n-th run reports ``rows[n]`` (the last row once the table runs out).

    Rows are written as the history shows them (``val/loss``); the evaluator
    returns the names without the ``val/`` that validation adds.
    """
    runs: list[int] = []

    def finish(_acc):
        runs.append(1)
        return {k.removeprefix("val/"): v for k, v in rows[min(len(runs), len(rows)) - 1].items()}

    evaluator = Evaluator(init=lambda: None, update=lambda acc, apply, batch: acc, finish=finish)
    return Validation(Batches([None]), evaluator)


def loop_of(*callbacks, epochs: int, batches: int = 2, rows=None, step=None, data=None) -> Loop:
    return Loop(step=step or make_step(classification_loss), data=data or Batches(tiny_batches(batches)),
                epochs=epochs, validation=None if rows is None else scripted(rows), callbacks=callbacks)


def snapshots(store: list) -> Callback:
    """Keeps each epoch's params (by reference: states are immutable)."""
    return Callback("epoch_end", lambda s: (store.append(s.params), s)[1], priority=0)


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def digest_of(path: Path) -> str:
    return checkpoint.read(path)["digest"]


# --------------------------------------------------------------------------- early stopping

# val/a (min) improves until epoch 2 while val/b (max) stalls; then b improves
# once (epoch 3) while a stalls; from there both stall.
TWO_METRICS = [
    {"val/a": 1.0, "val/b": 0.1},
    {"val/a": 0.9, "val/b": 0.1},
    {"val/a": 0.8, "val/b": 0.1},
    {"val/a": 0.8, "val/b": 0.2},
    {"val/a": 0.8, "val/b": 0.2},
    {"val/a": 0.8, "val/b": 0.2},
]


def test_early_stopping_on_two_metrics_waits_for_both_and_restores_the_first_monitors_best():
    kept: list = []
    es = early_stopping([Monitor("val/a", "min"), Monitor("val/b", "max")], patience=2)
    out = fit(tiny_state(), loop_of(es, snapshots(kept), epochs=20, rows=TWO_METRICS))

    # b alone has waited 2 epochs after epoch 2, a alone after epoch 4; both only after epoch 5
    assert len(out.history.epochs) == 6
    assert out.stop is not None and not out.stop.failed
    assert out.stop.reason.startswith("early stop after epoch 6: no improvement for 2 epochs")  # 1-based, as the files
    assert "val/a best 0.8" in out.stop.reason and "val/b best 0.2" in out.stop.reason
    st = out.callbacks["early_stopping"]
    assert st["stopped_epoch"] == 5
    assert st["best"] == {"val/a": 0.8, "val/b": 0.2}
    assert st["wait"] == {"val/a": 3, "val/b": 2}
    # restore_best: the params after epoch 2, where val/a first reached 0.8
    assert st["restored_epoch"] == 2 and st["restored_value"] == 0.8
    assert out.best.epoch == 2 and out.best.monitor == "val/a"
    for name, v in out.params.items():
        assert torch.equal(v, kept[2][name])
        assert not torch.equal(v, kept[5][name])


@pytest.mark.parametrize("monitor, stopped", [(Monitor("val/b", "max"), 2), (Monitor("val/a", "min"), 4)])
def test_early_stopping_on_one_of_the_metrics_stops_sooner(monitor, stopped):
    out = fit(tiny_state(), loop_of(early_stopping(monitor, patience=2), epochs=20, rows=TWO_METRICS))
    assert out.callbacks["early_stopping"]["stopped_epoch"] == stopped
    assert len(out.history.epochs) == stopped + 1


def test_early_stopping_min_delta_and_no_restore():
    rows = [{"val/a": 1.0}, {"val/a": 0.95}, {"val/a": 0.91}, {"val/a": 0.5}]
    kept: list = []
    es = early_stopping(Monitor("val/a", "min", min_delta=0.1), patience=2, restore_best=False)
    out = fit(tiny_state(), loop_of(es, snapshots(kept), epochs=10, rows=rows))
    assert out.callbacks["early_stopping"]["stopped_epoch"] == 2  # 0.95 and 0.91 are within min_delta
    assert "restored_epoch" not in out.callbacks["early_stopping"]
    assert out.params is kept[-1]


def test_early_stopping_rejects_bad_patience():
    with pytest.raises(StateError, match="patience"):
        early_stopping("val/loss", patience=0)


# --------------------------------------------------------------------------- reduce on plateau


def drive(cb: Callback, name: str, values: list[float]) -> list[float]:
    """Feed ``values`` to the callback as successive epoch records; the lr_scale after each."""
    state = TrainState(params={}, buffers={}, opt_state=None)
    scales = []
    for v in values:
        state = state.replace(history=History(epochs=state.history.epochs + ({name: v, "epoch": 0},)))
        state = cb.fn(state)
        scales.append(state.lr_scale)
    return scales


def torch_plateau(values: list[float], **kw) -> list[float]:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    lrs = []
    for v in values:
        sched.step(v)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def plateau_pair(mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, values):
    cb = reduce_on_plateau(Monitor("val/m", mode), factor=factor, patience=patience, threshold=threshold,
                           threshold_mode=threshold_mode, cooldown=cooldown, min_scale=min_lr)
    ours = drive(cb, "val/m", values)
    theirs = torch_plateau(values, mode=mode, factor=factor, patience=patience, threshold=threshold,
                           threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr)
    return ours, theirs


@pytest.mark.parametrize("mode, threshold_mode, threshold, cooldown, min_lr, values", [
    ("min", "rel", 1e-4, 0, 0.0, [1.0, 0.9, 0.9, 0.9, 0.9, 0.89995, 0.9, 0.9, 0.5, 0.6, 0.6, 0.6, 0.6]),
    ("min", "abs", 0.05, 1, 0.0, [1.0, 0.96, 0.93, 0.9, 0.86, 0.8, 0.79, 0.78, 0.77, 0.76, 0.75, 0.74]),
    ("max", "rel", 0.01, 2, 0.02, [0.1, 0.2, 0.2, 0.201, 0.202, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]),
    ("max", "abs", 0.0, 0, 0.3, [5, 4, 3, 2, 1, 0, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6]),
])
def test_reduce_on_plateau_follows_torch_reduce_lr_on_plateau(mode, threshold_mode, threshold, cooldown,
                                                              min_lr, values):
    ours, theirs = plateau_pair(mode, 0.5, 1, threshold, threshold_mode, cooldown, min_lr, values)
    assert ours == theirs
    assert min(ours) < 1.0  # the sequence does reduce


@settings(max_examples=150, deadline=None)
@given(
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["rel", "abs"]),
    threshold=st.sampled_from([0.0, 1e-4, 0.01, 0.2]),
    factor=st.sampled_from([0.1, 0.5, 0.9]),
    patience=st.integers(0, 3),
    cooldown=st.integers(0, 3),
    min_lr=st.sampled_from([0.0, 0.05, 0.5]),
    steps=st.lists(st.sampled_from([0.0, 0.0, 0.0, -1e-5, 1e-5, -0.01, 0.01, -0.3, 0.3]), min_size=1, max_size=30),
)
def test_reduce_on_plateau_matches_torch_on_any_metric_walk(mode, threshold_mode, threshold, factor, patience,
                                                            cooldown, min_lr, steps):
    values, v = [], 1.0
    for d in steps:
        v += d
        values.append(v)
    ours, theirs = plateau_pair(mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, values)
    assert ours == theirs


def test_reduce_on_plateau_lowers_the_lr_the_optimizer_really_uses():
    data = tiny_batches(2)
    rows = [{"val/loss": 1.0}]  # never improves after the first epoch
    plateau = reduce_on_plateau(Monitor("val/loss"), factor=0.5, patience=0)
    scales: list[float] = []
    track = Callback("epoch_end", lambda s: (scales.append(s.lr_scale), s)[1], priority=0)
    state = tiny_state(lr=0.1)
    model = nn.Linear(3, 2)
    model.load_state_dict(state.params)
    out = fit(state, loop_of(plateau, track, epochs=4, rows=rows, data=Batches(data)))
    assert scales == [1.0, 0.5, 0.25, 0.125]
    assert out.lr_scale == 0.125

    # torch SGD with the lr that each epoch should have had
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(4):
        opt.param_groups[0]["lr"] = 0.1 * ([1.0] + scales)[epoch]
        for x, y in data:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for name, p in model.named_parameters():
        assert torch.equal(out.params[name], p.detach()), name


# --------------------------------------------------------------------------- NaN guard


def nan_at(step_number: int, batches_per_epoch: int = 4):
    """Data and loss whose loss is NaN for the ``step_number``-th batch trained (1-based)."""
    base = tiny_batches(batches_per_epoch)

    def epoch_batches(epoch):
        for i, (x, y) in enumerate(base):
            yield x, y, (math.nan if epoch * batches_per_epoch + i + 1 == step_number else 1.0)

    def loss_fn(apply, batch):
        x, y, factor = batch
        return F.cross_entropy(apply(x), y) * factor

    return Batches(epoch_batches, length=batches_per_epoch), make_step(loss_fn)


@pytest.mark.parametrize("guarded", [True, False])
def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, guarded):
    data, step = nan_at(7)
    cbs = [checkpointing(tmp_path, every_epochs=1, every_steps=1)] + ([nan_guard()] if guarded else [])
    out = fit(tiny_state(), loop_of(*cbs, epochs=3, step=step, data=data))
    if not guarded:  # the control: without the guard the broken state is saved and training goes on
        assert "step-00000007.pt" in files(tmp_path) and out.stop is None
        assert not all(torch.isfinite(v).all() for v in checkpoint.load(tmp_path / "last.pt").params.values())
        return

    assert out.stop is not None and out.stop.failed
    assert "non-finite loss at step 7 (epoch 2, batch 3)" in out.stop.reason   # the 3rd batch of the 2nd epoch
    assert out.callbacks["nan_guard"] == {"tripped_step": 7}
    assert out.progress.step == 7
    assert files(tmp_path) == {"step-00000001.pt", "step-00000002.pt", "step-00000003.pt", "epoch-0001.pt",
                               "step-00000005.pt", "step-00000006.pt", "last.pt"}
    assert digest_of(tmp_path / "last.pt") == digest_of(tmp_path / "step-00000006.pt")
    good = checkpoint.load(tmp_path / "last.pt", like=tiny_state())
    assert good.progress.step == 6 and good.stop is None
    assert all(torch.isfinite(v).all() for v in good.params.values())


# --------------------------------------------------------------------------- checkpointing


def saved_log(tmp_path: Path, log: list) -> Callback:
    """On each checkpoint_saved: the file named as last exists and last.pt holds the same state."""

    def check(state):
        st = state.callbacks["checkpoint"]
        last = Path(st["last"])
        assert last.parent == tmp_path and last.exists()
        assert digest_of(tmp_path / "last.pt") == digest_of(last)
        log.append((last.name, st["is_best"], st["epoch"], st["step"]))
        return state

    return Callback("checkpoint_saved", check)


def test_every_epochs_and_a_final_save_at_training_end(tmp_path):
    log: list = []
    out = fit(tiny_state(), loop_of(checkpointing(tmp_path, every_epochs=2), saved_log(tmp_path, log), epochs=5))
    assert files(tmp_path) == {"epoch-0002.pt", "epoch-0004.pt", "final-00000010.pt", "last.pt"}
    assert log == [("epoch-0002.pt", False, 2, 4), ("epoch-0004.pt", False, 4, 8), ("final-00000010.pt", False, 5, 10)]
    assert "checkpoint" not in out.callbacks  # the writer's notice is gone once checkpoint_saved is done
    loaded = checkpoint.load(tmp_path / "epoch-0002.pt", like=tiny_state())
    assert (loaded.progress.epoch, loaded.progress.step, loaded.progress.batch) == (2, 4, 0)


def test_no_final_save_when_the_last_epoch_was_just_saved(tmp_path):
    log: list = []
    fit(tiny_state(), loop_of(checkpointing(tmp_path, every_epochs=2), saved_log(tmp_path, log), epochs=4))
    assert [name for name, *_ in log] == ["epoch-0002.pt", "epoch-0004.pt"]
    assert digest_of(tmp_path / "last.pt") == digest_of(tmp_path / "epoch-0004.pt")


def test_every_steps_saves_an_epoch_ending_step_after_validation(tmp_path):
    log: list = []
    rows = [{"val/loss": 0.5}, {"val/loss": 0.4}]
    ck = checkpointing(tmp_path, every_epochs=0, every_steps=2)
    fit(tiny_state(), loop_of(ck, saved_log(tmp_path, log), epochs=2, batches=3, rows=rows))
    assert files(tmp_path) == {"step-00000002.pt", "step-00000004.pt", "step-00000006.pt", "last.pt"}
    assert [name for name, *_ in log] == ["step-00000002.pt", "step-00000004.pt", "step-00000006.pt"]

    def load(name):
        return checkpoint.load(tmp_path / name, like=tiny_state())

    mid = load("step-00000002.pt")
    assert (mid.progress.epoch, mid.progress.step, mid.progress.batch) == (0, 2, 2) and mid.history.epochs == ()
    assert load("step-00000004.pt").progress.batch == 1
    end = load("step-00000006.pt")  # step 6 ends epoch 1: saved at the epoch end, validation included
    assert (end.progress.epoch, end.progress.step, end.progress.batch) == (2, 6, 0)
    assert [e["val/loss"] for e in end.history.epochs] == [0.5, 0.4]
    assert digest_of(tmp_path / "last.pt") == digest_of(tmp_path / "step-00000006.pt")


def test_both_periods_zero_writes_nothing(tmp_path):
    log: list = []
    out = fit(tiny_state(), loop_of(checkpointing(tmp_path / "ck", every_epochs=0, every_steps=0),
                                    saved_log(tmp_path / "ck", log), epochs=3, batches=3))
    assert out.progress.step == 9
    assert log == [] and files(tmp_path / "ck") == set()


def test_best_pt_follows_the_monitor_and_is_best_is_reported(tmp_path):
    log: list = []
    rows = [{"val/acc": v} for v in (0.5, 0.7, 0.6, 0.8, 0.8)]
    ck = checkpointing(tmp_path, every_epochs=1, monitor=Monitor("val/acc", "max"), top_k=0)
    out = fit(tiny_state(), loop_of(ck, saved_log(tmp_path, log), epochs=5, rows=rows))
    assert [(name, best) for name, best, *_ in log] == [
        ("epoch-0001.pt", True), ("epoch-0002.pt", True), ("epoch-0003.pt", False),
        ("epoch-0004.pt", True), ("epoch-0005.pt", False)]
    assert files(tmp_path) == {f"epoch-000{i}.pt" for i in range(1, 6)} | {"best.pt", "last.pt"}
    assert digest_of(tmp_path / "best.pt") == digest_of(tmp_path / "epoch-0004.pt")
    assert digest_of(tmp_path / "last.pt") == digest_of(tmp_path / "epoch-0005.pt")
    best = checkpoint.load(tmp_path / "best.pt", like=tiny_state())
    assert best.history.last()["val/acc"] == 0.8 and best.progress.epoch == 4
    assert "checkpoint" not in out.callbacks


def test_top_k_keeps_exactly_k_files(tmp_path):
    log: list = []
    values = [0.9, 0.5, 0.7, 0.4, 0.6, 0.45, 0.8]
    ck = checkpointing(tmp_path, every_epochs=0, monitor="val/loss", top_k=2)
    fit(tiny_state(), loop_of(ck, saved_log(tmp_path, log), epochs=7, rows=[{"val/loss": v} for v in values]))
    # the two lowest losses: 0.4 after epoch 4 and 0.45 after epoch 6; nothing periodic is kept
    assert files(tmp_path) == {"top-epoch-0004.pt", "top-epoch-0006.pt", "best.pt", "last.pt"}
    assert digest_of(tmp_path / "best.pt") == digest_of(tmp_path / "top-epoch-0004.pt")
    for name, value in (("top-epoch-0004.pt", 0.4), ("top-epoch-0006.pt", 0.45)):
        assert checkpoint.load(tmp_path / name, like=tiny_state()).history.last()["val/loss"] == value
    # saved only when entering the top 2 (epochs 1, 2, 3, 4, 6), last.pt following each save;
    # the final state goes to last.pt alone
    assert [(epoch, best) for _, best, epoch, _ in log] == [
        (1, True), (2, True), (3, False), (4, True), (6, False), (7, False)]
    assert log[-1][0] == "last.pt"
    assert checkpoint.load(tmp_path / "last.pt", like=tiny_state()).progress.epoch == 7


def test_top_k_beside_periodic_files(tmp_path):
    values = [0.9, 0.5, 0.7, 0.4]
    ck = checkpointing(tmp_path, every_epochs=1, monitor=Monitor("val/loss"), top_k=3)
    fit(tiny_state(), loop_of(ck, epochs=4, rows=[{"val/loss": v} for v in values]))
    assert files(tmp_path) == ({f"epoch-000{i}.pt" for i in range(1, 5)} | {"best.pt", "last.pt"}
                               | {"top-epoch-0002.pt", "top-epoch-0003.pt", "top-epoch-0004.pt"})


def test_keep_periodic_keeps_the_newest_files(tmp_path):
    fit(tiny_state(), loop_of(checkpointing(tmp_path, every_epochs=1, keep_periodic=2), epochs=5))
    assert files(tmp_path) == {"epoch-0004.pt", "epoch-0005.pt", "last.pt"}
    assert digest_of(tmp_path / "last.pt") == digest_of(tmp_path / "epoch-0005.pt")


def test_checkpointing_rejects_bad_arguments(tmp_path):
    with pytest.raises(StateError, match="every_steps"):
        checkpointing(tmp_path, every_steps=-1)
    with pytest.raises(StateError, match="top_k"):
        checkpointing(tmp_path, top_k=1.5)


# --------------------------------------------------------------------------- memory and step records


def test_memory_cleanup_collects_every_n_epochs(monkeypatch):
    calls: list[int] = []
    real = gc.collect
    monkeypatch.setattr(C.gc, "collect", lambda *a: (calls.append(1), real(*a))[1])
    seen: list[int] = []
    probe = Callback("epoch_end", lambda s: (seen.append(len(calls)), s)[1], priority=901)
    fit(tiny_state(), loop_of(memory_cleanup(every_epochs=2), probe, epochs=5))
    assert seen == [0, 1, 1, 2, 2]  # after epochs 2 and 4


def test_record_steps_fills_history_steps():
    losses: list[float] = []
    probe = Callback("batch_end", lambda s: (losses.append(float(s.metrics["loss"])), s)[1])
    out = fit(tiny_state(), loop_of(record_steps(every=2), probe, epochs=2, batches=3))
    assert [(r["step"], r["epoch"]) for r in out.history.steps] == [(2, 0), (4, 1), (6, 1)]
    assert [r["loss"] for r in out.history.steps] == [losses[1], losses[3], losses[5]]
    every = fit(tiny_state(), loop_of(record_steps(), epochs=1, batches=3))
    assert [r["step"] for r in every.history.steps] == [1, 2, 3]


# --------------------------------------------------------------------------- last.pt, final.pt, temp files


def test_last_pt_holds_the_last_trained_state_after_early_stopping_restores_the_best(tmp_path):
    log: list = []
    trained: list = []
    rows = [{"val/loss": v} for v in (0.9, 0.5, 0.7, 0.8, 0.6)]
    es = early_stopping(Monitor("val/loss"), patience=2)  # stops after epoch 4, restores epoch 2's params
    keep = Callback("epoch_end", lambda s: (trained.append(s), s)[1], priority=2000)
    ck = checkpointing(tmp_path, every_epochs=3, monitor="val/loss", top_k=0)
    out = fit(tiny_state(), loop_of(es, ck, keep, saved_log_any(log), epochs=5, rows=rows))
    assert out.callbacks["early_stopping"]["restored_epoch"] == 1 and out.progress.epoch == 4
    last_trained = trained[-1]
    assert last_trained.progress.epoch == 4
    # last.pt: the params trained through epoch 4, not the restored ones
    last = checkpoint.load(tmp_path / "last.pt", like=tiny_state())
    for k, v in last.params.items():
        assert torch.equal(v, last_trained.params[k]), k
    assert "restored_epoch" not in last.callbacks["early_stopping"]
    # final.pt: the state as training ended, the best epoch's params restored
    final = checkpoint.load(tmp_path / "final.pt", like=tiny_state())
    for k, v in final.params.items():
        assert torch.equal(v, out.params[k]), k
    assert final.callbacks["early_stopping"]["restored_epoch"] == 1
    assert checkpoint.load(tmp_path / "best.pt", like=tiny_state()).progress.epoch == 2   # best.pt: the best epoch
    assert files(tmp_path) == {"epoch-0003.pt", "final-00000008.pt", "final.pt", "best.pt", "last.pt"}
    assert digest_of(tmp_path / "last.pt") == digest_of(tmp_path / "final-00000008.pt")
    assert log == [("best.pt", False), ("best.pt", False), ("epoch-0003.pt", False), ("final-00000008.pt", False),
                   ("final.pt", True)]


def saved_log_any(log: list) -> Callback:
    def note(state):
        st = state.callbacks["checkpoint"]
        log.append((Path(st["last"]).name, bool(st.get("restored"))))
        return state

    return Callback("checkpoint_saved", note)


def test_last_pt_is_the_last_epoch_when_it_was_saved_and_params_were_restored(tmp_path):
    rows = [{"val/loss": v} for v in (0.9, 0.5, 0.7, 0.8)]
    es = early_stopping(Monitor("val/loss"), patience=2)
    out = fit(tiny_state(), loop_of(es, checkpointing(tmp_path, every_epochs=1), epochs=6, rows=rows))
    assert out.progress.epoch == 4
    assert files(tmp_path) == {f"epoch-000{i}.pt" for i in range(1, 5)} | {"last.pt", "final.pt"}
    assert digest_of(tmp_path / "last.pt") == digest_of(tmp_path / "epoch-0004.pt")
    final = checkpoint.load(tmp_path / "final.pt", like=tiny_state())
    assert all(torch.equal(final.params[k], out.params[k]) for k in out.params)
    assert not all(torch.equal(final.params[k], checkpoint.load(tmp_path / "last.pt", like=tiny_state()).params[k])
                   for k in out.params)


def test_the_writer_removes_temp_files_of_an_interrupted_write_when_it_starts(tmp_path):
    (tmp_path / ".epoch-0001.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".last.pt.zz.tmp").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("kept")
    fit(tiny_state(), loop_of(checkpointing(tmp_path, every_epochs=1), epochs=1))
    assert files(tmp_path) == {"epoch-0001.pt", "last.pt", "notes.txt"}


def test_the_checkpoint_writer_leaves_the_state_as_it_was(tmp_path):
    rows = [{"val/acc": v} for v in (0.5, 0.7, 0.6)]
    plain = fit(tiny_state(), loop_of(C.keep_best(Monitor("val/acc", "max")), epochs=3, rows=rows))
    written = fit(tiny_state(), loop_of(C.keep_best(Monitor("val/acc", "max")),
                                        checkpointing(tmp_path, every_epochs=1, every_steps=3,
                                                      monitor=Monitor("val/acc", "max"), top_k=2), epochs=3, rows=rows))
    assert checkpoint.digest(checkpoint.to_tree(plain)) == checkpoint.digest(checkpoint.to_tree(written))
    # ... and each checkpoint file holds what the run had at that point, with no writer bookkeeping
    assert "checkpoint" not in checkpoint.load(tmp_path / "epoch-0002.pt", like=tiny_state()).callbacks
