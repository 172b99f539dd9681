"""A trained detector at work: load it from a checkpoint, evaluate it on a split, predict on images.

The checkpoint carries its resolved recipe, so the model is rebuilt from it
and the params are checked against it. Evaluation reports every number
SmartCash is judged by — precision, recall, F1, mAP@0.5 and mAP@0.5:0.95 per
class, per layer, overall and per scenario — and the inference time per
image; prediction maps the boxes back to each image's own pixels::

    det = load_detector("runs/rupiah_synthetic")                # its best.pt
    result = evaluate_split(det, split="val", scenario="low_light")
    print(result.text()); result.as_json()["overall"]["mAP50"]
    found = predict_files(det, ["photo.jpg"], conf=0.25)        # [(path, image, Detections)]

``smartcash-fn eval`` and ``smartcash-fn predict`` are thin shells around these.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import attrs
import torch

from ..errors import CheckpointError, DataError, RecipeError
from ..optim import frozen
from ..run import registry
from ..run.build import make_data, make_model_factory
from ..run.folders import find_checkpoint
from ..run.recipe import Recipe
from ..run.resume import recipe_of, state_in
from ..state import TrainState
from . import scenes as rupiah
from .components import Decoder, Relabeled, detector, detector_info, layer_order, rupiah_synthetic, yolo_dataset
from .detection import Layout
from .metrics import DetectionReport, Detections, by_layer, collect_detections, evaluate
from .yolo import IMAGE_SUFFIXES, YoloDataset, letterbox, load_image, read_data_yaml

# --------------------------------------------------------------------------- loading


@attrs.frozen
class LoadedDetector:
    """A detector rebuilt from a checkpoint: its state (params), recipe, layout, input size and classes.

    ``det = load_detector("runs/a/checkpoints/best.pt"); det.apply(images)``
    """

    path: Path
    state: TrainState
    recipe: Recipe
    layout: Layout
    image_size: int
    class_names: tuple[str, ...]
    layers: Mapping[str, tuple[str, ...]]
    data_yaml: str | None = None

    def apply(self, images: torch.Tensor) -> Any:
        """The model's raw outputs on ``images`` (eval mode, no gradient)."""
        return self.state.apply(images)


def _data_default(recipe: Recipe, key: str) -> Any:
    """``data.params[key]``, else the data factory's default for it (None when it has none)."""
    if key in recipe.data.params:
        return recipe.data.params[key]
    fn = registry.resolve("data", recipe.data.use, recipe.where("data", "use"))
    p = (registry.parameters(fn) or {}).get(key)
    return None if p is None or p.default is p.empty else p.default


def _data_kind(recipe: Recipe) -> str:
    fn = registry.resolve("data", recipe.data.use, recipe.where("data", "use"))
    return "synthetic" if fn is rupiah_synthetic else "yolo" if fn is yolo_dataset else "other"


def require_detector(recipe: Recipe, data_info: Mapping[str, Any], where: str) -> None:
    """Refuse the checkpoint at ``where`` unless its recipe trains a detector: eval and predict read detection runs.

    A detector's model factory takes the detection layout (``groups``), which
    its data's info gives; a classifier's (``mlp``, ``cnn``) takes neither::

        require_detector(recipe_of(found), found.obj["state"]["data_info"], str(found.path))
    """
    fn = registry.resolve("model", recipe.model.use, recipe.where("model", "use"))
    takes = registry.parameters(fn)
    if fn is detector or "groups" in data_info or takes is None or "groups" in takes:
        return
    raise CheckpointError(
        f"{where}: not a detector's checkpoint: its recipe trains model.use = {recipe.model.use!r} on "
        f"data.use = {recipe.data.use!r} (validation.metrics = {recipe.validation.metrics!r}); eval and predict "
        "read the checkpoints of detection runs (model.use = \"detector\", e.g. smartcash-fn train "
        "rupiah_synthetic)")


def _yolo_info(data_yaml: str | os.PathLike, size: int) -> tuple[dict[str, Any], Any]:
    spec = read_data_yaml(Path(data_yaml))
    ordered, layers, _ = layer_order(spec.names)
    return detector_info(ordered, layers, size), spec


