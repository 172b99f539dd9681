"""The ``smartcash-fn`` command line: train, resume, replay, check and inspect runs; evaluate and run detectors.

Each subcommand is a small function of its parsed arguments returning the
exit status: 0 done, 1 a run that failed or a replay that differs, 2 bad
input (a recipe, a ``--set``, a checkpoint) with one ``error:`` message and
no traceback::

    smartcash-fn train recipes/tiny.toml --set train.epochs=5
    smartcash-fn resume runs/tiny                     # its newest intact checkpoint
    smartcash-fn replay runs/tiny/checkpoints/epoch-0001.pt --verify runs/tiny/checkpoints/epoch-0002.pt
    smartcash-fn eval runs/rupiah_synthetic --scenario low_light      # its best.pt; writes eval-val-low_light.json
    smartcash-fn predict runs/rupiah_synthetic photos/ --out predictions
    smartcash-fn data export-synthetic --out data/rupiah --n 1000 --size 256

``main(argv)`` is the whole program (``python -m smartcash_fn`` runs it too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import attrs

from . import checkpoint
from ._version import __version__
from .errors import CheckpointError, RecipeError, UserError

DEFAULT_RECIPE = Path(__file__).resolve().parent / "recipes" / "default.toml"
"""The recipe ``smartcash-fn train`` uses when none is given (shipped inside the package)."""


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- run folders and checkpoints


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds a run (a recipe.toml or checkpoints), which training must not overwrite."""
    ckpts = folder / "checkpoints"
    return (folder / "recipe.toml").exists() or (ckpts.is_dir() and any(ckpts.glob("*.pt")))


def free_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... : the first that holds no run.

    ``free_folder(Path("runs/tiny"))`` is ``runs/tiny-2`` once ``runs/tiny`` holds a run.
    """
    if not holds_run(base):
        return base
    n = 2
    while holds_run(base.with_name(f"{base.name}-{n}")):
        n += 1
    return base.with_name(f"{base.name}-{n}")


def run_folder_of(ckpt: Path) -> Path:
    """The run folder a checkpoint belongs to: ``runs/a/checkpoints/x.pt`` -> ``runs/a``."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def find_checkpoint(target: str | os.PathLike) -> tuple[Path, dict[str, Any], list[str]]:
    """The checkpoint to resume from ``target`` (a file, or a run folder), its verified contents, and what was skipped.

    In a run folder: ``checkpoints/last.pt`` when intact, else the other
    checkpoints newest first; each unreadable one is skipped with its reason::

        path, obj, skipped = find_checkpoint("runs/tiny")
    """
    target = Path(target)
    if target.is_file():
        return target, checkpoint.read(target), []
    if not target.exists():
        raise CheckpointError(f"{target}: no such checkpoint file or run folder")
    folder = target / "checkpoints" if (target / "checkpoints").is_dir() else target
    last = folder / "last.pt"
    others = sorted((p for p in folder.glob("*.pt") if p.name != "last.pt"),
                    key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    candidates = ([last] if last.is_file() else []) + others
    if not candidates:
        raise CheckpointError(f"{target}: no checkpoints (*.pt) in {folder}; give a checkpoint file or a run folder")
    skipped: list[str] = []
    seen: set[tuple[int, int]] = set()
    for path in candidates:
        st = path.stat()
        if (st.st_dev, st.st_ino) in seen:  # a hard link to a file already tried (last.pt, best.pt)
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            return path, checkpoint.read(path), skipped
        except CheckpointError as e:
            skipped.append(str(e))
    raise CheckpointError(f"{target}: no intact checkpoint in {folder}:\n  " + "\n  ".join(skipped))


def _recipe_of(ckpt: Path, obj: dict[str, Any], sets: Sequence[str] = ()):
    from .run.recipe import from_dict

    tree = obj["state"].get("recipe")
    if not tree:
        raise CheckpointError(f"{ckpt}: the checkpoint holds no recipe (it was not made from one); resume it from "
                              "Python with smartcash_fn.resume(path, loop, like=template)")
    return from_dict(tree, source=f"{ckpt} (its recipe)", sets=sets)


def _state_from(ckpt: Path, obj: dict[str, Any], like: Any) -> Any:
    """The state in an already verified checkpoint dict (no second read of the file)."""
    try:
        return checkpoint.from_tree(obj["state"], like, where=str(ckpt))
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt}: the checkpoint's state is malformed ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- output


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _metrics_line(record: dict[str, Any]) -> str:
    return "  ".join(f"{k} {_fmt(v)}" for k, v in record.items() if k not in ("epoch", "step"))


