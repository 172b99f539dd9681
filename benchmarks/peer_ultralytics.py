"""The default detector recipe side by side with Ultralytics YOLOv8n trained from scratch, on the same scenes.

What runs, in order (nothing is downloaded):

1. **Data.** The scenes the recipe trains and validates on are exported once
   with ``yolo_export.export_synthetic`` as a YOLO dataset (``images/``,
   ``labels/``, ``data.yaml``) under ``DATA_DIR/main``, as lossless PNG: the
   files decode to exactly the pixels the recipe renders, so both detectors
   see the same training scenes (each with its own augmentation) and are
   judged on the same validation scenes. One validation set per evaluation
   scenario (``rupiah.SCENARIOS``: position, lighting, low_light, small,
   occlusion) goes to ``DATA_DIR/scenarios/<name>``. An export is reused
   when ``DATA_DIR/export.json`` says it was made with the same arguments.
   A recipe reading a ``data.yaml`` itself (``yolo_dataset``) is used as is.
2. **smartcash_fn.** ``smartcash-fn train RECIPE --out WORK/smartcash_fn``
   (the built-in default recipe unless ``--recipe``; ``--our-set`` overrides
   keys), in a subprocess, timed from start to exit.
3. **Ultralytics.** ``YOLO("yolov8n.yaml").train(...)`` from scratch
   (``pretrained=False``) on ``DATA_DIR/main/data.yaml`` on the CPU, stopped
   by its ``time=`` argument (hours) after ``--minutes`` (default 10),
   ``imgsz`` the recipe's size, ``workers=2`` (Ultralytics itself uses 0
   loader workers on a CPU), ``amp=False``, ``plots=False``, its other
   settings at their defaults (batch 16, epochs 100, which ``time=``
   replans after the first epoch, optimizer auto: AdamW for a run of this
   size, mosaic, ...),
   ``cache="ram"`` unless ``--cache``. Offline: ``YOLO_OFFLINE=1``,
   ``YOLO_AUTOINSTALL=false``, settings ``sync=False``, and a config folder
   of its own holding a copy of matplotlib's DejaVu Sans as ``Arial.ttf``,
   so it never tries to fetch a font. Both sides get ``--threads`` torch
   threads (default the CPU count; Ultralytics alone would pick one fewer).
4. **Evaluation**, the same for both, with ``smartcash_fn.smartcash.metrics.evaluate``
   against the exported label files: each model's best checkpoint (by its own
   validation fitness: ``checkpoints/best.pt`` / ``weights/best.pt``) predicts
   every validation image one at a time (decoded PNG in memory; conf 0.001,
   NMS IoU ``--iou`` 0.6, at most 100 per image, at the recipe's size):
   mAP@0.5 and mAP@0.5:0.95 over all classes, per layer (banknote, nominal,
   security) and per scenario; precision/recall at conf 0.25; inference ms
   per image (preprocess, forward, decode and NMS, batch 1, after a warm-up).
   The peer's predictions are converted box for box (``peer_detections``:
   a test holds our evaluator on the converted set equal to pycocotools on
   the peer's own, within 1e-6). Each side's predictions are also scored by
   Ultralytics' own metric (its matching by IoU and ``ap_per_class``:
   ``ultralytics_scores``), and Ultralytics' own ``val`` of its weights is
   printed too: three figures that separate the metric (ours against theirs
   on the same predictions) from the decoding (``val`` decodes multi-label,
   at IoU 0.7 and up to 300 boxes an image, where ``predict`` gives one class
   per box at the comparison's IoU 0.6 and 100 boxes).

A full comparison takes 20+ minutes of a quiet machine (two 10-minute
trainings one after the other, then the evaluations)::

    .venv/bin/python benchmarks/peer_ultralytics.py --json runs/peer.json
    .venv/bin/python benchmarks/peer_ultralytics.py --quick          # a few minutes: tiny data, 1-minute budget
    .venv/bin/python benchmarks/peer_ultralytics.py --ours-ckpt runs/x/checkpoints/best.pt   # no training of ours

Exit status: 0 done, 1 a training failed, 2 bad arguments or a missing ultralytics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from map_eval import machine  # noqa: E402
from smartcash_fn.smartcash import scenes as rupiah  # noqa: E402
from smartcash_fn.smartcash import metrics as M  # noqa: E402
from smartcash_fn.smartcash.detection import Layout, decode  # noqa: E402
from smartcash_fn.errors import UserError  # noqa: E402
from smartcash_fn.smartcash.export import export_synthetic, read_labels, split_sizes  # noqa: E402

SCENARIO_NAMES = tuple(k for k, v in rupiah.SCENARIOS.items() if not isinstance(v, tuple))
"""The five evaluation scenarios (``"mixed"``, their union, is the main validation set)."""

QUICK = {"train": 64, "val": 16, "size": 128, "scenario_val": 8, "epochs": 6, "minutes": 1.0}
"""``--quick``: scenes, input size, our epochs and the peer's minutes of the smoke check."""