def load_detector(target: str | os.PathLike, data_yaml: str | os.PathLike | None = None, *,
                  trust_code: bool = False) -> LoadedDetector:
    """The detector in checkpoint ``target`` (a file, or a run folder: its best.pt), params verified.

    The classes come from the recipe's data (the synthetic classes, or its
    ``data.yaml``), or from ``data_yaml`` when given — its classes must fit
    the checkpoint's heads. When the recipe validates the EMA params
    (``validation.use_ema``), those are the detector's params::

        det = load_detector("runs/rupiah_synthetic", data_yaml="datasets/rupiah/data.yaml")

    The checkpoint's recipe may name only built-in components unless
    ``trust_code`` (:func:`smartcash_fn.run.resume.recipe_of`).
    """
    found = find_checkpoint(target, prefer=("best", "last"))
    path = found.path
    recipe = recipe_of(found, trust_code=trust_code)
    stored = found.obj["state"].get("data_info") or {}
    require_detector(recipe, stored, str(path))
    size = stored.get("image_size") or _data_default(recipe, "size")
    if not isinstance(size, int):
        raise RecipeError(f"{path} (its recipe): data.params.size: expected the input size in pixels, got {size!r}")
    used_yaml = None
    if data_yaml is not None:
        info, spec = _yolo_info(data_yaml, size)
        used_yaml = str(spec.source)
    elif all(k in stored for k in ("groups", "class_names", "layers")):  # written by build: one read is enough
        info = dict(stored)
        used_yaml = recipe.data.params.get("data_yaml")
    elif _data_kind(recipe) == "synthetic":
        info = detector_info(rupiah.CLASSES, rupiah.LAYERS, size)
    elif _data_kind(recipe) == "yolo":
        info, spec = _yolo_info(recipe.data.params["data_yaml"], size)
        used_yaml = str(spec.source)
    else:
        info = dict(make_data(recipe)[2])
    for key in ("groups", "class_names", "layers"):
        if key not in info:
            raise RecipeError(f"{recipe.where('data', 'use')}: the data's info has no {key!r}; a detector's data "
                              "factory gives groups, image_size, class_names and layers")
    template = TrainState.create(make_model_factory(recipe, info), frozen(), seed=recipe.run.seed)
    try:
        state = state_in(found, template)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a checkpoint of another model
        hint = f"; {data_yaml} has {len(info['class_names'])} classes" if data_yaml is not None else ""
        raise CheckpointError(f"{e}{hint}") from None
    state = state.replace(model=template.model, optimizer=template.optimizer)
    ema = state.extras.get("ema")
    if recipe.validation.use_ema and ema is not None:  # the params validation measured (and best.pt was picked by)
        state = state.replace(params=ema["params"], buffers=ema["buffers"])
    return LoadedDetector(path=path, state=state, recipe=recipe, layout=Layout.of(info["groups"]),
                          image_size=int(info.get("image_size", size)), class_names=tuple(info["class_names"]),
                          layers={k: tuple(v) for k, v in info["layers"].items()}, data_yaml=used_yaml)


# --------------------------------------------------------------------------- evaluation data


@attrs.frozen
class ScenesWithScenario:
    """Synthetic scenes whose targets also name the scenario each was drawn from (``target["scenario"]``).

    ``ScenesWithScenario("val", 200, seed=0, size=256)[3][1]["scenario"]`` -> e.g. ``"low_light"``
    """

    split: str
    n: int
    seed: int = 0
    size: int = 256
    scenario: str = "mixed"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        s = rupiah.scene(self.seed, self.split, int(index), self.size, self.scenario)
        return s.image.float().div_(255.0), {"boxes": s.boxes[s.kept], "labels": s.labels[s.kept],
                                             "scenario": s.scenario}


