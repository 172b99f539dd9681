"""The ``smartcash-fn`` command line: the one top floor, composing the generic commands and SmartCash's.

The generic commands (train, resume, replay, check, inspect) live in
:mod:`smartcash_fn.run.commands`, the application's (eval, predict, data
export-synthetic) in :mod:`smartcash_fn.smartcash.commands`. Each returns the
exit status: 0 done, 1 a run that failed or a replay that differs, 2 bad input
(a recipe, a ``--set``, a checkpoint) with one ``error:`` message and no
traceback::

    smartcash-fn train recipes/tiny.toml --set train.epochs=5
    smartcash-fn resume runs/tiny                     # its newest intact checkpoint
    smartcash-fn replay runs/tiny/checkpoints/epoch-0001.pt --verify runs/tiny/checkpoints/epoch-0002.pt
    smartcash-fn eval runs/rupiah_synthetic --scenario low_light      # its best.pt; writes eval-val-low_light.json
    smartcash-fn predict runs/rupiah_synthetic photos/ --out predictions
    smartcash-fn data export-synthetic --out data/rupiah --n 1000 --size 256

``main(argv)`` is the whole program (``python -m smartcash_fn`` runs it too).

Streams: stdout carries a command's result (``check``'s recipe, ``inspect``
and its ``--json``, ``replay``'s verdict, ``eval``'s table); stderr carries
everything said along the way, through the ``smartcash_fn`` logger: a run's
facts, its progress and epoch table, notes, warnings, and ``error:`` lines.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from ._version import __version__
from .errors import UserError


EXPORT_FORMATS = ("weights", "torchscript", "onnx")
"""``export --format`` choices; the same as :data:`smartcash_fn.run.export.FORMATS` (a test checks)."""


def command(wing: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The command ``name`` of a wing's commands module, imported when it runs: ``command("run", "train")``.

    The parser itself imports no torch, so ``--help`` and ``--version`` answer at once.
    """
    if wing == "run":
        from .run import commands
    else:
        from .smartcash import commands
    return getattr(commands, name)


def _add_sets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, the value read as TOML (repeatable): --set train.epochs=5")


EXAMPLES: dict[str, tuple[str, ...]] = {
    "train": ("smartcash-fn train tiny                      # a built-in recipe by name: seconds",
              "smartcash-fn train                           # the default detector, at most 10 minutes",
              "smartcash-fn train rupiah_yolo --set data.params.data_yaml=data/mine/data.yaml   # the detector on your YOLO data",
              "smartcash-fn train my.toml --set train.epochs=5 --out runs/mine"),
    "resume": ("smartcash-fn resume runs/tiny                 # its newest intact checkpoint",
               "smartcash-fn resume runs/tiny/checkpoints/epoch-0002.pt --set optimizer.lr=0.003   # a fork"),
    "replay": ("smartcash-fn replay runs/tiny/checkpoints/epoch-0001.pt --verify runs/tiny/checkpoints/epoch-0002.pt",
               "smartcash-fn replay runs/tiny/checkpoints/epoch-0001.pt --to-step 40"),
    "check": ("smartcash-fn check                            # the default recipe",
              "smartcash-fn check my.toml --set train.accumulate=2"),
    "recipe": ("smartcash-fn recipe list", "smartcash-fn recipe copy tiny my.toml", "smartcash-fn recipe reference"),
    "list": ("smartcash-fn recipe list",),
    "show": ("smartcash-fn recipe show rupiah_synthetic",),
    "copy": ("smartcash-fn recipe copy tiny my.toml", "smartcash-fn recipe copy tiny recipes/ --force"),
    "reference": ("smartcash-fn recipe reference > reference.md",),
    "inspect": ("smartcash-fn inspect runs/tiny", "smartcash-fn inspect runs/tiny/checkpoints/last.pt --json"),
    "export": ("smartcash-fn export runs/rupiah_synthetic                   # TorchScript in runs/.../export",
               "smartcash-fn export runs/rupiah_synthetic --format onnx --half"),
    "eval": ("smartcash-fn eval runs/rupiah_synthetic --scenario low_light",
             "smartcash-fn eval runs/rupiah_synthetic --data datasets/rupiah/data.yaml --split test"),
    "predict": ("smartcash-fn predict runs/rupiah_synthetic photos/ one.jpg --out predictions --conf 0.25",),
    "data": ("smartcash-fn data export-synthetic --out data/rupiah --n 1000 --size 256",),
    "export-synthetic": ("smartcash-fn data export-synthetic --out data/rupiah --n 1000 --size 256 --workers 2",),
}
"""A few example command lines per subcommand, shown under its ``--help``."""


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand (nested too) its one-line help as description and its examples as epilog."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help for a in action._choices_actions}
        for name, sub in action.choices.items():
            sub.description = sub.description or (helps.get(name) or "").capitalize() + "."
            examples = EXAMPLES.get(name, ())
            if examples:
                sub.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
                sub.formatter_class = argparse.RawDescriptionHelpFormatter
            _describe(sub)


