"""SmartCash's commands: evaluate a detector, detect banknotes on images, export the synthetic scenes.

Plugged into ``smartcash-fn`` by the top floor (``cli.py``) as ``eval``,
``predict`` and ``data export-synthetic``; each returns the exit status::

    smartcash-fn eval runs/rupiah_synthetic --split val      # evaluate(args) with the parsed arguments
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from ..errors import UserError
from ..run.commands import say, write_json
from ..run.folders import run_folder_of
from .export import export_synthetic
from .inference import evaluate_split, image_files, load_detector, predict_files
from .plots import draw_boxes


def evaluate(args: argparse.Namespace) -> int:
    """``eval CKPT [--data DATA_YAML] [--split val|test] [--scenario NAME] [--json PATH]``: the table and its JSON."""

    det = load_detector(args.checkpoint, data_yaml=args.data, trust_code=getattr(args, "trust_code", False))
    result = evaluate_split(det, split=args.split, scenario=args.scenario, n=args.n, batch_size=args.batch_size,
                            conf=args.conf, iou=args.iou, pr_conf=args.pr_conf)
    say(result.text())
    default = run_folder_of(det.path) / f"eval-{args.split}{'-' + args.scenario if args.scenario else ''}.json"
    path = write_json(Path(args.json) if args.json else default, result.as_json())
    say(f"wrote {path}")
    return 0


def predict(args: argparse.Namespace) -> int:
    """``predict CKPT IMAGE_OR_DIR... --out DIR [--conf C]``: images with their boxes drawn, and detections.json."""


    det = load_detector(args.checkpoint, trust_code=getattr(args, "trust_code", False))
    files = image_files(args.inputs)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; give a folder for the drawn images")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"--out {out}: the folder is not empty (an earlier predict?); give another folder, or "
                        "--overwrite to write into it")
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
        say(f"{path}: {len(d.labels)} detection(s) -> {target}")
    path = write_json(out / "detections.json", {"checkpoint": str(det.path), "conf": args.conf, "iou": args.iou,
                                                  "image_size": det.image_size, "images": records})
    say(f"wrote {path}")
    return 0


def export(args: argparse.Namespace) -> int:
    """``data export-synthetic --out DIR --n N [--size S] [--seed K]``: synthetic scenes as a YOLO dataset."""

    step = max(1, args.n // 10)

    def progress(done: int, total: int) -> None:
        if not args.quiet and (done % step == 0 or done == total):
            say(f"  {done}/{total} scenes")

    path = export_synthetic(args.out, args.n, seed=args.seed, size=args.size, scenario=args.scenario,
                            image_format=args.format, workers=args.workers, overwrite=args.overwrite,
                            progress=progress)
    say(f"wrote {args.n} scenes ({args.size} px, scenario {args.scenario}) as a YOLO dataset: {path}")
    return 0
