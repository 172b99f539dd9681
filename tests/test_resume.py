"""Resume and replay are bit-exact: a checkpoint continues to the very bits of the run that never stopped.

Each reference run trains through ``fit`` with step transformers
(accumulation, clipping, EMA), validation and the built-in callbacks, and
writes checkpoints with ``checkpointing`` at epoch ends and every few steps,
so some land mid-epoch and mid-accumulation. Resuming from those files
(loaded with ``load(path, like=template)``) must reach a state that
``verify`` finds identical, on both data paths (``TensorData``, and
``LoaderData`` with 0 and 2 workers over a randomly augmented dataset), with
Dropout and BatchNorm models. A run killed with SIGKILL resumes from its
``last.pt`` to the same bits as well.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import attrs
import pytest
import toolz
import torch

import smartcash_fn as sf
from smartcash_fn.data import epoch_order
from conftest import NoisyDataset, make_cnn, make_mlp, tiny_images, tiny_xy

HERE = Path(__file__).resolve().parent


def _step(accumulate: int = 3):
    return toolz.compose(sf.accumulate(accumulate), sf.clip(1.0), sf.ema(0.9))(sf.make_step(sf.classification_loss))


def _callbacks(directory: Path, every_steps: int):
    return (
        sf.early_stopping(sf.Monitor("val/acc", "max"), patience=4, restore_best=True),
        sf.reduce_on_plateau("val/loss", factor=0.5, patience=0, threshold=0.1),
        sf.record_steps(2),
        sf.checkpointing(directory, every_epochs=1, every_steps=every_steps, monitor="val/loss"),
    )


def _case(name: str, directory: Path):
    """(template, loop, data-for-reads) of one reference run writing checkpoints into ``directory``."""
    if name == "mlp_dropout_tensor":  # 6 batches/epoch; step checkpoints at 4, 8, 16 (mid-epoch)
        x, y = tiny_xy(48)
        template = sf.TrainState.create(partial(make_mlp, dropout=0.3), sf.adamw(0.03), seed=7)
        data, val, epochs, every = sf.TensorData((x, y), 8), sf.TensorData(tiny_xy(24, seed=3), 12), 3, 4
    elif name == "cnn_batchnorm_tensor":  # 4 batches/epoch; step checkpoints at 3, 6 (mid-epoch)
        x, y = tiny_images(32)
        template = sf.TrainState.create(make_cnn, sf.sgd(0.05, momentum=0.9), seed=2)
        data, val, epochs, every = sf.TensorData((x, y), 8), sf.TensorData(tiny_images(16, seed=4), 16), 2, 3
    elif name.startswith("mlp_dropout_loader"):  # 3 batches/epoch; step checkpoints at 2, 4 (mid-epoch)
        workers = int(name[-1])
        x, y = tiny_xy(24)
        template = sf.TrainState.create(partial(make_mlp, dropout=0.3), sf.adamw(0.03), seed=5)
        data = sf.LoaderData(NoisyDataset(x, y), 8, workers=workers)
        val, epochs, every = sf.TensorData(tiny_xy(24, seed=3), 12), 2, 2
    else:
        raise AssertionError(name)
    loop = sf.Loop(step=_step(), data=data, epochs=epochs, validation=sf.Validation(val),
                   callbacks=_callbacks(directory, every))
    return template, loop


@attrs.frozen
class Reference:
    template: sf.TrainState
    loop: sf.Loop
    final: sf.TrainState
    files: Path  # pristine copies of the checkpoints the run wrote


_RUNS: dict[str, Reference] = {}


def reference(name: str, tmp_path_factory) -> Reference:
    """The uninterrupted run of case ``name`` (computed once per session)."""
    if name not in _RUNS:
        run_dir = tmp_path_factory.mktemp(name)
        template, loop = _case(name, run_dir / "checkpoints")
        final = sf.fit(template, loop)
        files = run_dir / "pristine"
        shutil.copytree(run_dir / "checkpoints", files)
        _RUNS[name] = Reference(template, loop, final, files)
    return _RUNS[name]


def _assert_same(resumed: sf.TrainState, full: sf.TrainState, ignore=()) -> None:
    assert sf.verify(resumed, full, ignore=ignore) is None, sf.verify(resumed, full, ignore=ignore)
    for k in full.params:
        assert torch.equal(resumed.params[k], full.params[k]), k
    for k in full.buffers:
        assert torch.equal(resumed.buffers[k], full.buffers[k]), k
    assert resumed.history == full.history
    assert resumed.progress == full.progress


RESUMES = [
    ("mlp_dropout_tensor", "epoch-0001.pt", (1, 6, 0)),
    ("mlp_dropout_tensor", "step-00000004.pt", (0, 4, 4)),
    ("mlp_dropout_tensor", "step-00000008.pt", (1, 8, 2)),
    ("cnn_batchnorm_tensor", "step-00000003.pt", (0, 3, 3)),
    ("cnn_batchnorm_tensor", "epoch-0001.pt", (1, 4, 0)),
    ("mlp_dropout_loader0", "step-00000004.pt", (1, 4, 1)),
    ("mlp_dropout_loader0", "epoch-0001.pt", (1, 3, 0)),
    ("mlp_dropout_loader2", "step-00000002.pt", (0, 2, 2)),
    ("mlp_dropout_loader2", "epoch-0001.pt", (1, 3, 0)),
]


@pytest.mark.parametrize("case,filename,where", RESUMES, ids=[f"{c}-{f[:-3]}" for c, f, _ in RESUMES])
def test_resume_equals_the_uninterrupted_run(case, filename, where, tmp_path_factory):
    ref = reference(case, tmp_path_factory)
    loaded = sf.load(ref.files / filename, like=ref.template)
    assert (loaded.progress.epoch, loaded.progress.step, loaded.progress.batch) == where
    if "accumulate" in loaded.extras:
        assert loaded.extras["accumulate"]["count"] >= 1
    resumed = sf.fit(loaded, ref.loop)  # writes into the reference run's folder, so its bookkeeping matches
    _assert_same(resumed, ref.final)


@pytest.mark.parametrize("filename", ["epoch-0001.pt", "step-00000008.pt"])
def test_resume_in_another_folder_verifies_without_ignoring_anything(filename, tmp_path_factory, tmp_path):
    """A resumed run's state and files equal the uninterrupted run's, wherever its checkpoints go."""
    ref = reference("mlp_dropout_tensor", tmp_path_factory)
    _, loop = _case("mlp_dropout_tensor", tmp_path / "checkpoints")
    resumed = sf.fit(sf.load(ref.files / filename, like=ref.template), loop)
    assert sf.verify(resumed, ref.final) is None
    for name in ("last.pt", "final.pt", "step-00000016.pt", "epoch-0003.pt"):
        mine, theirs = (sf.load(d / name, like=ref.template) for d in (tmp_path / "checkpoints", ref.files))
        assert sf.verify(mine, theirs) is None, name
    # last.pt is the last trained state; final.pt the restored best params, as training ended
    last, final = (sf.load(ref.files / n, like=ref.template) for n in ("last.pt", "final.pt"))
    assert sf.verify(final, ref.final) is None
    assert "restored_epoch" not in last.callbacks["early_stopping"] and last.progress == final.progress


def test_resume_function_from_a_path(tmp_path_factory):
    ref = reference("mlp_dropout_tensor", tmp_path_factory)
    _assert_same(sf.resume(ref.files / "step-00000008.pt", ref.loop, like=ref.template), ref.final)


def test_the_reference_runs_exercise_what_they_claim(tmp_path_factory):
    ref = reference("mlp_dropout_tensor", tmp_path_factory)
    final = ref.final
    assert final.lr_scale < 1.0                              # plateau cut the lr, before the last epoch:
    assert sf.load(ref.files / "step-00000016.pt", like=ref.template).lr_scale < 1.0
    assert final.callbacks["early_stopping"]["restored_epoch"] < final.progress.epoch - 1   # best params put back
    assert "ema" in final.extras and final.best is not None
    assert final.history.steps                              # step records survive the resume
    mid = sf.load(ref.files / "step-00000004.pt", like=ref.template)
    assert mid.extras["accumulate"]["count"] == 1           # a checkpoint between two updates
    assert mid.running                                     # and with the epoch's running sums
    cnn = reference("cnn_batchnorm_tensor", tmp_path_factory).final
    assert int(cnn.buffers["1.num_batches_tracked"]) > 0


def test_loader_workers_do_not_change_the_result(tmp_path_factory):
    zero = reference("mlp_dropout_loader0", tmp_path_factory)
    two = reference("mlp_dropout_loader2", tmp_path_factory)
    assert sf.verify(zero.final, two.final, ) is None
    for k in zero.final.params:
        assert torch.equal(zero.final.params[k], two.final.params[k])


def test_augmentation_really_varies(tmp_path_factory):
    """The loader runs use noisy samples: training on the clean tensors gives other params."""
    zero = reference("mlp_dropout_loader0", tmp_path_factory)
    ds = zero.loop.data.dataset
    clean = attrs.evolve(zero.loop, data=sf.TensorData((ds.x, ds.y), 8), callbacks=())
    other = sf.fit(zero.template, clean)
    assert not torch.equal(other.params["0.weight"], zero.final.params["0.weight"])


# --------------------------------------------------------------------------- skipped batches are not read


@attrs.frozen
class Counting:
    """A data source that records which (epoch, batch) it yields, delegating to ``inner``."""

    inner: object
    seen: list = attrs.field(factory=list)

    def __len__(self) -> int:
        return len(self.inner)

    def batches(self, seed, epoch, start=0):
        for i, b in enumerate(self.inner.batches(seed, epoch, start), start):
            self.seen.append((epoch, i))
            yield b


def test_mid_epoch_resume_reads_none_of_the_skipped_samples(tmp_path):
    x, y = tiny_xy(24)
    ds = NoisyDataset(x, y)
    template = sf.TrainState.create(partial(make_mlp, dropout=0.3), sf.adamw(0.03), seed=5)
    loop = sf.Loop(step=_step(), data=sf.LoaderData(ds, 5), epochs=2,
                   callbacks=sf.checkpointing(tmp_path, every_epochs=0, every_steps=3))
    full = sf.fit(template, loop)
    loaded = sf.load(tmp_path / "step-00000003.pt", like=template)
    assert (loaded.progress.epoch, loaded.progress.batch) == (0, 3)
    ds.reads.clear()
    resumed = sf.fit(loaded, loop)
    order0, order1 = epoch_order(5, 0, 24, True).tolist(), epoch_order(5, 1, 24, True).tolist()
    assert ds.reads == order0[15:] + order1      # exactly the unread tail of epoch 0, then all of epoch 1
    assert sf.verify(resumed, full) is None


def test_mid_epoch_resume_asks_for_the_remaining_batches_only(tmp_path):
    x, y = tiny_xy(48)
    data = Counting(sf.TensorData((x, y), 8))
    template = sf.TrainState.create(make_mlp, sf.adamw(0.03), seed=1)
    loop = sf.Loop(step=_step(), data=data, epochs=2, callbacks=sf.checkpointing(tmp_path, every_steps=4))
    full = sf.fit(template, loop)
    assert data.seen == [(e, b) for e in range(2) for b in range(6)]
    data.seen.clear()
    resumed = sf.fit(sf.load(tmp_path / "step-00000004.pt", like=template), loop)
    assert data.seen == [(0, 4), (0, 5)] + [(1, b) for b in range(6)]
    assert sf.verify(resumed, full) is None


# --------------------------------------------------------------------------- replay


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


REPLAYS = [
    ("step-00000004.pt", "step-00000008.pt", 8),      # mid-epoch to mid-epoch, across an epoch end
    ("epoch-0001.pt", "step-00000008.pt", 8),         # epoch boundary to mid-epoch
    ("step-00000004.pt", "epoch-0002.pt", 12),        # to the last batch of an epoch: through its end
    ("step-00000008.pt", "epoch-0002.pt", 12),
    ("step-00000008.pt", "step-00000016.pt", 16),
]


@pytest.mark.parametrize("source,target,to_step", REPLAYS, ids=[f"{s[:-3]}-to-{n}" for s, _, n in REPLAYS])
def test_replay_reaches_the_checkpoint_written_at_that_step(source, target, to_step, tmp_path_factory):
    ref = reference("mlp_dropout_tensor", tmp_path_factory)
    want = sf.load(ref.files / target, like=ref.template)
    assert want.progress.step == to_step
    run_dir = ref.files.parent
    before = _listing(run_dir)
    got = sf.replay(ref.files / source, ref.loop, like=ref.template, to_step=to_step)
    assert _listing(run_dir) == before, "replay wrote files"
    assert got.progress == want.progress
    assert sf.verify(got, want) is None       # nothing to ignore: the checkpoint writer keeps nothing in the state
    assert "checkpoint" not in want.callbacks


def test_replay_to_the_end_equals_the_final_state(tmp_path_factory):
    ref = reference("cnn_batchnorm_tensor", tmp_path_factory)
    got = sf.replay(ref.files / "step-00000003.pt", ref.loop, like=ref.template)
    assert sf.verify(got, ref.final) is None
    state = sf.load(ref.files / "step-00000003.pt", like=ref.template)
    assert sf.verify(sf.replay(state, ref.loop, to_step=6),
                     sf.load(ref.files / "step-00000006.pt", like=ref.template)) is None


def test_replay_refuses_a_step_before_the_checkpoint(tmp_path_factory):
    ref = reference("mlp_dropout_tensor", tmp_path_factory)
    with pytest.raises(sf.StateError, match="to_step 3 is before the checkpoint's step 4"):
        sf.replay(ref.files / "step-00000004.pt", ref.loop, like=ref.template, to_step=3)


# --------------------------------------------------------------------------- verify


def test_verify_names_the_first_difference(tmp_path_factory):
    ref = reference("mlp_dropout_tensor", tmp_path_factory)
    s = ref.final
    assert sf.verify(s, s) is None
    w = s.params["3.weight"].clone()
    w[1, 2] += 1e-3
    d = sf.verify(s, s.replace(params={**s.params, "3.weight": w}))
    assert d.path == "params['3.weight']"
    assert "1 elements differ" in d.right and "tensor(4, 16) float32" in d.left
    assert "params['3.weight']" in str(d)

    epochs = list(s.history.epochs)
    epochs[1] = {**epochs[1], "val/loss": epochs[1]["val/loss"] + 1e-9}
    d = sf.verify(s, s.replace(history=attrs.evolve(s.history, epochs=tuple(epochs))))
    assert d.path == "history['epochs'][1]['val/loss']"

    m = dict(s.opt_state["exp_avg"])
    m["0.bias"] = m["0.bias"].to(torch.float64)
    d = sf.verify(s, s.replace(opt_state={**s.opt_state, "exp_avg": m}))
    assert d.path == "opt_state['exp_avg']['0.bias']" and "float64" in d.right

    d = sf.verify(s, s.replace(progress=attrs.evolve(s.progress, step=s.progress.step + 1)))
    assert d.path == "progress['step']"
    d = sf.verify(s, s.replace(callbacks={**s.callbacks, "extra": {}}))
    assert d.path == "callbacks['extra']" and (d.left, d.right) == ("missing", "present")
    assert sf.verify(s, s.replace(callbacks={**s.callbacks, "extra": {}}), ignore=["extra"]) is None


# --------------------------------------------------------------------------- a killed run


def _python() -> str:
    venv = HERE.parent / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_bits(tmp_path):
    from _train_script import EPOCHS, build

    killed_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    script = str(HERE / "_train_script.py")
    proc = subprocess.Popen([_python(), script, str(killed_dir), "--delay", "0.05"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = killed_dir / "last.pt"
    reads = 0
    try:
        deadline = time.monotonic() + 120
        while not list(killed_dir.glob("step-*.pt")):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no step checkpoint within 120 s"
            time.sleep(0.01)
        # last.pt is loadable whenever it exists, also while the run keeps rewriting it (every ~0.1 s)
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            if last.exists():
                sf.read(last)
                reads += 1
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert reads > 0
    template, loop = build(tmp_path / "reference")
    at_kill = sf.load(last, like=template)
    total = EPOCHS * len(loop.data)
    assert 0 < at_kill.progress.step < total // 2, f"the kill did not land mid-run: {at_kill.progress}"
    assert not list(killed_dir.glob("final-*.pt"))

    out = tmp_path / "resumed.pt"
    done = subprocess.run([_python(), script, str(killed_dir), "--resume", str(last), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    resumed = sf.load(out, like=template)

    uninterrupted = sf.fit(template, loop)
    assert uninterrupted.progress.step > at_kill.progress.step
    _assert_same(resumed, uninterrupted)
    assert sf.verify(sf.load(last, like=template), sf.load(tmp_path / "reference" / "last.pt", like=template)) is None


# --------------------------------------------------------------------------- bad input to the run API


def test_bad_input_to_the_run_api_gets_user_errors(tmp_path):
    x, y = tiny_xy(16)
    loop = sf.Loop(step=sf.make_step(sf.classification_loss), data=sf.TensorData((x, y), 8))
    with pytest.raises(sf.StateError, match="fit: expected a TrainState, got NoneType"):
        sf.fit(None, loop)
    with pytest.raises(sf.StateError, match="TrainState.create: model must be an nn.Module or a factory"):
        sf.TrainState.create(42, sf.adamw(1e-3))
    with pytest.raises(sf.StateError, match="model factory returned int, not an nn.Module"):
        sf.TrainState.create(lambda: 3, sf.adamw(1e-3))
    with pytest.raises(sf.StateError, match="optimizer must have init.*got NoneType"):
        sf.TrainState.create(make_mlp, None)
    with pytest.raises(sf.StateError, match="seed must be an int, got str"):
        sf.TrainState.create(make_mlp, sf.adamw(1e-3), seed="0")
    with pytest.raises(sf.StateError, match="Loop: epochs must be an int >= 0, got -1"):
        sf.Loop(step=sf.make_step(sf.classification_loss), data=sf.TensorData((x, y), 8), epochs=-1)
    with pytest.raises(sf.StateError, match="Loop: step must be callable"):
        sf.Loop(step=None, data=sf.TensorData((x, y), 8))
    template = sf.TrainState.create(make_mlp, sf.adamw(1e-3))
    sf.save(template, tmp_path / "a.pt")
    with pytest.raises(sf.StateError, match="fit: the state has no model or optimizer; load a checkpoint with like="):
        sf.fit(sf.load(tmp_path / "a.pt"), loop)
    with pytest.raises(sf.StateError, match="verify: expected two TrainStates, got dict"):
        sf.verify(template, {})
    with pytest.raises(sf.CheckpointError, match=r"missing\.pt: no such checkpoint file"):
        sf.resume(tmp_path / "missing.pt", loop, like=template)
    assert all(issubclass(e, sf.UserError) for e in (sf.StateError, sf.CheckpointError, sf.DataError))