PROGRESS = ("auto", "bar", "lines", "none")
"""``--progress`` choices; the same as :data:`smartcash_fn.report.console.PROGRESS` (a test checks)."""


def _add_console(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", choices=PROGRESS, default=None,
                   help="progress inside an epoch: auto (a bar on a terminal, else a line every 10%% or 30 s), "
                        "bar, lines or none (default: the recipe's loggers.progress, auto)")
    p.add_argument("--quiet", action="store_true", help="no progress and no epoch table: the run's start and end, "
                   "notes, warnings and errors only")


def _add_trust(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", action="store_true",
                   help="allow the checkpoint's recipe to name components that are not built in (import paths "
                        "'package.module:attr', which are imported and called): only for checkpoints you trust")


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``smartcash-fn`` (train, resume, replay, check, inspect, eval, predict, data)."""
    top = argparse.ArgumentParser(prog="smartcash-fn", description="Train, resume, replay, check and inspect "
                                  "smartcash_fn runs made from TOML recipes; evaluate and run trained detectors.")
    top.add_argument("--version", action="version", version=f"smartcash_fn {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a recipe in a new run folder")
    p.add_argument("recipe", nargs="?", help="a recipe file, or a built-in recipe's name (smartcash-fn recipe "
                   "list); default: rupiah_synthetic, the SmartCash detector (about 10 minutes on 2 CPU cores)")
    _add_sets(p)
    p.add_argument("--out", metavar="DIR", help="the run folder (default: <run.out>/<run.name>, made unique)")
    _add_console(p)
    p.set_defaults(command=("run", "train"))

    p = sub.add_parser("resume", help="continue a run from a checkpoint or a run folder (with --set: a fork)")
    p.add_argument("target", metavar="CKPT_OR_RUN_DIR",
                   help="a checkpoint, or a run folder (its newest intact checkpoint)")
    _add_sets(p)
    p.add_argument("--out", metavar="DIR", help="fork into this folder (default with --set: <run>-fork)")
    p.add_argument("--force", action="store_true", help="go on from a checkpoint older than the newest in its "
                   "folder, overwriting the newer ones (without it such a resume is refused: fork with --out)")
    _add_console(p)
    _add_trust(p)
    p.set_defaults(command=("run", "resume"))

    p = sub.add_parser("replay", help="recompute a later state from a checkpoint, writing nothing")
    p.add_argument("checkpoint", metavar="CKPT", help="the checkpoint to replay from (a file, or a run folder: its last.pt)")
    p.add_argument("--to-step", type=int, metavar="N", help="the global step to replay to")
    p.add_argument("--verify", metavar="OTHER_CKPT",
                   help="compare with this checkpoint: exit 0 when bit-identical, 1 with the first difference")
    _add_trust(p)
    p.set_defaults(command=("run", "replay"))

    p = sub.add_parser("check", help="validate a recipe and show what it builds")
    p.add_argument("recipe", nargs="?", help="a recipe file or a built-in recipe's name (default: the default)")
    _add_sets(p)
    p.add_argument("--trial", action="store_true",
                   help="also build a recipe that names your own code (import paths) and run a trial step on its "
                        "first batch; without it such code is imported and found, never called (a recipe of "
                        "built-ins always gets the trial step)")
    p.set_defaults(command=("run", "check"))

    p = sub.add_parser("recipe", help="the built-in recipes: list, show, copy; the reference of every key")
    rec = p.add_subparsers(dest="recipe_command", required=True, metavar="RECIPE_COMMAND")
    q = rec.add_parser("list", help="the built-in recipes and what each is")
    q.set_defaults(command=("run", "recipe_list"))
    q = rec.add_parser("show", help="print a built-in recipe")
    q.add_argument("name", metavar="NAME", help="a built-in recipe (smartcash-fn recipe list)")
    q.set_defaults(command=("run", "recipe_show"))
    q = rec.add_parser("copy", help="copy a built-in recipe to a file of your own")
    q.add_argument("name", metavar="NAME", help="a built-in recipe (smartcash-fn recipe list)")
    q.add_argument("dest", metavar="DEST", help="the new file (or a folder to put NAME.toml in)")
    q.add_argument("--force", action="store_true", help="replace DEST when it exists")
    q.set_defaults(command=("run", "recipe_copy"))
    q = rec.add_parser("reference", help="every recipe key: type, default, meaning (Markdown)")
    q.set_defaults(command=("run", "recipe_reference"))

    p = sub.add_parser("inspect", help="show what a checkpoint (or a run folder's newest) holds")
    p.add_argument("checkpoint", metavar="CKPT_OR_RUN_DIR", help="a checkpoint, or a run folder (its newest intact one)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_trust(p)
    p.set_defaults(command=("run", "inspect"))

    p = sub.add_parser("export", help="write a checkpoint's model for deployment: weights, TorchScript or ONNX")
    p.add_argument("checkpoint", metavar="CKPT_OR_RUN_DIR", help="a checkpoint, or a run folder (its best.pt)")
    p.add_argument("--format", default="torchscript", choices=EXPORT_FORMATS,
                   help="weights (a state_dict), torchscript (traced) or onnx (needs the [onnx] extra); "
                        "default torchscript")
    p.add_argument("--out", metavar="DIR", help="the folder for model.<format> and its JSON (default: <run>/export)")
    p.add_argument("--half", action="store_true", help="float16 weights")
    _add_trust(p)
    p.set_defaults(command=("run", "export_model"))

    p = sub.add_parser("eval", help="evaluate a detector checkpoint: P, R, F1, mAP per class, layer and scenario")
    p.add_argument("checkpoint", metavar="CKPT_OR_RUN_DIR", help="a checkpoint, or a run folder (its best.pt)")
    p.add_argument("--data", metavar="DATA_YAML", help="a YOLO-format data.yaml (default: the recipe's data)")
    p.add_argument("--split", default="val", choices=("val", "test", "train"), help="the split (default: val)")
    p.add_argument("--scenario", metavar="NAME", help="synthetic data: render the split in this scenario only "
                   "(position, lighting, low_light, small, occlusion, mixed)")
    p.add_argument("--n", type=int, metavar="N", help="synthetic data: scenes to evaluate (default: the recipe's val)")
    p.add_argument("--json", metavar="PATH", help="where to write the JSON (default: <run>/eval-<split>[-<scenario>].json)")
    p.add_argument("--batch-size", type=int, metavar="B", help="images per batch (default: the recipe's)")
    p.add_argument("--conf", type=float, default=0.001, help="decoding score threshold for mAP (default 0.001)")
    p.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    p.add_argument("--pr-conf", type=float, default=0.25, help="score threshold of P, R, F1 and the confusion matrix")
    _add_trust(p)
    p.set_defaults(command=("smartcash", "evaluate"))

    p = sub.add_parser("predict", help="detect banknotes on images: draw the boxes and write detections.json")
    p.add_argument("checkpoint", metavar="CKPT_OR_RUN_DIR", help="a checkpoint, or a run folder (its best.pt)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="images, or folders of images")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the drawn images and detections.json")
    p.add_argument("--overwrite", action="store_true", help="write into --out although it holds files")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    _add_trust(p)
    p.set_defaults(command=("smartcash", "predict"))

    p = sub.add_parser("data", help="datasets: export the synthetic scenes as a YOLO-format dataset")
    data = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    q = data.add_parser("export-synthetic", help="write synthetic Rupiah scenes as images/, labels/, data.yaml")
    q.add_argument("--out", required=True, metavar="DIR", help="the dataset folder (new, or a previous export with "
                   "--overwrite)")
    q.add_argument("--n", type=int, required=True, metavar="N", help="scenes in all, split 70/15/15")
    q.add_argument("--size", type=int, default=640, help="image side in pixels (default 640)")
    q.add_argument("--seed", type=int, default=0, help="seed of the scenes (default 0)")
    q.add_argument("--scenario", default="mixed", help="scenario preset (default mixed: one of the five per scene)")
    q.add_argument("--format", default="jpg", choices=("jpg", "png"), help="image files (default jpg, quality 95)")
    q.add_argument("--workers", type=int, default=0, help="render in this many processes (same files)")
    q.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    q.add_argument("--quiet", action="store_true", help="no progress lines")
    q.set_defaults(command=("smartcash", "export"))
    _describe(top)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``smartcash-fn`` with ``argv`` (default: the process's arguments); return the exit status.

    ``main(["check", "recipes/tiny.toml"]) == 0``; bad input prints ``error: ...`` and returns 2.
    """
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (argparse exits 2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        run = command(*args.command)
        from .report.console import console_logging

        with console_logging():
            return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # outside training (where a signal stops at a batch boundary)
        print("interrupted; the checkpoints written so far are intact", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (`... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