def _finish(state: Any, run_dir: Path) -> int:
    p = state.progress
    last = state.history.last()
    _say(f"done: {p.epoch} epoch(s), step {p.step}; {_metrics_line(dict(last)) or 'no epoch finished'}")
    if state.best is not None:
        b = state.best
        _say(f"best: {b.monitor} {_fmt(b.value)} after epoch {b.epoch + 1}")
    if state.stop is not None:
        _say(f"stopped: {state.stop.reason}")
    _say(f"run folder: {run_dir}")
    return 1 if state.stop is not None and state.stop.failed else 0


def _header(action: str) -> str:
    return f"Resolved recipe of this run ({action}), written by smartcash_fn {__version__}.\n" \
           "Train it again with: smartcash-fn train <this file>"


# --------------------------------------------------------------------------- subcommands


def cmd_train(args: argparse.Namespace) -> int:
    """``train [RECIPE] [--set K=V]... [--out DIR]``: a new run in a new folder."""
    from .run.build import build, probe
    from .loop import fit
    from .run.recipe import load, write

    recipe = load(args.recipe or DEFAULT_RECIPE, args.sets)
    if args.out:
        run_dir = Path(args.out)
        if holds_run(run_dir):
            raise RecipeError(f"--out {run_dir}: the folder already holds a run; resume it with "
                              f"`smartcash-fn resume {run_dir}`, or give another folder")
    else:
        run_dir = free_folder(Path(recipe.run.out) / recipe.run.name)
    built = build(recipe, run_dir, quiet=args.quiet)
    probe(built)
    for n in built.notes:
        _note(n)
    write(recipe, run_dir / "recipe.toml", header=_header("train"))
    _say(f"training {recipe.run.name}: {built.loop.epochs} epoch(s) of {built.batches} batches -> {run_dir}")
    state = fit(built.template, built.loop)
    return _finish(state, run_dir)


def cmd_resume(args: argparse.Namespace) -> int:
    """``resume CKPT_OR_RUN_DIR [--set K=V]... [--out DIR]``: go on from a checkpoint; with changes, as a fork."""
    from .run.build import build
    from .loop import fit
    from .run.recipe import parse_set, to_dict, write
    from .replay import difference

    ckpt, obj, skipped = find_checkpoint(args.target)
    for s in skipped:
        _note(f"skipped {s}")
    recipe = _recipe_of(ckpt, obj, args.sets)
    old_dir = run_folder_of(ckpt)
    fork = bool(args.sets or args.out)
    if fork:
        renamed = any(parse_set(s)[0] == ("run", "name") for s in args.sets)
        if args.out:
            run_dir = Path(args.out)
            if holds_run(run_dir):
                raise RecipeError(f"--out {run_dir}: the folder already holds a run; give another folder")
        elif renamed:
            run_dir = free_folder(old_dir.parent / recipe.run.name)
        else:
            run_dir = free_folder(old_dir.parent / f"{old_dir.name}-fork")
        recipe = attrs.evolve(recipe, run=attrs.evolve(recipe.run, name=run_dir.name, parent=str(ckpt.resolve())))
    else:
        run_dir = old_dir
    built = build(recipe, run_dir, quiet=args.quiet)
    state = _state_from(ckpt, obj, built.template)
    if fork:
        mismatch = difference(checkpoint.structure(built.template.opt_state), checkpoint.structure(state.opt_state), "opt_state")
        if mismatch:
            raise RecipeError(
                f"--set {' '.join(args.sets) or '(none)'}: the forked recipe changes the optimizer's state (first at "
                f"{mismatch.path}); a fork keeps the optimizer and its parameter groups (change lr, schedule, epochs, "
                "callbacks, ... instead)")
        callbacks = {k: v for k, v in state.callbacks.items() if k != "checkpoint"}  # its files are the parent's
        state = state.replace(recipe=to_dict(recipe), callbacks=callbacks, stop=None, seed=recipe.run.seed)
    for n in built.notes:
        _note(n)
    p = state.progress
    if state.stop is not None:
        _say(f"{ckpt}: the run had stopped ({state.stop.reason}); fork it with --set to train on")
        return 0
    if p.epoch >= built.loop.epochs:
        _say(f"{ckpt}: the run is complete ({p.epoch} of {built.loop.epochs} epochs); fork it with "
             f"--set train.epochs=N to train on")
        return 0
    if fork or not (run_dir / "recipe.toml").exists():
        write(recipe, run_dir / "recipe.toml", header=_header(f"forked from {ckpt}" if fork else "resume"))
    _say(f"{'forking' if fork else 'resuming'} {ckpt} at epoch {p.epoch}, batch {p.batch} (step {p.step}) -> {run_dir}")
    state = fit(state, built.loop)
    return _finish(state, run_dir)


