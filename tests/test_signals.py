"""SIGTERM and SIGINT stop a run at the next batch boundary with a checkpoint there, and resume is bit-exact.

A real ``train`` subprocess is signalled mid-epoch: it exits 143 (130), its
``last.pt`` holds the state at the stop, ``summary.md`` says why, and
``resume`` reaches the very bits of a run that never stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smartcash_fn import checkpoint
from smartcash_fn.cli import main
from smartcash_fn.loop import fit
from smartcash_fn.replay import verify
from smartcash_fn.run import recipe as rc
from smartcash_fn.run.build import build

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"
LONG = ["train.epochs=2", "data.params.samples=2400", "data.batch_size=8", "schedule.warmup_steps=1",
        "loggers.tensorboard=false", "loggers.plots=false", "loggers.console=false"]


def started(args: list[str], cwd: Path) -> subprocess.Popen:
    """``python -m smartcash_fn ARGS``, returned once it has started training."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "smartcash_fn", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stderr.readline()
    assert line.startswith("training "), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, id="SIGTERM"),
                                 pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.slow)])
def test_a_signal_stops_at_a_batch_boundary_with_a_checkpoint_and_resume_is_bit_exact(tmp_path, monkeypatch,
                                                                                      capsys, sig):
    shutil.copy(TINY, tmp_path / "r.toml")
    sets = [a for s in LONG for a in ("--set", s)]
    proc = started(["train", "r.toml", *sets, "--out", "run", "--quiet"], tmp_path)
    time.sleep(0.7)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (out, err)
    assert "Traceback" not in err and f"{sig.name}: stopping after this batch" in err
    assert "go on with: smartcash-fn resume run" in err and out == ""
    run = tmp_path / "run"
    stopped = checkpoint.read(run / "checkpoints" / "last.pt")["state"]
    p = stopped["progress"]
    assert 0 < p["step"] < 600 and stopped["stop"] == {"reason": f"interrupted by {sig.name}", "failed": False}
    assert f"interrupted by {sig.name}" in (run / "summary.md").read_text()
    monkeypatch.chdir(tmp_path)
    assert main(["resume", "run", "--quiet"]) == 0
    assert f"the run was interrupted by {sig.name}; going on" in capsys.readouterr().err
    recipe = rc.load(run / "recipe.toml")
    built = build(recipe, tmp_path / "straight", quiet=True)
    fit(built.template, built.loop)
    straight = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")   # the last trained state
    resumed = checkpoint.load(run / "checkpoints" / "last.pt")
    assert resumed.progress.step == straight.progress.step == 600
    assert verify(resumed, straight) is None
    assert "| stop reason |" not in (run / "summary.md").read_text() or "interrupted" not in \
        (run / "summary.md").read_text()
