"""The generic commands of ``smartcash-fn``: train, resume, replay, check and inspect runs made from recipes.

Each command is a function of its parsed arguments returning the exit status
(0 done, 1 a failed run or a replay that differs); bad input raises a
:class:`~smartcash_fn.errors.UserError`, which the top floor (``cli.py``)
prints as one ``error:`` line with exit 2::

    train(argparse.Namespace(recipe="recipes/tiny.toml", sets=[], out=None, quiet=True))
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs

from .. import checkpoint, distributed
from .._files import write_text_atomic
from .._version import __version__
from ..errors import CheckpointError, RecipeError
from ..events import by_event, fire, writer
from ..loop import fit
from ..replay import replay as replay_state, verify
from ..state import RunInfo
from ..report.console import log
from ..report.values import fmt_exact, one_based, plain, plural
from ..tree import tree_map
from . import library
from .build import build, describe, global_batch, per_rank_batch, probe
from .export import export
from .folders import Found, find_checkpoint, folder_problem, holds_run, run_folder_of
from .footprint import footprint
from .interrupt import exit_status, interrupted, on_signals, resumable, stop_on
from .lock import claim, hold
from .recipe import dumps, load, parse_set, reference, to_dict, to_toml, write
from .registry import import_path
from .resume import environment_notes, recipe_of, require_fit, require_progress, state_in
from .trust import untrusted

DEFAULT_RECIPE = library.path_of(library.DEFAULT)
"""The recipe ``smartcash-fn train`` uses when none is given (shipped inside the package)."""


def note(text: str) -> None:
    """Log ``note: text`` (on stderr from the command line): something the user should know that is not an error."""
    if distributed.speaks():
        log(logging.INFO, [(f"note: {text}", None)])


def tell(text: str, mark: str | None = None) -> None:
    """Log a fact of a run (on stderr from the command line, beside the console's); rank 0's only under ``torchrun``.

    ``train`` and ``resume`` say what the console cannot know (the checkpoint
    gone on from, the model's size, where the summary is), each fact once.
    """
    if distributed.speaks():
        log(logging.INFO, [(text, None)], mark)


def say(text: str) -> None:
    """Print ``text`` on stdout, flushed: a command's result (rank 0's only under ``torchrun``).

    ``check``'s recipe, ``replay``'s verdict, ``inspect``'s (JSON) report, ``eval``'s table.
    """
    if distributed.speaks():
        print(text, flush=True)


def metrics_line(record: dict[str, Any]) -> str:
    return "  ".join(f"{k} {fmt_exact(v)}" for k, v in record.items() if k not in ("epoch", "step"))


def finish(state: Any, run_dir: Path) -> int:
    """Where the run's summary is (the console has said how it ended); the exit status: 1 for a failed run."""
    summary = run_dir / "summary.md"
    if summary.is_file():
        tell(f"summary: {summary}")
    return 1 if state.stop is not None and state.stop.failed else 0


def _header(action: str) -> str:
    return f"Resolved recipe of this run ({action}), written by smartcash_fn {__version__}.\n" \
           "Train it again with: smartcash-fn train <this file>"


def _restarted_here(run_dir: Path, recipe: Any) -> bool:
    """Whether ``torchrun --max-restarts`` restarted this group on ``run_dir``, a run of this very recipe."""
    if distributed.restart_count() == 0 or not (run_dir / "recipe.toml").is_file():
        return False
    try:
        return to_dict(load(run_dir / "recipe.toml")) == to_dict(recipe)
    except RecipeError:
        return False


def train(args: argparse.Namespace) -> int:
    """``train [RECIPE] [--set K=V]... [--out DIR]``: a new run in a new folder, locked while it trains.

    Under ``torchrun --max-restarts`` with ``--out``, a restarted group finds
    its own run in the folder and goes on from the newest intact checkpoint.
    Rank 0 holds the folder's lock and writes; the other ranks train in it.
    """
    recipe = load(library.resolve(args.recipe), args.sets)
    world = distributed.init_from_env(recipe.run.backend or None, recipe.run.device)
    if args.out:
        run_dir = Path(args.out)
        restarted = holds_run(run_dir) and _restarted_here(run_dir, recipe)
        if restarted and any((run_dir / "checkpoints").glob("*.pt")):
            distributed.broadcast_object(None)  # every rank has looked before rank 0 writes
            note(f"restart {distributed.restart_count()} of the group: resuming {run_dir} from its newest "
                 "intact checkpoint")
            return resume(argparse.Namespace(target=str(run_dir), sets=[], out=None, quiet=args.quiet, force=False,
                                             trust_code=True, progress=getattr(args, "progress", None)))
        folder = hold(run_dir, "train", f"--out {args.out}", must_be_new=not restarted)
    else:
        folder = claim(Path(recipe.run.out) / recipe.run.name, "train", recipe.where("run", "out"))
    with (folder if world.main else contextlib.nullcontext(None)) as held:
        run_dir = Path(distributed.broadcast_object(None if held is None else str(held.folder)))  # rank 0's
        built = build(recipe, run_dir, quiet=args.quiet, progress=getattr(args, "progress", None))
        probe(built)
        for n in built.notes:
            note(n)
        if world.main:
            write(recipe, run_dir / "recipe.toml", header=_header("train"))
        return train_on(built.template, built, run_dir, f"smartcash-fn resume {run_dir}")


def newer_than(found: Found) -> tuple[Path, int] | None:
    """The newest checkpoint in ``found``'s folder that is further on than ``found`` (its path and step), or None.

    Only files written after ``found`` are read; an unreadable one is no history to keep.
    """
    path = found.path
    step = found.obj["state"]["progress"]["step"]
    mine = path.stat()
    best: tuple[Path, int] | None = None
    for other in path.parent.glob("*.pt"):
        st = other.stat()
        if other.name == "final.pt" or (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino) \
                or st.st_mtime_ns < mine.st_mtime_ns:
            continue
        try:
            theirs = checkpoint.read(other)["state"]["progress"]["step"]
        except (CheckpointError, KeyError, TypeError):
            continue
        if isinstance(theirs, int) and theirs > step and (best is None or theirs > best[1]):
            best = (other, theirs)
    return best


def train_on(state: Any, built: Any, run_dir: Path, resume_hint: str) -> int:
    """``fit`` with SIGINT/SIGTERM stopping at a batch boundary; the exit status (130/143 when interrupted).

    A new run's model footprint is said after the console's start line (counting FLOPs takes a moment).
    """
    def model_line(s: Any) -> Any:
        tell(f"model: {footprint(built).text()}")
        return s

    said = (writer("training_start", model_line, priority=-999, name="footprint"),) if state.progress.step == 0 else ()
    with on_signals() as caught:  # under torchrun every rank stops in the same step (one small all-reduce a batch)
        agreed = distributed.agree_on_stop(every_batch=True)[:1] if distributed.active() else ()
        loop = built.loop.add(stop_on(caught), *agreed, *said)
        with distributed.failures_named():
            state = fit(state, loop)
    status = finish(state, run_dir)
    if caught.signum is not None and interrupted(state):
        tell(f"interrupted: a checkpoint of step {state.progress.step} is in {run_dir / 'checkpoints'}; go on with: "
             f"{resume_hint}")
        return exit_status(caught.signum)
    return status


def end_writers(state: Any, built: Any) -> None:
    """Run the ``training_end`` writers (not the checkpoint writer, nor the console) on a finished ``state``: the
    summary etc."""
    ends = [c for c in built.loop.callbacks if c.event == "training_end" and c.writes and c.name != "checkpoint"
            and c.name not in built.console]
    p = built.loop
    v = p.validation
    state = state.replace(run=RunInfo(epochs=p.epochs, batches=len(p.data), val_batches=0 if v is None else len(v.data),
                                      batch_size=int(getattr(p.data, "batch_size", 0) or 0)))
    fire(state, "training_end", by_event(ends))


def resume(args: argparse.Namespace) -> int:
    """``resume CKPT_OR_RUN_DIR [--set K=V]... [--out DIR] [--force]``: go on from a checkpoint; with changes, as a fork.

    The run folder is locked while it trains. A checkpoint older than the
    newest in its folder is refused (going on from it would rewrite the
    history after it) unless forked (``--out``) or ``--force``d. A run stopped
    by a signal goes on; a finished run whose end writers never ran gets them.
    """
    found = find_checkpoint(args.target)
    for s in found.skipped:
        note(f"skipped {s}")
    ckpt = found.path
    recipe = recipe_of(found, args.sets, trust_code=getattr(args, "trust_code", False))
    world = distributed.init_from_env(recipe.run.backend or None, recipe.run.device)
    old_dir = run_folder_of(ckpt)
    fork = bool(args.sets or args.out)
    if fork:
        renamed = any(parse_set(s)[0] == ("run", "name") for s in args.sets)
        if args.out:
            folder = hold(Path(args.out), "resume", f"--out {args.out}", must_be_new=True)
        elif renamed:
            folder = claim(old_dir.parent / recipe.run.name, "resume")
        else:
            folder = claim(old_dir.parent / f"{old_dir.name}-fork", "resume")
    else:
        folder = hold(old_dir, "resume", str(old_dir))
    with (folder if world.main else contextlib.nullcontext(None)) as held:
        run_dir = Path(distributed.broadcast_object(None if held is None else str(held.folder)))  # rank 0's
        if fork:
            recipe = attrs.evolve(recipe, run=attrs.evolve(recipe.run, name=run_dir.name, parent=str(ckpt.resolve())))
        elif not getattr(args, "force", False):
            newer = newer_than(found)
            if newer is not None:
                raise CheckpointError(
                    f"{ckpt}: {newer[0]} is further on (step {newer[1]}); going on from the older checkpoint here "
                    f"would rewrite the run's history after it. Fork it into a new folder with --out DIR, or "
                    f"pass --force to overwrite the newer checkpoints")
        built = build(recipe, run_dir, quiet=args.quiet, progress=getattr(args, "progress", None))
        state = state_in(found, built.template)
        regrouped, _ = distributed.regrouped(state, global_batch(recipe, world.size), world.size,
                                             per_rank_batch(recipe, 1) if state.progress.step else None)
        require_progress(regrouped, len(built.loop.data), str(ckpt))  # at this world's batches (replicas regroups)
        for n in environment_notes(found, built.template):
            note(n)
        if fork:
            require_fit(built.template, state, f"--set {' '.join(args.sets) or '(none)'}",
                        "the forked recipe changes the optimizer's state (change lr, schedule, epochs, callbacks, ... "
                        "instead)")
            callbacks = {k: v for k, v in state.callbacks.items() if k != "checkpoint"}  # its files are the parent's
            state = state.replace(recipe=to_dict(recipe), callbacks=callbacks, stop=None, seed=recipe.run.seed)
        if interrupted(state):
            note(f"{ckpt}: the run was {state.stop.reason}; going on from there")
            state = resumable(state)
        for n in built.notes:
            note(n)
        p = state.progress
        done = state.stop is not None or p.epoch >= built.loop.epochs
        if done and not fork and not (run_dir / "summary.md").exists() and recipe.loggers.summary:
            end_writers(state, built)
            tell(f"{ckpt}: the run had ended without its end writers (no summary.md); wrote them")
        if state.stop is not None:
            tell(f"{ckpt}: the run had stopped ({state.stop.reason}); fork it with --set to train on")
            return 0
        if p.epoch >= built.loop.epochs:
            tell(f"{ckpt}: the run is complete ({p.epoch} of {plural(built.loop.epochs, 'epoch')}); fork it with "
                 f"--set train.epochs=N to train on")
            return 0
        if world.main and (fork or not (run_dir / "recipe.toml").exists()):
            write(recipe, run_dir / "recipe.toml", header=_header(f"forked from {ckpt}" if fork else "resume"))
        tell(f"forking {ckpt}" if fork else f"going on from {ckpt}")
        return train_on(state, built, run_dir, f"smartcash-fn resume {run_dir}")


def replay(args: argparse.Namespace) -> int:
    """``replay CKPT --to-step N [--verify OTHER]``: recompute a later state; 0 when it matches OTHER bit for bit."""
    found = find_checkpoint(args.checkpoint)
    ckpt, obj = found.path, found.obj
    recipe = recipe_of(found, trust_code=getattr(args, "trust_code", False))
    other = find_checkpoint(args.verify) if args.verify else None
    other_obj = None if other is None else other.obj
    to_step = args.to_step
    if to_step is None:
        if other_obj is None:
            raise RecipeError("replay: give --to-step N (or --verify OTHER to replay up to OTHER's step)")
        to_step = int(other_obj["state"]["progress"]["step"])
    if to_step < 0:
        raise RecipeError(f"--to-step {to_step}: expected a step >= 0")
    if other_obj is not None and args.to_step is not None and to_step != int(other_obj["state"]["progress"]["step"]):
        note(f"--to-step {to_step} is not the step of {other.path} ({other_obj['state']['progress']['step']}): "
             "the states are compared all the same, and differ by the steps between; leave --to-step out to "
             "replay up to that file's step")
    built = build(recipe, quiet=True)  # no run folder: no file writers; replay leaves the others out
    loop = built.loop
    start = obj["state"]["progress"]
    start_state = state_in(found, built.template)
    require_progress(start_state, len(loop.data), str(ckpt))
    for n in environment_notes(found, built.template):
        note(n)
    state = replay_state(start_state, loop, to_step=to_step)
    p = state.progress
    inside = f", {plural(p.batch, 'batch', 'batches')} into epoch {p.epoch + 1}" if p.batch else ""
    say(f"replayed {ckpt} from step {start['step']} to step {p.step} (after {plural(p.epoch, 'epoch')}{inside})")
    if p.step != to_step:
        note(f"the run ends at step {p.step}, before step {to_step}")
    if other_obj is None:
        say(f"digest: {checkpoint.digest(checkpoint.to_tree(state))}")
        return 0
    diff = verify(state, state_in(other, built.template))
    if diff is None:
        say(f"identical: the replayed state is bit-identical to {args.verify}")
        return 0
    say(f"DIFFERENT: the replayed state differs from {args.verify}; first difference:\n  {diff}")
    return 1


def check(args: argparse.Namespace) -> int:
    """``check RECIPE [--set K=V]... [--trial]``: validate, print the resolved recipe, the composed step and callbacks.

    A recipe of built-in components is built and a trial step run on its first
    batch. A recipe naming the user's own code (import paths) has that code
    imported and found, not called, unless ``--trial`` asks to build it and run
    the trial step: checking a recipe never runs a component behind the user's back.
    """
    path = library.resolve(args.recipe)
    recipe = load(path, args.sets)
    problem = folder_problem(Path(recipe.run.out) / (recipe.run.name or "run"))
    if problem:
        raise RecipeError(f"{recipe.where('run', 'out')}: {problem}")
    own = untrusted(to_dict(recipe))
    if own and not getattr(args, "trial", False):
        for c in own:
            obj = import_path(c.value, recipe.where(*c.path))
            if not callable(obj):
                raise RecipeError(f"{recipe.where(*c.path)}: {c.value!r} is not callable "
                                  f"(a {type(obj).__name__})")
        sys.stdout.write(to_toml(recipe, header=f"Resolved recipe of {path}"))
        say("")
        for c in own:
            say(f"# imported, not called: {c}")
        say(f"# ok: {path} is valid as far as can be told without running its own code; "
            "`check --trial` builds it and runs a trial step")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        built = build(recipe, Path(tmp) / recipe.run.name, quiet=True)
        loss = probe(built)
    sys.stdout.write(to_toml(recipe, header=f"Resolved recipe of {path}"))
    say("")
    for line in describe(built).splitlines():
        say(f"# {line}")
    say(f"# model: {footprint(built).text()}")
    say(f"# trial step: loss {fmt_exact(loss)} on the first batch")
    say(f"# ok: {path} is valid; the run folder would be {Path(recipe.run.out) / recipe.run.name}")
    return 0


def inspect_info(path: str | os.PathLike) -> dict[str, Any]:
    """What ``inspect`` shows of a checkpoint (or a run folder's newest), as plain data.

    Progress, the last epoch's metrics, best, stop, recipe, versions, digest.
    Epochs are counted from 1, as everywhere people read them: ``metrics`` and
    ``best`` name their ``epoch`` (1 is the first), and ``progress`` holds the
    checkpoint's counters (``epoch``: epochs finished; ``batch``: batches done
    in the next; ``step``: batches trained in all)::

        inspect_info("runs/tiny/checkpoints/last.pt")["best"]["epoch"]     # 3: the best is epoch-0003.pt
    """
    found = find_checkpoint(path)
    for s in found.skipped:
        note(f"skipped {s}")
    path, obj = found.path, found.obj
    st = obj["state"]
    recipe = st.get("recipe") or {}
    best = st.get("best")
    epochs = st["history"]["epochs"]
    params = st["params"]
    return plain({
        "path": str(path),
        "format": obj.get("format"),
        "format_version": obj.get("format_version"),
        "library_version": obj.get("library_version"),
        "torch_version": obj.get("torch_version"),
        "created": obj.get("created"),
        "digest": obj.get("digest"),
        "progress": dict(st["progress"]),
        "epochs_planned": recipe.get("train", {}).get("epochs"),
        "seed": st["seed"],
        "metrics": one_based(epochs[-1]) if epochs else {},
        "step_metrics": dict(st["metrics"]),
        "best": None if best is None else one_based({k: best[k] for k in ("monitor", "mode", "value", "epoch",
                                                                          "step")}),
        "stop": st.get("stop"),
        "lr_scale": st.get("lr_scale"),
        "params": {"tensors": len(params), "elements": int(sum(t.numel() for t in params.values()))},
        "parent": recipe.get("run", {}).get("parent"),
        "recipe": recipe or None,
        "untrusted": [{"key": c.key, "value": c.value} for c in untrusted(recipe)],
    })


def inspect(args: argparse.Namespace) -> int:
    """``inspect CKPT [--json] [--trust-code]``: what a checkpoint holds.

    Like every command that reads a checkpoint, it refuses one whose recipe
    names code that is not built in, unless ``--trust-code``; inspect itself
    never imports or calls that code, so with the flag it only shows it.
    """
    info = inspect_info(args.checkpoint)
    if info["untrusted"] and not getattr(args, "trust_code", False):
        names = "; ".join(f"{c['key']} = {c['value']!r}" for c in info["untrusted"])
        raise CheckpointError(f"{info['path']} (its recipe): {names}: not built-in components; resume, replay, "
                              "eval and predict would import and call them. inspect runs nothing: pass "
                              "--trust-code to look at it anyway")
    if args.json:
        say(json.dumps(info, indent=2))
        return 0
    p = info["progress"]
    planned = f" of {info['epochs_planned']}" if info["epochs_planned"] is not None else ""
    inside = f", {plural(p['batch'], 'batch', 'batches')} into epoch {p['epoch'] + 1}" if p["batch"] else ""
    done = f"{p['epoch']}{planned} epochs" if planned else plural(p["epoch"], "epoch")
    lines = [
        f"checkpoint: {info['path']}",
        f"progress:   {done} done{inside}; step {p['step']}",
        f"metrics:    " + (f"epoch {info['metrics'].get('epoch')}: {metrics_line(info['metrics'])}" if info["metrics"]
                           else "(no epoch finished)"),
    ]
    b = info["best"]
    lines.append("best:       " + ("(none)" if b is None else f"{b['monitor']} {fmt_exact(b['value'])} ({b['mode']}) after "
                                                              f"epoch {b['epoch']}, step {b['step']}"))
    stop = info["stop"]
    lines.append("stop:       " + ("(none)" if stop is None else f"{stop['reason']}{' [failed]' if stop['failed'] else ''}"))
    lines.append(f"params:     {info['params']['tensors']} tensors, {info['params']['elements']} elements; "
                 f"seed {info['seed']}; lr scale {fmt_exact(info['lr_scale'])}")
    if info["parent"]:
        lines.append(f"parent:     {info['parent']}")
    lines += [
        f"versions:   format {info['format_version']}, smartcash_fn {info['library_version']}, torch "
        f"{info['torch_version']}; created {info['created']}",
        f"digest:     {info['digest']}",
    ]
    if info["untrusted"]:
        names = "; ".join(f"{c['key']} = {c['value']!r}" for c in info["untrusted"])
        lines.append(f"UNTRUSTED:  the recipe names code that is not built in ({names}); resume, replay, eval and "
                     "predict refuse it unless given --trust-code")
    say("\n".join(lines))
    if info["recipe"]:
        say("\n# recipe\n" + dumps(info["recipe"]).rstrip())
    return 0


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON at ``path`` atomically; a non-finite float becomes ``null``.

    ``write_json(Path("runs/a/eval-val.json"), {"mAP50": 0.9})``
    """
    finite = tree_map(lambda v: None if isinstance(v, float) and not math.isfinite(v) else v, data)
    return write_text_atomic(path, json.dumps(finite, indent=2) + "\n")


def export_model(args: argparse.Namespace) -> int:
    """``export CKPT_OR_RUN_DIR [--format weights|torchscript|onnx] [--out DIR] [--half]``: the model, for deployment.

    A run folder means its ``best.pt`` (else ``last.pt``); the default folder is ``<run>/export``.
    """
    found = find_checkpoint(args.checkpoint, prefer=("best", "last"))
    for s in found.skipped:
        note(f"skipped {s}")
    built = build(recipe_of(found, trust_code=getattr(args, "trust_code", False)), quiet=True)
    out = Path(args.out) if args.out else run_folder_of(found.path) / "export"
    done = export(found, built, args.format, out, half=args.half)
    say(f"wrote {done.path} ({args.format}{', float16' if args.half else ''}) and {done.meta_path}")
    if done.checked:
        say(f"checked: its outputs on the first validation image differ from the checkpoint's by at most "
            f"{done.max_diff:.3g}")
    else:
        note("onnxruntime is not installed, so the ONNX file was not run; pip install 'smartcash-fn[onnx]' to check")
    return 0


def recipe_list(args: argparse.Namespace) -> int:
    """``recipe list``: the built-in recipes, each with what it is."""
    width = max(map(len, library.names()))
    for name in library.names():
        default = "  (the default)" if name == library.DEFAULT else ""
        say(f"{name:<{width}}  {library.describe(name)}{default}")
    return 0


def recipe_show(args: argparse.Namespace) -> int:
    """``recipe show NAME``: a built-in recipe's text, comments included."""
    sys.stdout.write(library.path_of(args.name).read_text(encoding="utf-8"))
    return 0


def recipe_copy(args: argparse.Namespace) -> int:
    """``recipe copy NAME DEST [--force]``: a built-in recipe as a file of your own to edit."""
    src = library.path_of(args.name)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not args.force:
        raise RecipeError(f"{dest}: exists; give another path, or --force to replace it")
    write_text_atomic(dest, src.read_text(encoding="utf-8"))
    say(f"wrote {dest}; train it with: smartcash-fn train {dest}")
    return 0


def recipe_reference(args: argparse.Namespace) -> int:
    """``recipe reference``: every recipe key with its type, default and meaning, and the built-in components."""
    sys.stdout.write(reference())
    return 0