class BenchError(UserError):
    """A problem with the benchmark's arguments or inputs: printed as ``error: ...``, exit status 2."""


# --------------------------------------------------------------------------- the recipe's scenes


def recipe_scenes(recipe_path: Path, sets: Sequence[str]) -> dict[str, Any]:
    """What the recipe trains and validates on: its RupiahScenes (seed, size, scenario, counts) or its data.yaml.

    ``recipe_scenes(DEFAULT_RECIPE, [])["size"]`` is the input size both detectors use.
    """
    from smartcash_fn.run.build import make_data
    from smartcash_fn.run.recipe import load

    recipe = load(recipe_path, sets)
    train, val, info = make_data(recipe)
    tr, va = getattr(train, "dataset", None), getattr(val, "dataset", None)
    if isinstance(tr, rupiah.RupiahScenes) and isinstance(va, rupiah.RupiahScenes):
        if (tr.seed, tr.size, tr.scenario) != (va.seed, va.size, va.scenario):
            raise BenchError(f"{recipe_path}: its training and validation scenes differ in seed, size or scenario "
                             f"({tr.seed}, {tr.size}, {tr.scenario!r} vs {va.seed}, {va.size}, {va.scenario!r}); "
                             "one export holds one of each: give both the same, e.g. with --our-set")
        if not isinstance(tr.scenario, str):
            raise BenchError(f"{recipe_path}: the scenario must be a name of rupiah.SCENARIOS to be exported, "
                             f"got {tr.scenario!r}")
        return {"kind": "rendered", "seed": tr.seed, "size": tr.size, "scenario": tr.scenario, "train": tr.n,
                "val": va.n, "batch_size": recipe.data.batch_size}
    if info.get("data_yaml"):
        return {"kind": "data_yaml", "data_yaml": str(info["data_yaml"]), "size": int(info["image_size"]),
                "seed": recipe.run.seed, "scenario": "mixed", "batch_size": recipe.data.batch_size,
                "train": len(tr) if tr is not None else None, "val": len(va) if va is not None else None}
    raise BenchError(f"{recipe_path}: data.use = {recipe.data.use!r} gives neither rupiah.RupiahScenes for train "
                     "and val nor a data.yaml (info['data_yaml']); use a rupiah_synthetic or yolo_dataset recipe")


def _export(out: Path, n: int, fractions: tuple[float, float, float], want: tuple[int, int, int], **kw: Any) -> Path:
    got = split_sizes(n, fractions)
    if got != want:  # guard the float arithmetic of the split
        raise BenchError(f"export {out}: split sizes {got} instead of {want}")
    return export_synthetic(out, n=n, split_fractions=fractions, image_format="png", overwrite=True, **kw)


def export_data(data_dir: Path, scenes: dict[str, Any], scenario_val: int, workers: int,
                say: Callable[[str], None]) -> dict[str, Any]:
    """Export the recipe's train/val scenes and one validation set per scenario (or reuse an identical export)."""
    size, seed = scenes["size"], scenes["seed"]
    manifest = {"seed": seed, "size": size, "scenario": scenes["scenario"], "train": scenes.get("train"),
                "val": scenes.get("val"), "scenario_val": scenario_val, "format": "png", "kind": scenes["kind"],
                "data_yaml": scenes.get("data_yaml")}
    paths = {"main": data_dir / "main" / "data.yaml",
             "scenarios": {s: data_dir / "scenarios" / s / "data.yaml" for s in SCENARIO_NAMES}}
    if scenes["kind"] == "data_yaml":
        paths["main"] = Path(scenes["data_yaml"])
    record = data_dir / "export.json"
    wanted = [paths["main"], *paths["scenarios"].values()]
    if record.is_file() and json.loads(record.read_text()) == manifest and all(p.is_file() for p in wanted):
        say(f"data: reusing the export in {data_dir}")
        return paths
    data_dir.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    t0 = time.perf_counter()
    if scenes["kind"] == "rendered":
        n_tr, n_va = scenes["train"], scenes["val"]
        n = n_tr + n_va
        _export(data_dir / "main", n, (n_tr / n, n_va / n, 0.0), (n_tr, n_va, 0), seed=seed, size=size,
                scenario=scenes["scenario"], workers=workers)
    for s in SCENARIO_NAMES:
        _export(data_dir / "scenarios" / s, scenario_val, (0.0, 1.0, 0.0), (0, scenario_val, 0), seed=seed,
                size=size, scenario=s, workers=workers)
    record.write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"data: exported to {data_dir} in {time.perf_counter() - t0:.0f} s")
    return paths


