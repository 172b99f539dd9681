"""The ``smartcash-fn`` command line, run as a real subprocess (``python -m smartcash_fn``).

Bad input exits 2 with one message naming the file and the dotted key and no
traceback; a tiny run trains, resumes from a mid-run checkpoint to the same
bits, forks with ``--set``, replays and verifies, and is inspected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smartcash_fn import checkpoint
from smartcash_fn.run import recipe as rc
from smartcash_fn.replay import verify

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)]), **(env or {})}  # this tree's code
    return subprocess.run([sys.executable, "-m", "smartcash_fn", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- bad input: exit 2, file and key, no traceback


BAD = {
    "unknown_key": ('extends = "base.toml"\n[optimizer]\nlrr = 0.1\n', [],
                    "error: r/bad.toml: optimizer.lrr: unknown key; did you mean 'lr'?"),
    "wrong_type": ('extends = "base.toml"\n[train]\nepochs = "five"\n', [],
                   'error: r/bad.toml: train.epochs: expected an integer, got "five"'),
    "missing_key": ('[model]\nuse = "mlp"\n[data]\nuse = "synthetic"\n[train]\nclip = 1.0\n', [],
                    "error: r/bad.toml: train.epochs: missing required key"),
    "unimportable": ('extends = "base.toml"\n[train]\nloss = "no_such_pkg.losses:focal"\n', [],
                     "error: r/bad.toml: train.loss: cannot import 'no_such_pkg.losses:focal': no module named "
                     "'no_such_pkg'"),
    "cycle": ('extends = "loop.toml"\n', [], "error: r/loop.toml: extends: cycle r/bad.toml -> r/loop.toml -> "
                                             "r/bad.toml"),
    "bad_set": ('extends = "base.toml"\n', ["--set", "optimizer.lr=fast"],
                'error: --set optimizer.lr=fast: optimizer.lr: expected a number, got "fast"'),
    "missing_file": (None, [], "error: r/bad.toml: no such recipe file 'r/bad.toml'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_exits_2_naming_file_and_key(tmp_path, case):
    text, extra, expected = BAD[case]
    r = tmp_path / "r"
    r.mkdir()
    shutil.copy(TINY, r / "base.toml")
    write(r, "loop.toml", 'extends = "bad.toml"\n')
    if text is not None:
        write(r, "bad.toml", text)
    out = cli("train", "r/bad.toml", *extra, "--quiet", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(expected), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "runs").exists()          # nothing is written before the recipe is valid


def test_usage_errors_and_bad_checkpoints_exit_2(tmp_path):
    out = cli("train", "--no-such-flag", cwd=tmp_path)
    assert out.returncode == 2 and "usage:" in out.stderr
    write(tmp_path, "junk.pt", "not a checkpoint")
    out = cli("resume", "junk.pt", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: junk.pt: unreadable checkpoint")
    assert "Traceback" not in out.stderr


# --------------------------------------------------------------------------- a tiny run, shared by the tests below


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``train recipes/tiny.toml`` once; the tests below copy from it and leave it as it is."""
    work = tmp_path_factory.mktemp("cli")
    out = cli("train", str(TINY), "--quiet", cwd=work)
    assert out.returncode == 0, out.stderr
    return work, work / "runs" / "tiny"


def test_train_writes_the_run_folder(tiny_run):
    _, run = tiny_run
    for name in ("recipe.toml", "metrics.csv", "metrics.jsonl", "summary.md"):
        assert (run / name).is_file(), name
    for name in ("tensorboard", "plots"):
        assert (run / name).is_dir() and any((run / name).iterdir()), name
    ckpts = run / "checkpoints"
    for name in ("last.pt", "best.pt", "epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"):
        assert (ckpts / name).is_file(), name
    # the resolved recipe travels with the run: in recipe.toml and in every checkpoint
    written = rc.load(run / "recipe.toml")
    assert written == rc.load(TINY)
    for name in ("epoch-0001.pt", "last.pt"):
        assert checkpoint.read(ckpts / name)["state"]["recipe"] == rc.to_dict(written)
    assert checkpoint.read(ckpts / "last.pt")["state"]["progress"] == {"epoch": 3, "step": 24, "batch": 0}


