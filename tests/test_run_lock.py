"""One writer per run folder: the lock, atomic claims of default-named folders, stale locks taken over.

Also: resume refuses to rewrite history from an older checkpoint (``--out``
forks, ``--force`` overwrites), leftover temp files go when a folder is
opened, and checkpoints get the umask's mode.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smartcash_fn import checkpoint
from smartcash_fn.cli import main
from smartcash_fn.loop import fit
from smartcash_fn.run import recipe as rc
from smartcash_fn.run.build import build
from smartcash_fn.run.lock import LOCK_NAME, RunLocked, claim, hold

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"
SMALL = ["train.epochs=2", "schedule.warmup_steps=1", "data.params.samples=64", "data.params.val_samples=32",
         "loggers.tensorboard=false", "loggers.plots=false", "loggers.console=false"]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    with hold(tmp_path / "a", "train") as held:
        text = json.loads((tmp_path / "a" / LOCK_NAME).read_text())
        assert text["pid"] == os.getpid() and text["command"] == "train"
        with pytest.raises(RunLocked, match=rf"a: the run folder is being written by another process \(pid "
                                            rf"{os.getpid()} on .*, started .* \(train\)\)"):
            with hold(tmp_path / "a", "resume"):
                pass
        assert held.folder == tmp_path / "a"
    with hold(tmp_path / "a", "resume"):      # released: the next writer gets it
        pass


def test_claims_of_one_default_name_get_different_folders(tmp_path):
    with claim(tmp_path / "tiny") as a, claim(tmp_path / "tiny") as b:
        assert a.folder == tmp_path / "tiny" and b.folder == tmp_path / "tiny-2"
    (tmp_path / "tiny" / "recipe.toml").write_text("")
    with claim(tmp_path / "tiny") as c:
        assert c.folder == tmp_path / "tiny-2"


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    dead = {"pid": 999_999_999, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00", "command": "train"}
    (folder / LOCK_NAME).write_text(json.dumps(dead))
    (folder / ".metrics.csv.abc123.tmp").write_text("half a write")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / ".last.pt.xyz789.tmp").write_text("half a checkpoint")
    notes = []
    with hold(folder, "resume", note=notes.append):
        assert not (folder / ".metrics.csv.abc123.tmp").exists()     # temp files of interrupted writes are gone
        assert not (folder / "checkpoints" / ".last.pt.xyz789.tmp").exists()
    assert notes and "took over the lock left by a process that is gone (pid 999999999 on elsewhere" in notes[0]


def test_a_failed_start_leaves_no_folder_behind(tmp_path):
    with pytest.raises(ValueError):
        with claim(tmp_path / "runs" / "tiny"):
            raise ValueError("the build failed")
    assert not (tmp_path / "runs").exists()


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)])}
    return subprocess.Popen([sys.executable, "-m", "smartcash_fn", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


SLOW_DATA = """
import time

from smartcash_fn.builtin.synthetic import classification


def data(**params):
    time.sleep(4.0)    # holds the run folder a while without using a core: the runs overlap for sure
    return classification(**params)
"""


def test_concurrent_trains_one_folder_one_writer_and_default_names_never_collide(tmp_path):
    shutil.copy(TINY, tmp_path / "base.toml")
    (tmp_path / "slowdata.py").write_text(SLOW_DATA)
    (tmp_path / "r.toml").write_text('extends = "base.toml"\n[data]\nuse = "slowdata:data"\n')
    sets = [a for s in SMALL for a in ("--set", s)]
    procs = [cli("train", "r.toml", *sets, "--out", "same", "--quiet", cwd=tmp_path) for _ in range(2)]
    procs += [cli("train", "r.toml", *sets, "--quiet", cwd=tmp_path) for _ in range(2)]
    outs = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    same = sorted(outs[:2], key=lambda o: o[0])
    assert same[0][0] == 0, same[0][2]
    assert same[1][0] == 2 and same[1][2].startswith("error: same: the run folder is being written by another "
                                                     "process (pid "), same[1][2]
    assert "Traceback" not in same[1][2]
    assert [o[0] for o in outs[2:]] == [0, 0], [o[2] for o in outs[2:]]
    folders = sorted(line.split(" -> ")[1] for o in outs[2:] for line in o[2].splitlines()
                     if line.startswith("training r"))
    assert folders == ["runs/r", "runs/r-2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("hist") / "run"
    built = build(rc.load(TINY, SMALL), run, quiet=True)
    rc.write(rc.load(TINY, SMALL), run / "recipe.toml")
    fit(built.template, built.loop)
    return run


def test_resume_from_an_older_checkpoint_is_refused_unless_forked_or_forced(finished, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    old = run / "checkpoints" / "epoch-0001.pt"
    assert main(["resume", str(old), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {old}: {run / 'checkpoints'}/") and "is further on (step 4)" in err
    assert "--out DIR" in err and "--force" in err
    assert main(["resume", str(old), "--quiet", "--out", str(tmp_path / "fork")]) == 0
    assert main(["resume", str(old), "--quiet", "--force"]) == 0
    assert f"resuming tiny at epoch 2/2 (step 2) -> {run}" in capsys.readouterr().err


def test_resume_of_a_finished_run_writes_the_missing_end_writers(finished, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.md").unlink()               # killed after the final checkpoint, before the summary
    before = (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert main(["resume", str(run), "--quiet"]) == 0
    assert "wrote them" in capsys.readouterr().err
    assert "| status |" in (run / "summary.md").read_text()
    assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_checkpoints_get_the_umask_mode(finished, tmp_path):
    old = os.umask(0o022)
    try:
        path = checkpoint.save(checkpoint.load(finished / "checkpoints" / "last.pt"), tmp_path / "a.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (finished / "checkpoints" / "last.pt").stat().st_mode & 0o777 == 0o666 & ~old


def test_a_read_only_run_folder_on_resume_is_one_clear_error(finished, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    real_open = os.open

    def read_only(path, flags, *args):      # root ignores chmod: fail the way a read-only mount does
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    assert main(["resume", str(run / "checkpoints" / "epoch-0001.pt"), "--force", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {run}: cannot write in the run folder {run} (Read-only file system); choose a folder "
                   "you can write to\n")