def val_set(data_yaml: Path, size: int) -> tuple[list[Path], list[np.ndarray], list[M.Targets]]:
    """The validation images of a YOLO dataset (decoded, RGB uint8 HWC) and their targets (xyxy pixels, our class ids).

    Images must be ``size`` x ``size`` (both detectors then see them unchanged); class ids are mapped by name
    from the ``data.yaml``'s order to ``rupiah.CLASSES``.
    """
    from PIL import Image

    from smartcash_fn.errors import DataError
    from smartcash_fn.smartcash.yolo import YoloDataset, label_path, read_data_yaml

    spec = read_data_yaml(data_yaml)
    unknown = [n for n in spec.names if n not in rupiah.CLASSES]
    if unknown or "val" not in spec.splits:
        raise BenchError(f"{data_yaml}: expected a val split and the classes of rupiah.CLASSES "
                         f"(unknown: {', '.join(unknown) or 'none'})")
    table = torch.tensor([rupiah.CLASSES.index(n) for n in spec.names], dtype=torch.int64)
    try:  # the split's images as training lists them: its folders and .txt lists, in order
        images = list(YoloDataset.scan(spec, "val", size=size, on_bad="fail").images)
    except DataError as e:
        raise BenchError(str(e)) from None
    arrays, targets = [], []
    for p in images:
        with Image.open(p) as im:
            a = np.array(im.convert("RGB"))
        if a.shape[:2] != (size, size):
            raise BenchError(f"{p}: the image is {a.shape[1]}x{a.shape[0]}, expected {size}x{size}")
        arrays.append(a)
        boxes, labels = read_labels(label_path(p), size)
        targets.append(M.Targets(boxes, table[labels]))
    return images, arrays, targets


# --------------------------------------------------------------------------- predicting


def timed_predictions(predict: Callable[[np.ndarray], M.Detections], arrays: list[np.ndarray]
                      ) -> tuple[list[M.Detections], float]:
    """``predict`` on every image, one at a time, after one untimed warm-up call; (detections, ms per image)."""
    predict(arrays[0])
    dets = []
    t0 = time.perf_counter()
    for a in arrays:
        dets.append(predict(a))
    return dets, (time.perf_counter() - t0) / len(arrays) * 1e3


def ours_predictor(ckpt: Path, conf: float, iou: float, max_det: int, scenes: dict[str, Any] | None = None
                   ) -> tuple[Callable[[np.ndarray], M.Detections], dict[str, Any]]:
    """A batch-1 predictor from a smartcash_fn checkpoint (its recipe rebuilds the model), and facts about the run.

    With ``scenes`` (from :func:`recipe_scenes`), the checkpoint's own validation scenes must be rendered alike
    (seed, size, scenario), so that it is judged on scenes of the kind it was validated on.
    """
    from smartcash_fn.run.build import build, make_data
    from smartcash_fn.run.folders import find_checkpoint
    from smartcash_fn.run.resume import recipe_of, state_in

    found = find_checkpoint(ckpt, prefer=("best", "last"))
    recipe = recipe_of(found)
    built = build(recipe, None, quiet=True)
    state = state_in(found, built.template)
    _, val, info = make_data(recipe)
    va = getattr(val, "dataset", None)
    if scenes is not None and scenes["kind"] == "rendered" and isinstance(va, rupiah.RupiahScenes):
        mine, theirs = (va.seed, va.size, va.scenario), (scenes["seed"], scenes["size"], scenes["scenario"])
        if mine != theirs:
            raise BenchError(f"{ckpt}: its recipe renders validation scenes with (seed, size, scenario) {mine}, "
                             f"the export has {theirs}; match them with --our-set")
    names = tuple(info.get("class_names", ()))
    if names != rupiah.CLASSES:
        raise BenchError(f"{ckpt}: the model's classes {names} are not rupiah.CLASSES in order")
    layout = Layout.of(info["groups"])
    v = built.loop.validation
    ema = v is not None and v.use_ema and "ema" in state.extras
    params = state.extras["ema"]["params"] if ema else None
    buffers = state.extras["ema"]["buffers"] if ema else None
    state.model.train(False)

    def predict(a: np.ndarray) -> M.Detections:
        with torch.inference_mode():
            x = torch.from_numpy(a).permute(2, 0, 1).float().div_(255.0).unsqueeze(0)
            out = state.apply(x, params=params, buffers=buffers) if ema else state.apply(x)
            d = decode(out, layout, conf=conf, iou=iou, max_det=max_det)[0]
        return M.Detections(d.boxes, d.scores, d.labels)

    return predict, {"ema": ema}