def test_resume_from_a_mid_run_checkpoint_is_bit_identical(tiny_run, tmp_path):
    _, run = tiny_run
    fork = tmp_path / "again"
    (fork / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "epoch-0001.pt", fork / "checkpoints" / "epoch-0001.pt")
    write(fork / "checkpoints", "last.pt", "a torn write")         # the newest file is broken: it is skipped
    out = cli("resume", str(fork), "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stderr and "last.pt" in out.stderr
    assert out.stdout == ""  # a run's facts are said on stderr, each once
    assert out.stderr.count(f"going on from {fork / 'checkpoints' / 'epoch-0001.pt'}\n") == 1
    assert out.stderr.count(f"resuming tiny at epoch 2/3 (step 8) -> {fork}\n") == 1
    resumed = checkpoint.load(fork / "checkpoints" / "last.pt")
    straight = checkpoint.load(run / "checkpoints" / "last.pt")
    assert resumed.progress.step == straight.progress.step == 24
    assert verify(resumed, straight) is None
    for k in straight.params:
        assert torch.equal(resumed.params[k], straight.params[k]), k
    assert (fork / "recipe.toml").is_file()


def test_resume_of_a_finished_run_does_nothing(tiny_run):
    work, run = tiny_run
    before = (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    out = cli("resume", str(run), "--quiet", cwd=work)
    assert out.returncode == 0 and "the run is complete (3 of 3 epochs)" in out.stderr and out.stdout == ""
    assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_fork_with_set_trains_on_in_a_new_folder_recording_its_parent(tiny_run):
    work, run = tiny_run
    parent = run / "checkpoints" / "epoch-0002.pt"
    digest_before = checkpoint.read(run / "checkpoints" / "last.pt")["digest"]
    out = cli("resume", str(parent), "--set", "train.epochs=4", "--set", "optimizer.lr=0.02", "--quiet", cwd=work)
    assert out.returncode == 0, out.stderr
    fork = work / "runs" / "tiny-fork"
    forked = rc.load(fork / "recipe.toml")
    assert forked.train.epochs == 4 and forked.optimizer.lr == 0.02
    assert Path(forked.run.parent) == parent.resolve() and forked.run.name == "tiny-fork"
    last = checkpoint.read(fork / "checkpoints" / "last.pt")["state"]
    assert last["progress"]["epoch"] == 4 and last["recipe"]["run"]["parent"] == str(parent.resolve())
    assert [e["epoch"] for e in last["history"]["epochs"]] == [0, 1, 2, 3]     # the parent's history goes on
    assert not (fork / "checkpoints" / "epoch-0001.pt").exists()              # only the fork's own epochs
    assert checkpoint.read(run / "checkpoints" / "last.pt")["digest"] == digest_before   # the parent is intact
    # inspect --json on the fork's folder shows progress, parent, best and versions
    out = cli("inspect", str(fork), "--json", cwd=work)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["progress"]["epoch"] == 4 and info["epochs_planned"] == 4
    assert info["metrics"]["epoch"] == 4 and info["metrics"]["step"] == 32    # the 4th epoch, as in metrics.csv
    assert info["parent"] == str(parent.resolve()) and info["best"]["monitor"] == "val/loss"
    assert info["torch_version"] == torch.__version__ and info["format_version"] == checkpoint.FORMAT_VERSION
    assert info["recipe"]["optimizer"]["lr"] == 0.02 and set(info["metrics"]) >= {"val/loss", "val/acc"}


def test_replay_verify_exit_codes(tiny_run, tmp_path):
    work, run = tiny_run
    ckpts = run / "checkpoints"
    out = cli("replay", str(ckpts / "epoch-0001.pt"), "--to-step", "16", "--verify", str(ckpts / "epoch-0002.pt"),
              cwd=work)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "identical" in out.stdout
    # the same replay against a perturbed copy of epoch 2: exit 1, naming the tensor that differs
    state = checkpoint.load(ckpts / "epoch-0002.pt")
    bumped = dict(state.params)
    bumped["2.bias"] = bumped["2.bias"] + torch.tensor([0.0, 1e-6, 0.0])
    checkpoint.save(state.replace(params=bumped), tmp_path / "perturbed.pt")
    out = cli("replay", str(ckpts / "epoch-0001.pt"), "--verify", str(tmp_path / "perturbed.pt"), cwd=work)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "params['2.bias']" in out.stdout and "1 elements differ" in out.stdout
    assert "Traceback" not in out.stderr
    # a run folder means its last.pt; a --to-step short of the verified file's step is said, not hidden
    out = cli("replay", str(ckpts / "epoch-0001.pt"), "--to-step", "12", "--verify", str(run), cwd=work)
    assert out.returncode == 1 and "--to-step 12 is not the step of" in out.stderr


def test_check_prints_the_resolved_recipe_and_the_composition(tmp_path):
    out = cli("check", str(TINY), "--set", "train.accumulate=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    resolved = rc.loads(out.stdout)        # the output is the resolved recipe, the rest are TOML comments
    assert resolved.train.accumulate == 2 and resolved.run.name == "tiny"
    assert "# step: compose(accumulate(every=2), clip(max_norm=10.0))(make_step(cross_entropy))" in out.stdout
    assert "checkpoint" in out.stdout and "early_stopping" in out.stdout
    assert not (tmp_path / "runs").exists()


def test_train_without_a_recipe_uses_the_built_in_default(tmp_path):
    small = ["train.epochs=1", "data.params.train=8", "data.params.val=4", "data.params.size=64", "data.batch_size=4",
             "data.workers=0", "model.params.width=16", "model.params.backbone_width=8", "schedule.warmup_steps=1",
             "loggers.tensorboard=false", "loggers.plots=false"]
    sets = [a for s in small for a in ("--set", s)]
    out = cli("train", *sets, "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "rupiah_synthetic"   # the default recipe is named by its file
    assert rc.load(run / "recipe.toml").train.epochs == 1
    assert (run / "checkpoints" / "last.pt").is_file()
    record = checkpoint.read(run / "checkpoints" / "last.pt")["state"]["history"]["epochs"][0]
    assert {"val/mAP50", "val/mAP50-95", "val/mAP50/banknote", "val/mAP50-95/security"} <= set(record)
    assert (run / "plots" / "pr_curves.png").is_file() and (run / "plots" / "val_samples.png").is_file()
    assert all((run / "plots" / f"{n}_curve.png").is_file() for n in ("f1", "p", "r"))   # where to set conf
    out = cli("train", "--out", str(run), *sets, cwd=tmp_path)    # an existing run is never overwritten
    assert out.returncode == 2 and "already holds a run" in out.stderr
