"""Faults: kill training at random moments, resume it, and count what survived bit for bit.

Each trial trains a scaled tiny recipe (``recipes/tiny.toml``, more samples,
small batches, a checkpoint every few steps) with ``smartcash-fn train`` as a
subprocess, sends it SIGKILL or SIGTERM (chosen at random) after a random
delay, then runs ``smartcash-fn resume`` until the run is complete — killing
a resume too, now and then. The finished run's ``last.pt`` is compared with
the ``last.pt`` of the same recipe trained without interruption
(:func:`smartcash_fn.replay.verify`), and every checkpoint left in the folder
is read back (digest and structure) to count corrupt files; temp files left
behind are counted too. A run killed before its first checkpoint has
nothing to resume and is trained again from scratch (a "restart")::

    .venv/bin/python benchmarks/faults.py --trials 8 --seed 0
    .venv/bin/python benchmarks/faults.py --trials 2 --json faults.json

The exit status is 1 when any trial ends different from the uninterrupted
run or leaves a corrupt checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smartcash_fn import checkpoint  # noqa: E402
from smartcash_fn.errors import CheckpointError  # noqa: E402
from smartcash_fn.replay import verify  # noqa: E402

SCALED = ["train.epochs=2", "data.params.samples=2400", "data.batch_size=8", "schedule.warmup_steps=4",
          "checkpoint.every_steps=40", "loggers.tensorboard=false", "loggers.plots=false", "loggers.console=false"]


def command(*args: str) -> list[str]:
    sets = [a for s in SCALED for a in ("--set", s)]
    return [sys.executable, "-m", "smartcash_fn", *args, *(sets if args[0] == "train" else ()), "--quiet"]


def run(args: list[str], cwd: Path, kill: tuple[int, float] | None) -> int:
    """Run ``args``; with ``kill = (signal, delay)`` send the signal after ``delay`` s of training. Exit status."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if kill is not None:
        line = proc.stdout.readline()        # "training ..." / "resuming ...": training starts now
        if line.startswith(("training", "resuming")):
            time.sleep(kill[1])
            if proc.poll() is None:
                proc.send_signal(kill[0])
    proc.communicate()
    return proc.returncode


def complete(folder: Path) -> bool:
    try:
        st = checkpoint.read(folder / "checkpoints" / "last.pt")["state"]
    except CheckpointError:
        return False
    return st["stop"] is None and st["progress"]["epoch"] >= 2


def trial(work: Path, rng: random.Random, reference, max_kills: int) -> dict:
    folder = work / "run"
    kills = resumes = restarts = 0
    sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
    run(command("train", "r.toml", "--out", "run"), work, (sig, rng.uniform(0.0, 3.0)))
    kills += 1
    while not complete(folder):
        if not any((folder / "checkpoints").glob("*.pt")):
            shutil.rmtree(folder)
            restarts += 1
            run(command("train", "r.toml", "--out", "run"), work, None)
            continue
        again = kills < max_kills and rng.random() < 0.3
        kill = (rng.choice([signal.SIGKILL, signal.SIGTERM]), rng.uniform(0.0, 2.0)) if again else None
        kills += bool(again)
        resumes += 1
        status = run(command("resume", "run"), work, kill)
        if status not in (0, 130, 143, -9, -15, 137) or resumes > 20:
            break
    corrupt = 0
    for p in (folder / "checkpoints").glob("*.pt"):
        try:
            checkpoint.read(p)
        except CheckpointError:
            corrupt += 1
    temps = sum(1 for _ in folder.rglob(".*.tmp"))
    same = complete(folder) and verify(checkpoint.load(folder / "checkpoints" / "last.pt"), reference) is None
    return {"first_signal": signal.Signals(sig).name, "kills": kills, "resumes": resumes, "restarts": restarts,
            "identical": bool(same), "corrupt": corrupt, "temp_files": temps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-kills", type=int, default=3, help="kills per trial at most (the first always happens)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.trials < 1:
        print("error: --trials must be >= 1", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        shutil.copy(ROOT / "recipes" / "tiny.toml", base / "r.toml")
        start = time.perf_counter()
        assert run(command("train", "r.toml", "--out", "reference"), base, None) == 0
        reference = checkpoint.load(base / "reference" / "checkpoints" / "last.pt")
        results = []
        for i in range(args.trials):
            work = base / f"t{i}"
            work.mkdir()
            shutil.copy(base / "r.toml", work / "r.toml")
            r = trial(work, rng, reference, args.max_kills)
            results.append(r)
            print(f"trial {i + 1}: {json.dumps(r)}", flush=True)
        total = {k: sum(r[k] for r in results) for k in ("kills", "resumes", "restarts", "corrupt", "temp_files")}
        total["identical"] = sum(r["identical"] for r in results)
        total["trials"] = len(results)
        total["seconds"] = round(time.perf_counter() - start, 1)
    print(f"trials {total['trials']}  kills {total['kills']}  resumes {total['resumes']}  restarts "
          f"{total['restarts']}  bit-identical {total['identical']}/{total['trials']}  corrupt files "
          f"{total['corrupt']}  temp files left {total['temp_files']}  ({total['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"total": total, "trials": results}, indent=2) + "\n")
    return 0 if total["identical"] == total["trials"] and total["corrupt"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