def evaluation_data(det: LoadedDetector, split: str = "val", scenario: str | None = None,
                    n: int | None = None) -> tuple[Any, str]:
    """The dataset to evaluate ``det`` on, and a description of it.

    Synthetic data: ``n`` scenes of ``split`` (default: the recipe's
    validation count) drawn from ``scenario`` (default: the recipe's). A
    YOLO dataset (the recipe's, or the ``data_yaml`` given to
    :func:`load_detector`): the ``split`` folder, bad files skipped::

        data, text = evaluation_data(det, "test", scenario="occlusion")
    """
    if split not in ("train", "val", "test"):
        raise DataError(f"--split {split}: expected val or test (or train)")
    if det.data_yaml is None:
        if _data_kind(det.recipe) != "synthetic":
            raise DataError(f"{det.path}: its recipe's data ({det.recipe.data.use}) is neither rupiah_synthetic nor "
                            "yolo_dataset; give --data DATA_YAML")
        if scenario is not None:
            rupiah.resolve_scenario(scenario)
        scen = scenario or _data_default(det.recipe, "val_scenario") or _data_default(det.recipe, "scenario") or "mixed"
        count = n or _data_default(det.recipe, "val") or 200
        seed = _data_default(det.recipe, "seed") or 0
        return (ScenesWithScenario(split, int(count), int(seed), det.image_size, scen),
                f"synthetic {split} split: {count} scenes, scenario {scen}, seed {seed}, {det.image_size} px")
    if scenario is not None:
        raise DataError(f"--scenario {scenario}: scenarios are the synthetic data's; {det.data_yaml} is a YOLO dataset")
    if n is not None:
        raise DataError("--n applies to the synthetic data only; a YOLO split is evaluated whole")
    spec = read_data_yaml(Path(det.data_yaml))
    ds = YoloDataset.scan(spec, split, size=det.image_size, on_bad="skip")
    _, _, table = layer_order(spec.names)
    data = ds if table == tuple(range(len(table))) else Relabeled(ds, table)
    skipped = f", {len(ds.problems)} bad file(s)/line(s) skipped" if ds.problems else ""
    return data, f"{spec.source} {split} split: {len(ds)} images{skipped}, {det.image_size} px"


def _collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


# --------------------------------------------------------------------------- evaluation


def _row(report: DetectionReport, idx: list[int] | None = None) -> dict[str, float | None]:
    """P, R, F1, mAP50, mAP50-95 over the classes ``idx`` (all) that have ground truth."""
    idx = list(range(len(report.class_names))) if idx is None else idx
    ix = torch.tensor(idx, dtype=torch.int64)
    has = report.has_gt[ix]

    def mean(per_class: torch.Tensor) -> float | None:
        x = per_class[ix][has]
        x = x[~torch.isnan(x)]
        return float(x.mean()) if x.numel() else None

    return {"gt": int(report.num_gt[ix].sum()), "dets": int(report.num_det[ix].sum()),
            "precision": mean(report.precision), "recall": mean(report.recall), "F1": mean(report.f1),
            "mAP50": mean(report.ap50), "mAP50-95": mean(report.ap50_95)}


def _summary(report: DetectionReport) -> dict[str, Any]:
    return {"overall": _row(report),
            "layers": {layer: _row(report, report.layer_indices(layer)) for layer in report.layers}}