def class_table(names: Any, where: str) -> torch.Tensor:
    """The peer's class index -> our class id (``rupiah.CLASSES``), matched by name; ``names`` as YOLO gives them.

    ``class_table({0: "l3_sign", 1: "001"}, "w.pt").tolist() == [14, 0]``
    """
    try:
        return torch.tensor([rupiah.CLASSES.index(str(names[i])) for i in range(len(names))], dtype=torch.int64)
    except (ValueError, KeyError):
        raise BenchError(f"{where}: its classes {names} are not rupiah.CLASSES") from None


def peer_detections(boxes: Any, table: torch.Tensor) -> M.Detections:
    """One image's peer predictions (an Ultralytics ``Results.boxes``: ``xyxy``, ``conf``, ``cls``) as our Detections.

    Boxes stay xyxy pixels of the same input, scores the same float32
    confidences, classes go through ``table`` (:func:`class_table`); no
    prediction is dropped, reordered or rounded — the test in
    ``tests/test_peer_benchmark.py`` holds our evaluator on the converted
    set equal to pycocotools on the peer's own (1e-6)::

        peer_detections(results[0].boxes, class_table(model.names, "best.pt"))
    """
    xyxy = torch.as_tensor(boxes.xyxy).detach().cpu().float().reshape(-1, 4)
    conf = torch.as_tensor(boxes.conf).detach().cpu().float().reshape(-1)
    cls = torch.as_tensor(boxes.cls).detach().cpu().reshape(-1).long()
    return M.Detections(xyxy, conf, table[cls])


def peer_predictor(weights: Path, imgsz: int, conf: float, iou: float, max_det: int
                   ) -> tuple[Callable[[np.ndarray], M.Detections], dict[str, Any]]:
    """A batch-1 predictor of a YOLO checkpoint (classes mapped by name to rupiah.CLASSES).

    It decodes as ``YOLO.predict`` does — one class per box (no multi-label
    NMS), at the ``conf``, ``iou`` and ``max_det`` given — which is not how
    Ultralytics' validator decodes (multi-label, IoU 0.7, 300 per image, its
    own letterbox): the validator's figure and ours differ for that reason
    too, not only by the metric (see :func:`ultralytics_scores`).
    """
    from ultralytics import YOLO

    model = YOLO(str(weights))
    table = class_table(model.names, str(weights))
    speeds: list[dict[str, float]] = []

    def predict(a: np.ndarray) -> M.Detections:
        r = model.predict(np.ascontiguousarray(a[:, :, ::-1]), imgsz=imgsz, conf=conf, iou=iou, max_det=max_det,
                          device="cpu", verbose=False)[0]  # numpy input is BGR, as from cv2
        speeds.append(dict(r.speed))
        return peer_detections(r.boxes, table)

    return predict, {"speeds": speeds}


IOUS = np.linspace(0.5, 0.95, 10)
"""The ten IoU thresholds of mAP@0.5:0.95."""


def match_like_ultralytics(dets: M.Detections, target: M.Targets, ious: np.ndarray = IOUS) -> np.ndarray:
    """Which detections of one image are true positives at each IoU threshold, the way Ultralytics' validator says.

    At each threshold every (detection, target) pair of the same class with
    IoU at least the threshold is a candidate; candidates are taken by IoU,
    highest first, each detection and each target at most once. (COCO
    instead takes detections by score.) Returns bool ``[detections, thresholds]``::

        tp = match_like_ultralytics(dets[0], targets[0])   # tp[:, 0]: true positives at IoU 0.5
    """
    boxes, labels = torch.as_tensor(dets.boxes).double().reshape(-1, 4), torch.as_tensor(dets.labels).reshape(-1)
    gboxes, glabels = torch.as_tensor(target.boxes).double().reshape(-1, 4), torch.as_tensor(target.labels).reshape(-1)
    tp = np.zeros((len(boxes), len(ious)), dtype=bool)
    if not len(boxes) or not len(gboxes):
        return tp
    iou = (torchvision.ops.box_iou(gboxes, boxes) * (glabels[:, None] == labels[None, :])).numpy()  # [targets, dets]
    for k, t in enumerate(ious):
        gi, di = np.nonzero(iou >= t)
        order = np.argsort(-iou[gi, di], kind="stable")
        used_d, used_g = set(), set()
        for g, d in zip(gi[order], di[order]):
            if d not in used_d and g not in used_g:
                used_d.add(d)
                used_g.add(g)
                tp[d, k] = True
    return tp