def cmd_replay(args: argparse.Namespace) -> int:
    """``replay CKPT --to-step N [--verify OTHER]``: recompute a later state; 0 when it matches OTHER bit for bit."""
    from .run.build import build
    from .replay import replay, verify, writer_names

    ckpt = Path(args.checkpoint)
    obj = checkpoint.read(ckpt)
    recipe = _recipe_of(ckpt, obj)
    other_obj = checkpoint.read(args.verify) if args.verify else None
    to_step = args.to_step
    if to_step is None:
        if other_obj is None:
            raise RecipeError("replay: give --to-step N (or --verify OTHER to replay up to OTHER's step)")
        to_step = int(other_obj["state"]["progress"]["step"])
    if to_step < 0:
        raise RecipeError(f"--to-step {to_step}: expected a step >= 0")
    with tempfile.TemporaryDirectory() as tmp:  # writers are built for their names only; replay leaves them out
        built = build(recipe, Path(tmp) / "run", quiet=True)
    loop = attrs.evolve(built.loop, callbacks=tuple(c for c in built.loop.callbacks if c.name not in built.console))
    start = obj["state"]["progress"]
    state = replay(_state_from(ckpt, obj, built.template), loop, to_step=to_step)
    p = state.progress
    _say(f"replayed {ckpt} from step {start['step']} to step {p.step} (epoch {p.epoch}, batch {p.batch})")
    if p.step != to_step:
        _say(f"note: the run ends at step {p.step}, before step {to_step}")
    if other_obj is None:
        _say(f"digest: {checkpoint.digest(checkpoint.to_tree(state))}")
        return 0
    other = _state_from(Path(args.verify), other_obj, built.template)
    diff = verify(state, other, ignore=writer_names(built.loop) + built.console)
    if diff is None:
        _say(f"identical: the replayed state is bit-identical to {args.verify}")
        return 0
    _say(f"DIFFERENT: the replayed state differs from {args.verify}; first difference:\n  {diff}")
    return 1


def cmd_check(args: argparse.Namespace) -> int:
    """``check RECIPE [--set K=V]...``: validate, print the resolved recipe, the composed step and callbacks."""
    from .run.build import build, describe, probe
    from .run.recipe import load, to_toml

    recipe = load(args.recipe, args.sets)
    with tempfile.TemporaryDirectory() as tmp:
        built = build(recipe, Path(tmp) / recipe.run.name, quiet=True)
        loss = probe(built)
    sys.stdout.write(to_toml(recipe, header=f"Resolved recipe of {args.recipe}"))
    _say("")
    for line in describe(built).splitlines():
        _say(f"# {line}")
    _say(f"# trial step: loss {_fmt(loss)} on the first batch")
    _say(f"# ok: {args.recipe} is valid; the run folder would be {Path(recipe.run.out) / recipe.run.name}")
    return 0


