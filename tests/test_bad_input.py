"""Every bad input is one ``error:`` line naming the file and key (or the path) and exit 2, never a traceback.

Each case is a real ``python -m smartcash_fn`` subprocess, ``check`` where
that is enough; a writer that cannot write (a full disk) no longer keeps the
checkpoint from being written.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smartcash_fn import checkpoint
from smartcash_fn.callbacks import checkpointing
from smartcash_fn.errors import OutputError
from smartcash_fn.events import writer
from smartcash_fn.loop import fit
from smartcash_fn.run import recipe as rc
from smartcash_fn.run.build import build

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"
SMALL = ["train.epochs=2", "schedule.warmup_steps=1", "data.params.samples=64", "data.params.val_samples=32",
         "loggers.tensorboard=false", "loggers.plots=false", "loggers.console=false"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "smartcash_fn", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def with_state(src: Path, dst: Path, **changes) -> Path:
    """A copy of checkpoint ``src`` with state keys replaced and the digest recomputed (digest-valid, malformed)."""
    obj = torch.load(src, weights_only=True)
    obj["state"].update(changes)
    obj["digest"] = checkpoint.digest({k: v for k, v in obj.items() if k != "digest"})
    torch.save(obj, dst)
    return dst


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("bad") / "run"
    built = build(rc.load(TINY, SMALL), run, quiet=True)
    fit(built.template, built.loop)
    return run / "checkpoints" / "epoch-0001.pt"


BIG = 2**63
CASES = {
    "out_in_proc": (["check", "r.toml", "--set", 'run.out="/proc/x"'], "run.out: /proc/x/r is inside /proc"),
    "out_a_file": (["check", "r.toml", "--set", 'run.out="afile"'], "is a file, so afile/r cannot be made"),
    "out_flag_in_proc": (["train", "r.toml", "--out", "/proc/x", "--quiet"], "error: --out /proc/x: /proc/x is "
                                                                              "inside /proc"),
    "epochs_2_63": (["check", "r.toml", "--set", f"train.epochs={BIG}"], "train.epochs: expected an integer, got "
                                                                         f"{BIG}, which does not fit in 64 bits"),
    "seed_2_63": (["check", "seed.toml"], f"error: seed.toml: run.seed: expected an integer, got {BIG}"),
    "samples_1e15": (["check", "r.toml", "--set", "data.params.samples=1e15"], "r.toml: data.use: "),
    "samples_10_15": (["check", "r.toml", "--set", "data.params.samples=1000000000000000"],
                      "r.toml: data.use: classification: its parameters ask for more memory"),
    "hidden_1e14": (["check", "r.toml", "--set", "model.params.hidden=[100000000000000]"],
                    "r.toml: model.use: mlp: its parameters ask for more memory"),
    "deep_toml": (["check", "deep.toml"], "error: deep.toml: invalid TOML: arrays or tables nested too deep"),
    "lr_1e308": (["check", "r.toml", "--set", "optimizer.lr=1e308"], "optimizer.lr: expected a learning rate in "
                                                                     "[0, 1000], got 1e+308"),
    "progress_malformed": (["inspect", "CKPT_NO_STEP"], "the checkpoint's state is malformed (progress: expected "
                                                        "{epoch, step, batch}"),
    "progress_negative": (["resume", "CKPT_NEGATIVE", "--quiet"], "progress.step: expected an integer >= 0, got -7"),
    "progress_past_epoch": (["resume", "CKPT_PAST", "--quiet"], "progress.batch is 99, but an epoch of this recipe "
                                                                "has 2 batches"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line(tmp_path, ckpt, case):
    argv, expected = CASES[case]
    shutil.copy(TINY, tmp_path / "r.toml")
    (tmp_path / "afile").write_text("")
    (tmp_path / "seed.toml").write_text(f'extends = "r.toml"\n[run]\nseed = {BIG}\n')
    (tmp_path / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    bad = {"CKPT_NO_STEP": {"progress": {"epoch": 1, "batch": 0}},
           "CKPT_NEGATIVE": {"progress": {"epoch": 1, "step": -7, "batch": 99}},
           "CKPT_PAST": {"progress": {"epoch": 1, "step": 200, "batch": 99}}}
    for i, a in enumerate(argv):
        if a in bad:
            folder = tmp_path / "run" / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            argv = [*argv[:i], str(with_state(ckpt, folder / "last.pt", **bad[a])), *argv[i + 1:]]
    out = cli(*argv, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("error: ") and expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "runs").exists()


def test_a_writer_that_cannot_write_does_not_keep_the_checkpoint_from_being_written(tmp_path):
    built = build(rc.load(TINY, SMALL + ["train.epochs=1"]), None, quiet=True)

    def full_disk(state):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "plots" / "curves.png"))

    ckpts = tmp_path / "checkpoints"
    loop = built.loop.add(writer("epoch_end", full_disk, priority=100, name="plots"), checkpointing(ckpts))
    with pytest.raises(OutputError) as e:
        fit(built.template, loop)
    assert str(e.value).startswith(f"{tmp_path / 'plots' / 'curves.png'}: the 'plots' writer could not write at "
                                   "epoch_end (epoch 1, step 2): No space left on device")
    assert checkpoint.read(ckpts / "epoch-0001.pt")["state"]["progress"]["epoch"] == 1