def ultralytics_scores(dets: Sequence[M.Detections], targets: Sequence[M.Targets],
                       ap_per_class: Callable[..., Any] | None = None) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 of a prediction set by Ultralytics' own metric (``ultralytics.utils.metrics.ap_per_class``).

    The same predictions our evaluator scores, matched as Ultralytics'
    validator matches (:func:`match_like_ultralytics`) and integrated by its
    ``ap_per_class``: the two figures side by side separate what the metric
    does from what the decoding does. ``ap_per_class`` defaults to
    Ultralytics' (an ImportError without it); a test passes a fake::

        ultralytics_scores(dets, targets)   # {"mAP50": 0.31, "mAP50-95": 0.17}
    """
    if ap_per_class is None:
        from ultralytics.utils.metrics import ap_per_class
    tp = [match_like_ultralytics(d, t) for d, t in zip(dets, targets)]
    conf = [torch.as_tensor(d.scores).double().reshape(-1).numpy() for d in dets]
    pred_cls = [torch.as_tensor(d.labels).reshape(-1).numpy() for d in dets]
    target_cls = [torch.as_tensor(t.labels).reshape(-1).numpy() for t in targets]
    out = ap_per_class(np.concatenate(tp), np.concatenate(conf), np.concatenate(pred_cls),
                       np.concatenate(target_cls))
    ap = np.asarray(out[5])  # [classes with targets, 10]: every version returns (tp, fp, p, r, f1, ap, ...)
    return {"mAP50": float(ap[:, 0].mean()) if ap.size else 0.0, "mAP50-95": float(ap.mean()) if ap.size else 0.0}


# --------------------------------------------------------------------------- training


def train_ours(recipe_path: Path, sets: Sequence[str], run_dir: Path, log: Path, say: Callable[[str], None]
               ) -> dict[str, Any]:
    """``smartcash-fn train`` in a subprocess; wall time, checkpoint, epochs and training samples seen."""
    cmd = [sys.executable, "-m", "smartcash_fn", "train", str(recipe_path), "--out", str(run_dir), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    say("smartcash_fn: " + " ".join(cmd[2:]))
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"smartcash-fn train exited {proc.returncode}; log {log}:\n{text[-3000:]}")
    facts = run_facts(run_dir)
    facts.update({"wall_s": wall, "log": str(log), "command": " ".join(cmd)})
    say(f"smartcash_fn: trained in {wall:.0f} s ({facts['epochs']} epochs, {facts['samples_seen']} samples)")
    return facts


def run_facts(run_dir: Path) -> dict[str, Any]:
    """The best (else last) checkpoint of a run folder and its progress: epochs, steps, samples seen."""
    from smartcash_fn.run.folders import find_checkpoint

    best = find_checkpoint(run_dir, prefer=("best", "last")).path
    st = find_checkpoint(run_dir, prefer=("last",)).obj["state"]
    p = st["progress"]
    batch = int(((st.get("recipe") or {}).get("data") or {}).get("batch_size") or 0)
    hist = st["history"]["epochs"]
    return {"checkpoint": str(best), "epochs": int(p["epoch"]) + (1 if p["batch"] else 0), "steps": int(p["step"]),
            "samples_seen": int(p["step"]) * batch, "last_val": dict(hist[-1]) if hist else {}}


def ultralytics_env(work: Path, threads: int) -> None:
    """Ultralytics offline, with a config folder (and a font) of its own and ``threads`` torch threads.

    Left alone, importing Ultralytics sets ``OMP_NUM_THREADS=1`` for this process and its children (our
    training subprocess included), and each of its trainers, predictors and validators sets torch to
    ``cpu_count - 1`` threads (1 on two cores); here both sides get ``threads``.
    """
    cfg = work / "ultralytics_config"
    cfg.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    font = cfg / "Arial.ttf"
    if not font.exists():
        import matplotlib

        shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    import ultralytics.utils.torch_utils as tu

    tu.NUM_THREADS = threads  # what its select_device hands torch.set_num_threads on a CPU
    torch.set_num_threads(threads)


def train_peer(data_yaml: Path, imgsz: int, minutes: float, batch: int, cache: Any, work: Path,
               say: Callable[[str], None]) -> dict[str, Any]:
    """YOLOv8n from scratch for ``minutes`` of wall clock (``time=``): wall time, weights, epochs, samples."""
    from ultralytics import YOLO, settings

    settings.update({"sync": False})
    model = YOLO("yolov8n.yaml")
    counts = {"batches": 0, "samples": 0}

    def counting(trainer: Any) -> None:  # every training batch passes preprocess_batch once
        counts["torch_threads"] = torch.get_num_threads()
        inner = trainer.preprocess_batch

        def preprocess_batch(batch: dict) -> dict:
            counts["batches"] += 1
            counts["samples"] += int(len(batch["img"]))
            return inner(batch)

        trainer.preprocess_batch = preprocess_batch

    model.add_callback("on_train_start", counting)
    say(f"ultralytics: YOLOv8n from scratch, {minutes:g} min, imgsz {imgsz}, batch {batch}, cache {cache}")
    t0 = time.perf_counter()
    # epochs stays at Ultralytics' default (100): `time=` replans them after the first epoch anyway, but
    # optimizer "auto" is chosen before that from epochs x batches, and 1000 epochs made it pick MuSGD, whose
    # Newton-Schulz iterations took most of each step on a CPU; a user giving `time=` gets AdamW.
    model.train(data=str(data_yaml), imgsz=imgsz, time=minutes / 60.0, batch=batch, workers=2,
                device="cpu", pretrained=False, amp=False, plots=False, cache=cache, project=str(work / "ultralytics"),
                name="train", exist_ok=False, seed=0, deterministic=True, verbose=False)
    wall = time.perf_counter() - t0
    tr = model.trainer
    save_dir = Path(tr.save_dir)
    best = save_dir / "weights" / "best.pt"
    if not best.is_file():
        best = save_dir / "weights" / "last.pt"
    facts = {"wall_s": wall, "weights": str(best), "epochs": int(tr.epoch) + 1, "batches": counts["batches"],
             "samples_seen": counts["samples"], "save_dir": str(save_dir),
             "torch_threads": counts.get("torch_threads"), "optimizer": type(tr.optimizer).__name__}
    say(f"ultralytics: trained in {wall:.0f} s ({facts['epochs']} epochs, {facts['samples_seen']} samples, "
        f"{facts['optimizer']})")
    return facts


def peer_own_val(weights: Path, data_yaml: Path, imgsz: int, work: Path) -> dict[str, float]:
    """Ultralytics' own validation of its weights (its defaults: conf 0.001, IoU 0.7), for reference."""
    from ultralytics import YOLO

    m = YOLO(str(weights)).val(data=str(data_yaml), imgsz=imgsz, batch=16, device="cpu", plots=False, workers=2,
                                project=str(work / "ultralytics"), name="val", exist_ok=True, verbose=False)
    return {"mAP50": float(m.box.map50), "mAP50-95": float(m.box.map)}