def inspect_info(path: str | os.PathLike) -> dict[str, Any]:
    """What ``inspect`` shows of a checkpoint (or a run folder's newest), as plain data.

    Progress, the last epoch's metrics, best, stop, recipe, versions, digest:
    ``inspect_info("runs/tiny/checkpoints/last.pt")["progress"]["epoch"]``
    """
    path, obj, skipped = find_checkpoint(path)
    for s in skipped:
        _note(f"skipped {s}")
    st = obj["state"]
    recipe = st.get("recipe") or {}
    best = st.get("best")
    epochs = st["history"]["epochs"]
    params = st["params"]
    from .report.sinks import plain

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
        "metrics": dict(epochs[-1]) if epochs else {},
        "step_metrics": dict(st["metrics"]),
        "best": None if best is None else {k: best[k] for k in ("monitor", "mode", "value", "epoch", "step")},
        "stop": st.get("stop"),
        "lr_scale": st.get("lr_scale"),
        "params": {"tensors": len(params), "elements": int(sum(t.numel() for t in params.values()))},
        "parent": recipe.get("run", {}).get("parent"),
        "recipe": recipe or None,
    })


def cmd_inspect(args: argparse.Namespace) -> int:
    """``inspect CKPT [--json]``: what a checkpoint holds."""
    from .run.recipe import dumps

    info = inspect_info(args.checkpoint)
    if args.json:
        _say(json.dumps(info, indent=2))
        return 0
    p = info["progress"]
    planned = f" of {info['epochs_planned']}" if info["epochs_planned"] is not None else ""
    inside = f", {p['batch']} batch(es) into epoch {p['epoch'] + 1}" if p["batch"] else ""
    lines = [
        f"checkpoint: {info['path']}",
        f"progress:   {p['epoch']}{planned} epoch(s) done{inside}; step {p['step']}",
        f"metrics:    {_metrics_line(info['metrics']) or '(no epoch finished)'}",
    ]
    b = info["best"]
    lines.append("best:       " + ("(none)" if b is None else f"{b['monitor']} {_fmt(b['value'])} ({b['mode']}) after "
                                                              f"epoch {b['epoch'] + 1}, step {b['step']}"))
    stop = info["stop"]
    lines.append("stop:       " + ("(none)" if stop is None else f"{stop['reason']}{' [failed]' if stop['failed'] else ''}"))
    lines.append(f"params:     {info['params']['tensors']} tensors, {info['params']['elements']} elements; "
                 f"seed {info['seed']}; lr scale {_fmt(info['lr_scale'])}")
    if info["parent"]:
        lines.append(f"parent:     {info['parent']}")
    lines += [
        f"versions:   format {info['format_version']}, smartcash_fn {info['library_version']}, torch "
        f"{info['torch_version']}; created {info['created']}",
        f"digest:     {info['digest']}",
    ]
    _say("\n".join(lines))
    if info["recipe"]:
        _say("\n# recipe\n" + dumps(info["recipe"]).rstrip())
    return 0


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return v


def _write_json(path: Path, data: Any) -> Path:
    from .report.sinks import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(_json_value(data), indent=2) + "\n")


