"""A small training run in its own process, for the kill-and-resume test.

``python tests/_train_script.py DIR`` trains a tiny MLP (dropout, gradient
accumulation, clipping, EMA, validation, early stopping, plateau) and writes
checkpoints into DIR every 2 steps and at every epoch end::

    python tests/_train_script.py runs/a --delay 0.05          # slow on purpose, to be killed mid-run
    python tests/_train_script.py runs/a --resume runs/a/last.pt --out final.pt

``--delay`` sleeps after each batch (it changes no state); ``--out`` saves
the final state. :func:`build` gives the same template and loop in-process,
so a test can run the uninterrupted reference itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import toolz

sys.path.insert(0, str(Path(__file__).resolve().parent))

import smartcash_fn as sf  # noqa: E402
from conftest import make_mlp, tiny_xy  # noqa: E402

EPOCHS = 8
EVERY_STEPS = 2


def build(directory: str | Path, delay: float = 0.0) -> tuple[sf.TrainState, sf.Loop]:
    """The template state and the loop of this run, writing checkpoints into ``directory``."""
    x, y = tiny_xy(48)
    xv, yv = tiny_xy(24, seed=9)
    step = toolz.compose(sf.accumulate(3), sf.clip(1.0), sf.ema(0.9))(sf.make_step(sf.classification_loss))
    callbacks = [
        sf.early_stopping(sf.Monitor("val/loss"), patience=4),
        sf.reduce_on_plateau("val/loss", factor=0.5, patience=1),
        sf.record_steps(5),
        sf.checkpointing(directory, every_epochs=1, every_steps=EVERY_STEPS, monitor="val/loss"),
    ]
    if delay:
        callbacks.append(sf.Callback("batch_end", lambda s: (time.sleep(delay), s)[1], name="slow_down"))
    loop = sf.Loop(step=step, data=sf.TensorData((x, y), 8), epochs=EPOCHS,
                   validation=sf.Validation(sf.TensorData((xv, yv), 12)), callbacks=callbacks)
    template = sf.TrainState.create(partial(make_mlp, dropout=0.2), sf.adamw(0.02, weight_decay=0.01), seed=11)
    return template, loop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--resume", default=None, help="a checkpoint to continue from")
    ap.add_argument("--out", default=None, help="where to save the final state")
    args = ap.parse_args(argv)
    template, loop = build(args.directory, args.delay)
    state = template if args.resume is None else sf.load(args.resume, like=template)
    print(f"start at {state.progress}", flush=True)
    final = sf.fit(state, loop)
    if args.out:
        sf.save(final, args.out)
    print(f"done at {final.progress}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