@attrs.frozen
class Evaluation:
    """What :func:`evaluate_split` measured: the report over all images, one per scenario, and the timing.

    ``result.text()`` is the table ``smartcash-fn eval`` prints; ``result.as_json()`` the JSON it writes.
    """

    checkpoint: Path
    data: str
    split: str
    report: DetectionReport
    scenarios: Mapping[str, DetectionReport]
    scenario_images: Mapping[str, int]
    ms_per_image: float
    batch_size: int
    threads: int
    boxes: DetectionReport | None = None
    """:func:`~smartcash_fn.smartcash.metrics.by_layer` over all images: each layer one class, so its AP50-95
    against its AP50 says how tight the boxes are apart from the class they name (None without layers)."""

    def as_json(self) -> dict[str, Any]:
        """Plain data: overall, per layer, per class, per scenario, and the inference time."""
        r = self.report
        classes = {}
        for c, name in enumerate(r.class_names):
            has = bool(r.has_gt[c])
            classes[name] = {"layer": next((l for l, ns in r.layers.items() if name in ns), None),
                             "gt": int(r.num_gt[c]), "dets": int(r.num_det[c]),
                             "precision": float(r.precision[c]) if has else None,
                             "recall": float(r.recall[c]) if has else None,
                             "F1": float(r.f1[c]) if has else None,
                             "AP50": None if math.isnan(float(r.ap50[c])) else float(r.ap50[c]),
                             "AP50-95": None if math.isnan(float(r.ap50_95[c])) else float(r.ap50_95[c])}
        return {"checkpoint": str(self.checkpoint), "data": self.data, "split": self.split,
                "images": r.num_images, "conf": r.conf, "max_dets": r.max_dets,
                "inference_ms_per_image": self.ms_per_image, "batch_size": self.batch_size,
                "threads": self.threads, **_summary(r), "classes": classes,
                "scenarios": {name: {"images": self.scenario_images[name], **_summary(rep)}
                              for name, rep in self.scenarios.items()},
                "boxes_by_layer": None if self.boxes is None else _summary(self.boxes)["overall"] | {
                    "layers": {layer: _row(self.boxes, [c]) for c, layer in enumerate(self.boxes.class_names)}}}

    def text(self) -> str:
        """The tables for people: per class and layer, then per scenario and layer, then the timing."""
        def f(v: float | None) -> str:
            return "    -" if v is None else f"{v:5.3f}"

        lines = [f"checkpoint: {self.checkpoint}", f"data: {self.data}", "", self.report.table(), ""]
        if self.boxes is not None:
            lines += ["boxes by layer (a box counts whatever class of its layer it names: how tight the boxes are,",
                      "apart from telling the classes apart)",
                      f"{'layer':<12} {'gt':>6} {'dets':>6}  AP50 AP50-95  AP50-95/AP50"]
            for c, layer in enumerate(self.boxes.class_names):
                r = _row(self.boxes, [c])
                ratio = None if not r["mAP50"] or r["mAP50-95"] is None else r["mAP50-95"] / r["mAP50"]
                lines.append(f"{layer:<12} {r['gt']:>6} {r['dets']:>6} {f(r['mAP50'])}   {f(r['mAP50-95'])}"
                             f"         {f(ratio)}")
            lines.append("")
        if self.scenarios:
            layers = list(self.report.layers)
            head = (f"{'scenario':<12} {'images':>6}     P     R    F1  mAP50 mAP50-95  "
                    + "  ".join(f"{l[:8]:>8}" for l in layers))
            lines += [head + "   (layer columns: mAP50)", "-" * len(head)]
            for name, rep in self.scenarios.items():
                s = _summary(rep)
                o = s["overall"]
                lines.append(f"{name:<12} {self.scenario_images[name]:>6} {f(o['precision'])} {f(o['recall'])} "
                             f"{f(o['F1'])}  {f(o['mAP50'])}    {f(o['mAP50-95'])}  "
                             + "  ".join(f"{f(s['layers'][l]['mAP50']):>8}" for l in layers))
            lines.append("")
        lines.append(f"inference: {self.ms_per_image:.2f} ms per image (batch {self.batch_size}, "
                     f"{self.threads} CPU thread(s), model and decoding, data loading excluded)")
        return "\n".join(lines)