def cmd_eval(args: argparse.Namespace) -> int:
    """``eval CKPT [--data DATA_YAML] [--split val|test] [--scenario NAME] [--json PATH]``: the table and its JSON."""
    from .smartcash.inference import evaluate_split, load_detector

    det = load_detector(args.checkpoint, data_yaml=args.data)
    result = evaluate_split(det, split=args.split, scenario=args.scenario, n=args.n, batch_size=args.batch_size,
                            conf=args.conf, iou=args.iou, pr_conf=args.pr_conf)
    _say(result.text())
    default = run_folder_of(det.path) / f"eval-{args.split}{'-' + args.scenario if args.scenario else ''}.json"
    path = _write_json(Path(args.json) if args.json else default, result.as_json())
    _say(f"wrote {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``predict CKPT IMAGE_OR_DIR... --out DIR [--conf C]``: images with their boxes drawn, and detections.json."""
    from PIL import Image

    from .smartcash.plots import draw_boxes
    from .smartcash.inference import image_files, load_detector, predict_files

    det = load_detector(args.checkpoint)
    files = image_files(args.inputs)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; give a folder for the drawn images")
    out.mkdir(parents=True, exist_ok=True)
    records, taken = [], set()
    for path, image, d in predict_files(det, files, conf=args.conf, iou=args.iou):
        name, n = path.name, 2
        while name in taken:
            name, n = f"{path.stem}-{n}{path.suffix}", n + 1
        taken.add(name)
        drawn = draw_boxes(image, d, None, det.class_names, det.layers, conf=args.conf)
        target = out / name
        Image.fromarray(drawn.permute(1, 2, 0).contiguous().numpy()).save(target)
        layer_of = {c: layer for layer, cs in det.layers.items() for c in cs}
        records.append({"image": str(path), "output": str(target), "width": int(image.shape[-1]),
                        "height": int(image.shape[-2]),
                        "detections": [{"class": det.class_names[int(c)], "label": int(c),
                                        "layer": layer_of.get(det.class_names[int(c)]), "score": round(float(s), 5),
                                        "box": [round(float(v), 2) for v in b]}
                                       for b, s, c in zip(d.boxes, d.scores, d.labels)]})
        _say(f"{path}: {len(d.labels)} detection(s) -> {target}")
    path = _write_json(out / "detections.json", {"checkpoint": str(det.path), "conf": args.conf, "iou": args.iou,
                                                  "image_size": det.image_size, "images": records})
    _say(f"wrote {path}")
    return 0


def cmd_export_synthetic(args: argparse.Namespace) -> int:
    """``data export-synthetic --out DIR --n N [--size S] [--seed K]``: synthetic scenes as a YOLO dataset."""
    from .smartcash.export import export_synthetic

    step = max(1, args.n // 10)

    def progress(done: int, total: int) -> None:
        if not args.quiet and (done % step == 0 or done == total):
            _say(f"  {done}/{total} scenes")

    path = export_synthetic(args.out, args.n, seed=args.seed, size=args.size, scenario=args.scenario,
                            image_format=args.format, workers=args.workers, overwrite=args.overwrite,
                            progress=progress)
    _say(f"wrote {args.n} scenes ({args.size} px, scenario {args.scenario}) as a YOLO dataset: {path}")
    return 0


# --------------------------------------------------------------------------- parser and main


def _add_sets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, the value read as TOML (repeatable): --set train.epochs=5")


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``smartcash-fn`` (train, resume, replay, check, inspect, eval, predict, data)."""
    top = argparse.ArgumentParser(prog="smartcash-fn", description="Train, resume, replay, check and inspect "
                                  "smartcash_fn runs made from TOML recipes; evaluate and run trained detectors.")
    top.add_argument("--version", action="version", version=f"smartcash_fn {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a recipe in a new run folder")
    p.add_argument("recipe", nargs="?", help="a recipe file (default: the built-in default recipe)")
    _add_sets(p)
    p.add_argument("--out", metavar="DIR", help="the run folder (default: <run.out>/<run.name>, made unique)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("resume", help="continue a run from a checkpoint or a run folder (with --set: a fork)")
    p.add_argument("target", metavar="CKPT_OR_RUN_DIR")
    _add_sets(p)
    p.add_argument("--out", metavar="DIR", help="fork into this folder (default with --set: <run>-fork)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("replay", help="recompute a later state from a checkpoint, writing nothing")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--to-step", type=int, metavar="N", help="the global step to replay to")
    p.add_argument("--verify", metavar="OTHER_CKPT",
                   help="compare with this checkpoint: exit 0 when bit-identical, 1 with the first difference")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("check", help="validate a recipe and show what it builds")
    p.add_argument("recipe")
    _add_sets(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("inspect", help="show what a checkpoint (or a run folder's newest) holds")
    p.add_argument("checkpoint", metavar="CKPT_OR_RUN_DIR")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

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
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="detect banknotes on images: draw the boxes and write detections.json")
    p.add_argument("checkpoint", metavar="CKPT_OR_RUN_DIR", help="a checkpoint, or a run folder (its best.pt)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the drawn images and detections.json")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    p.set_defaults(func=cmd_predict)

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
    q.set_defaults(func=cmd_export_synthetic)
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
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; the checkpoints written so far are intact", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (`... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