# --------------------------------------------------------------------------- evaluating


def evaluate_sets(predict: Callable[[np.ndarray], M.Detections], sets: dict[str, tuple],
                  theirs: Callable[..., dict[str, float]] | None = None) -> dict[str, Any]:
    """Our evaluator on each named validation set; the main set also gives the inference ms per image.

    With ``theirs`` (:func:`ultralytics_scores`) the same predictions are
    also scored by Ultralytics' metric, under ``"ultralytics_metric"``.
    """
    out: dict[str, Any] = {}
    for name, (_, arrays, targets) in sets.items():
        dets, ms = timed_predictions(predict, arrays)
        rep = M.evaluate(dets, targets, rupiah.CLASSES, rupiah.LAYERS, conf=0.25, max_dets=100)
        out[name] = {"images": len(arrays), "ms_per_image": ms, "metrics": rep.metrics(), "table": rep.table()}
        if theirs is not None:
            out[name]["ultralytics_metric"] = theirs(dets, targets)
    return out


def _f(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return format(v, spec) if isinstance(v, float) else str(v)


def side_by_side(ours: dict[str, Any], peer: dict[str, Any]) -> str:
    """The comparison table: training, then mAP overall, per layer and per scenario, then inference time."""
    rows: list[tuple[str, str, str]] = [
        ("train wall time (s)", _f(ours.get("wall_s"), ".0f"), _f(peer.get("wall_s"), ".0f")),
        ("epochs (last may be partial)", _f(ours.get("epochs")), _f(peer.get("epochs"))),
        ("training samples seen", _f(ours.get("samples_seen")), _f(peer.get("samples_seen"))),
    ]
    eo, ep = ours.get("eval", {}), peer.get("eval", {})
    main_o, main_p = eo.get("val", {}).get("metrics", {}), ep.get("val", {}).get("metrics", {})
    for key in ("mAP50", "mAP50-95", "precision", "recall"):
        rows.append((f"val {key}", _f(main_o.get(key)), _f(main_p.get(key))))
    for layer in rupiah.LAYERS:
        for key in ("mAP50", "mAP50-95"):
            rows.append((f"val {key} {layer}", _f(main_o.get(f"{key}/{layer}")), _f(main_p.get(f"{key}/{layer}"))))
    for s in SCENARIO_NAMES:
        mo, mp = eo.get(s, {}).get("metrics", {}), ep.get(s, {}).get("metrics", {})
        for key in ("mAP50", "mAP50-95"):
            rows.append((f"scenario {s} {key}", _f(mo.get(key)), _f(mp.get(key))))
    rows.append(("inference ms/image (batch 1)", _f(eo.get("val", {}).get("ms_per_image"), ".1f"),
                 _f(ep.get("val", {}).get("ms_per_image"), ".1f")))
    um_o = eo.get("val", {}).get("ultralytics_metric") or {}
    um_p = ep.get("val", {}).get("ultralytics_metric") or {}
    rows.append(("same predictions, Ultralytics' metric mAP50 / mAP50-95",
                 f"{_f(um_o.get('mAP50'))} / {_f(um_o.get('mAP50-95'))}",
                 f"{_f(um_p.get('mAP50'))} / {_f(um_p.get('mAP50-95'))}"))
    own = peer.get("own_val") or {}
    rows.append(("ultralytics' own val mAP50 / mAP50-95 (its decoding)", "",
                 f"{_f(own.get('mAP50'))} / {_f(own.get('mAP50-95'))}"))
    w = max(len(r[0]) for r in rows)
    lines = [f"{'':<{w}}  {'smartcash_fn':>14}  {'YOLOv8n':>14}", "-" * (w + 32)]
    lines += [f"{a:<{w}}  {b:>14}  {c:>14}" for a, b, c in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("runs/peer_ultralytics/data"),
                    help="the YOLO-format export, reused when identical (default runs/peer_ultralytics/data)")
    ap.add_argument("--work", type=Path, default=Path("runs/peer_ultralytics"),
                    help="both training runs, their logs, the Ultralytics config (default runs/peer_ultralytics)")
    ap.add_argument("--recipe", type=Path, default=None, help="our recipe (default: the built-in default recipe)")
    ap.add_argument("--our-set", dest="our_sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of our recipe, as smartcash-fn train --set (repeatable)")
    ap.add_argument("--minutes", type=float, default=None, help="the peer's wall-clock training budget (default 10)")
    ap.add_argument("--imgsz", type=int, default=None, help="input size of both (default: the recipe's data size)")
    ap.add_argument("--batch", type=int, default=16, help="the peer's batch size (Ultralytics' default 16)")
    ap.add_argument("--cache", default="ram", choices=("ram", "disk", "false"),
                    help="the peer's image cache (default ram: decoded once, kinder to its CPU time)")
    ap.add_argument("--iou", type=float, default=0.6, help="NMS IoU of both at evaluation (default 0.6)")
    ap.add_argument("--scenario-val", type=int, default=None,
                    help="validation scenes per scenario (default: the recipe's validation count)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of both sides, training and evaluation (default: the CPU count)")
    ap.add_argument("--export-workers", type=int, default=2, help="processes rendering the export (default 2)")
    ap.add_argument("--sides", default="ours,peer", choices=("ours,peer", "ours", "peer"),
                    help="which detectors to train and evaluate (default both)")
    ap.add_argument("--ours-ckpt", type=Path, default=None, help="evaluate this checkpoint instead of training ours")
    ap.add_argument("--peer-weights", type=Path, default=None, help="evaluate these YOLO weights instead of training")
    ap.add_argument("--quick", action="store_true",
                    help=f"a smoke check: {QUICK['train']}/{QUICK['val']} scenes at {QUICK['size']} px, our recipe "
                         f"{QUICK['epochs']} epochs, the peer {QUICK['minutes']:g} minute")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    return ap.parse_args(argv)


def quick_sets(recipe_path: Path) -> list[str]:
    """The ``--set`` overrides that shrink a ``rupiah_synthetic`` recipe to the smoke check's size."""
    from smartcash_fn.run.recipe import load

    recipe = load(recipe_path)
    sets = [f"train.epochs={QUICK['epochs']}"]
    if recipe.data.use == "rupiah_synthetic":
        sets += [f"data.params.train={QUICK['train']}", f"data.params.val={QUICK['val']}",
                 f"data.params.size={QUICK['size']}"]
    if recipe.schedule.warmup_steps:
        sets.append("schedule.warmup_steps=2")
    return sets


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    say = lambda text: print(text, flush=True)  # noqa: E731
    from smartcash_fn.run.commands import DEFAULT_RECIPE

    recipe_path = (args.recipe or DEFAULT_RECIPE).resolve()
    minutes = args.minutes if args.minutes is not None else (QUICK["minutes"] if args.quick else 10.0)
    threads = args.threads or os.cpu_count() or 1
    bad = []
    if not recipe_path.is_file():
        bad.append(f"--recipe {recipe_path}: no such file")
    if minutes <= 0 or args.batch < 1 or not 0 < args.iou <= 1 or args.export_workers < 0 or threads < 1:
        bad.append("--minutes, --batch and --threads must be > 0, --iou in (0, 1], --export-workers >= 0")
    for flag, p in (("--ours-ckpt", args.ours_ckpt), ("--peer-weights", args.peer_weights)):
        if p is not None and not p.is_file():
            bad.append(f"{flag} {p}: no such file")
    if bad:
        for b in bad:
            print(f"error: {b}", file=sys.stderr)
        return 2
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:
        print("error: ultralytics is not installed; it is an optional, benchmark-only dependency: "
              ".venv/bin/pip install ultralytics", file=sys.stderr)
        return 2

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ultralytics_env(work, threads)
    sets = (quick_sets(recipe_path) if args.quick else []) + list(args.our_sets)
    result: dict[str, Any] = {"machine": machine(), "torch": torch.__version__, "quick": args.quick,
                              "recipe": str(recipe_path), "our_sets": sets, "minutes": minutes, "iou": args.iou,
                              "threads": threads}
    say(f"machine: {result['machine']}")
    say("note: a shared machine gives noisy times; run this alone on a quiet machine for figures to quote")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        say(f"warning: load average {load:.1f} on {cores} cores: other processes are computing; both trainings get "
            "less CPU than the budget says, and multi-threaded torch slows down far more than in proportion")
    try:
        scenes = recipe_scenes(recipe_path, sets)
        imgsz = args.imgsz or scenes["size"]
        if imgsz != scenes["size"]:
            raise BenchError(f"--imgsz {imgsz}: our recipe renders {scenes['size']} px; set both with "
                             f"--our-set data.params.size={imgsz} --imgsz {imgsz}")
        scenario_val = args.scenario_val or (QUICK["scenario_val"] if args.quick else scenes.get("val") or 200)
        result.update(scenes=scenes, imgsz=imgsz, scenario_val=scenario_val)
        paths = export_data(args.data_dir.resolve(), scenes, scenario_val, args.export_workers, say)
        sets_eval = {"val": val_set(paths["main"], imgsz)}
        sets_eval.update({s: val_set(p, imgsz) for s, p in paths["scenarios"].items()})
        # the same predictions scored by Ultralytics' metric too, whenever it is installed
        theirs = ultralytics_scores if importlib.util.find_spec("ultralytics") is not None else None

        ours: dict[str, Any] = {}
        peer: dict[str, Any] = {}
        if "ours" in args.sides:
            if args.ours_ckpt is None:
                from smartcash_fn.run.folders import free_folder

                run_dir = free_folder(work / "smartcash_fn")
                ours = train_ours(recipe_path, sets, run_dir, work / f"{run_dir.name}.log", say)
            else:
                ours = {"checkpoint": str(args.ours_ckpt)}
                try:
                    from smartcash_fn.run.folders import run_folder_of

                    ours.update({k: v for k, v in run_facts(run_folder_of(args.ours_ckpt)).items()
                                 if k != "checkpoint"})
                except BenchError:
                    pass
            predict, extra = ours_predictor(Path(ours["checkpoint"]), 0.001, args.iou, 100, scenes)
            ours.update(extra)
            ours["eval"] = evaluate_sets(predict, sets_eval, theirs)
            say(f"smartcash_fn ({ours['checkpoint']}) on the validation split:\n{ours['eval']['val']['table']}")

        if "peer" in args.sides:
            if args.peer_weights is None:
                peer = train_peer(paths["main"], imgsz, minutes, args.batch,
                                  False if args.cache == "false" else args.cache, work, say)
            else:
                peer = {"weights": str(args.peer_weights)}
            predict, extra = peer_predictor(Path(peer["weights"]), imgsz, 0.001, args.iou, 100)
            peer["eval"] = evaluate_sets(predict, sets_eval, theirs)
            sp = extra["speeds"]
            peer["ultralytics_speed_ms"] = {k: float(np.mean([s[k] for s in sp])) for k in sp[0]} if sp else {}
            peer["own_val"] = peer_own_val(Path(peer["weights"]), paths["main"], imgsz, work)
            say(f"YOLOv8n ({peer['weights']}) on the validation split:\n{peer['eval']['val']['table']}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    result["smartcash_fn"], result["ultralytics"] = ours, peer
    say("")
    with_sets = f" with {' '.join(sets)}" if sets else ""
    say(f"side by side ({imgsz} px, {threads} torch thread(s) each; our recipe {recipe_path.name}{with_sets}; "
        f"the peer's budget {minutes:g} min; conf 0.001, NMS IoU {args.iou}, 100 per image, our evaluator):")
    say(side_by_side(ours, peer))
    if args.json is not None:
        for side in (ours, peer):
            for ev in side.get("eval", {}).values():
                ev.pop("table", None)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        say(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