def evaluate_split(det: LoadedDetector, split: str = "val", scenario: str | None = None, n: int | None = None,
                   batch_size: int | None = None, conf: float = 0.001, iou: float = 0.6, max_det: int = 100,
                   pr_conf: float = 0.25, workers: int = 0) -> Evaluation:
    """Evaluate ``det`` on ``split``: COCO mAP, P/R/F1 at ``pr_conf``, per class, layer and scenario, and ms per image.

    Detections are decoded at ``conf`` with NMS at ``iou``; the timing covers
    the model and decoding (not loading the data), after one warm-up batch::

        result = evaluate_split(load_detector("runs/rupiah_synthetic"), "val", scenario="small")
        result.as_json()["layers"]["nominal"]["mAP50"]
    """
    from torch.utils.data import DataLoader


    data, text = evaluation_data(det, split, scenario, n)
    bs = batch_size or det.recipe.data.val_batch_size or det.recipe.data.batch_size
    decoder = Decoder(det.layout, conf, iou, max_det)
    loader = DataLoader(data, batch_size=bs, shuffle=False, num_workers=workers, collate_fn=_collate)
    dets: list[Detections] = []
    tgts: list[Any] = []
    scen: list[str] = []
    seconds = 0.0
    warmed = False
    for batch in loader:
        if not warmed:
            decoder(det.apply, batch)
            warmed = True
        t0 = time.perf_counter()
        d, t = collect_detections(decoder, det.apply, [batch])
        seconds += time.perf_counter() - t0
        dets.extend(d)
        tgts.extend(t)
        scen.extend(str(x.get("scenario", "")) for x in batch[1])
    names, layers = det.class_names, det.layers
    report = evaluate(dets, tgts, names, layers, conf=pr_conf, max_dets=max_det)
    scenarios: dict[str, DetectionReport] = {}
    counts: dict[str, int] = {}
    present = [s for s in dict.fromkeys(scen) if s]
    order = [s for s in rupiah.SCENARIOS if s in present] + [s for s in present if s not in rupiah.SCENARIOS]
    for name in order:
        idx = [i for i, s in enumerate(scen) if s == name]
        scenarios[name] = evaluate([dets[i] for i in idx], [tgts[i] for i in idx], names, layers, conf=pr_conf,
                                   max_dets=max_det)
        counts[name] = len(idx)
    placed = {n for members in layers.values() for n in members} if layers else set()
    boxes = by_layer(dets, tgts, names, layers, iou=iou, max_dets=max_det) if placed >= set(names) else None
    return Evaluation(checkpoint=det.path, data=text, split=split, report=report, scenarios=scenarios,
                      scenario_images=counts, ms_per_image=1000.0 * seconds / max(1, len(dets)), batch_size=bs,
                      threads=torch.get_num_threads(), boxes=boxes)


# --------------------------------------------------------------------------- prediction


def image_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders' images (recursively) in name order.

    ``image_files(["photos/", "one.jpg"])``; a missing path or a folder without images is a DataError.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such image file or folder")
    return out


def _letterboxed(path: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, float, float, float]:
    """``(original uint8 image, letterboxed float image, scale, left, top)`` of an image file.

    The model sees the pixels ``eval`` and training give it (a large JPEG decoded smaller, ``load_image``'s
    ``fit``); the boxes are drawn on, and mapped back to, the image at its own size.
    """
    try:
        image = load_image(path)
        seen = load_image(path, fit=size)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to decode is bad input
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    boxed, probe = letterbox(seen, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), size)
    left, top = float(probe[0, 0]), float(probe[0, 1])
    drafted = image.shape[-1] // seen.shape[-1]  # 1, 2, 4 or 8: a whole scale (yolo.draft_scale)
    scale = (float(probe[0, 2]) - left) / drafted  # where the unit box lands: the letterbox's scale and offsets
    return (image * 255).round().to(torch.uint8), boxed, scale, left, top


def predict_files(det: LoadedDetector, files: Sequence[Path], conf: float = 0.25, iou: float = 0.6,
                  max_det: int = 100, batch_size: int = 8) -> list[tuple[Path, torch.Tensor, Detections]]:
    """Detections on each image file, boxes in that image's own pixels: ``[(path, uint8 image, Detections)]``.

    Each image is letterboxed to the model's input size; the boxes are mapped
    back and clipped to the image::

        for path, image, d in predict_files(det, image_files(["photos/"])): print(path, d.labels)
    """
    decoder = Decoder(det.layout, conf, iou, max_det)
    out: list[tuple[Path, torch.Tensor, Detections]] = []
    for start in range(0, len(files), batch_size):
        chunk = [(_p, *_letterboxed(_p, det.image_size)) for _p in files[start:start + batch_size]]
        with torch.no_grad():
            found = decoder(det.apply, (torch.stack([c[2] for c in chunk]),))
        for (path, image, _, scale, left, top), d in zip(chunk, found):
            h, w = image.shape[-2:]
            shift = torch.tensor([left, top, left, top])
            boxes = (d.boxes.float() - shift) / scale
            boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=boxes.dtype))
            out.append((path, image, Detections(boxes, d.scores, d.labels)))
    return out
