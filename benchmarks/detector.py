"""Detector throughput on the CPU: train and inference images/s per backbone, data images/s per worker, evaluator time.

Five parts, in one process, at the default recipe's input size and
batch size (256 px and 16 when the default recipe is not a detector recipe):

- **model** — per backbone (``cspdarknet``, ``efficientnet_b0``; ``efficientnet_b4``
  inference only, and only when one batch of it is fast enough): training
  images/s through smartcash_fn's composed step (forward, loss, gradients,
  clipping, the functional AdamW update: one ``step(state, batch)``) on one
  fixed, already rendered batch, so the data path is left out (the fastest
  of ``--steps`` timed steps; inference likewise the fastest of ``--repeats``
  calls: on a shared machine the fastest is the steadiest figure); inference
  images/s of the forward pass alone and with decoding (sigmoid scores, per
  class NMS: ``detection.decode`` at conf 0.001, IoU 0.6, 100 per image, the
  validation setting) at that batch size, and the latency of one image.
  When the default recipe builds the detector, the template state, step and
  batch come from ``build(recipe)`` with ``model.params.backbone`` set, so
  the step is exactly the recipe's (its transformers included);
- **precision** — the recipe's cspdarknet training step under each ``--precisions`` value
  (``train.precision``: fp32 and bf16 by default), built from the recipe with that key set, the
  precisions' steps alternated on one batch in one process, so a load on the machine falls on each
  alike: the median step and its ratio to the first precision's (on a CPU with AVX512-BF16 or AMX
  bf16 is the faster; where bf16 is emulated it is the slower, and ``precision = "auto"`` keeps fp32);
- **data** — synthetic render + augment images/s through ``LoaderData`` with
  0, 1 and 2 loader workers: the recipe's training scenes as it renders them
  (or ``RupiahScenes`` with ``Jitter``), and the same with ``yolo.Augment``
  (``yolo.affine``, torchvision v2 colour jitter on image and boxes); a whole
  epoch each, worker start-up included, as the loop sees it;
- **affine** — ``yolo.affine`` (one ``grid_sample`` on a grid built row by column) against
  torchvision v2's ``RandomAffine`` + ``ClampBoundingBoxes`` (bilinear, what ``yolo.Augment`` used
  until 2026-12-01) on the same images, boxes and moves at the recipe's size, alternated image by
  image on one thread: the median time of each and their ratio;
- **evaluator** — ``smartcash_fn.smartcash.metrics.evaluate`` against pycocotools on
  the same generated detections (``benchmarks/map_eval.py``'s scenes and
  runners), one torch thread, best of ``--repeats``; also checks that mAP
  agrees within 1e-4.

Figures go to stdout with the machine they came from, and to ``--json``::

    .venv/bin/python benchmarks/detector.py --quick                 # 1-2 minutes: no b4, b0 inference only
    .venv/bin/python benchmarks/detector.py --json detector.json    # the full run (several minutes)
    .venv/bin/python benchmarks/detector.py --backbones cspdarknet --skip data,evaluator
    .venv/bin/python benchmarks/detector.py --skip model,data,evaluator --steps 8   # fp32 against bf16

Exit status: 0 done, 1 when the evaluator disagrees with pycocotools, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import map_eval  # noqa: E402  (benchmarks/map_eval.py: the pycocotools comparison)
from smartcash_fn.smartcash import metrics as M  # noqa: E402
from smartcash_fn.smartcash import scenes as rupiah  # noqa: E402
from smartcash_fn.data import LoaderData  # noqa: E402
from smartcash_fn.smartcash.detection import Layout, decode, detection_loss  # noqa: E402
from smartcash_fn.smartcash.detector import Detector  # noqa: E402
from smartcash_fn.errors import UserError  # noqa: E402
from smartcash_fn.optim import adamw  # noqa: E402
from smartcash_fn.state import TrainState  # noqa: E402
from smartcash_fn.step import clip, make_step  # noqa: E402

LAYOUT = Layout.of({layer: len(names) for layer, names in rupiah.LAYERS.items()})
BACKBONES = ("cspdarknet", "efficientnet_b0", "efficientnet_b4")
TRAINED = ("cspdarknet", "efficientnet_b0")
"""Backbones whose training throughput is measured (b4 is measured for inference only)."""
QUICK_TRAINED = ("cspdarknet",)
"""Under ``--quick`` only cspdarknet is trained: an efficientnet_b0 step takes seconds on a 2-core CPU."""
FALLBACK_SIZE, FALLBACK_BATCH = 256, 16
DECODE = {"conf": 0.001, "iou": 0.6, "max_det": 100}


# --------------------------------------------------------------------------- what is measured


@attrs.frozen
class Setup:
    """One backbone ready to time: a template state at step 0, its step, a fixed training batch, and the source."""

    backbone: str
    template: TrainState
    step: Callable[[TrainState, Any], TrainState]
    batch: Any
    size: int
    batch_size: int
    source: str
    ema: bool = False


def _is_detector(template: TrainState, images: torch.Tensor) -> bool:
    model = template.model
    was = model.training
    model.train(False)
    try:
        with torch.no_grad():
            out = template.apply(images[:1])
    finally:
        model.train(was)
    return isinstance(out, dict) and set(out) == set(rupiah.LAYERS)


def recipe_setup(recipe_path: Path, backbone: str, sets: tuple[str, ...] = ()) -> Setup | None:
    """The recipe's template, step and first training batch, ``model.params.backbone`` and ``sets`` (``--set``
    overrides) set; None for no detector.

    ``recipe_setup(cli.DEFAULT_RECIPE, "cspdarknet", ('train.precision="bf16"',))``
    """
    from smartcash_fn.run.build import build
    from smartcash_fn.run.recipe import load

    plain = load(recipe_path)
    if plain.data.use not in ("rupiah_synthetic", "yolo_dataset") and ":" not in plain.model.use \
            and plain.model.use != "detector":
        return None
    recipe = load(recipe_path, [f'model.params.backbone="{backbone}"', *sets])
    built = build(recipe, None, quiet=True)
    batch = next(iter(built.loop.data.batches(built.template.seed, 0, 0)))
    if not (isinstance(batch, (tuple, list)) and isinstance(batch[0], torch.Tensor) and batch[0].ndim == 4):
        return None
    if not _is_detector(built.template, batch[0]):
        return None
    v = built.loop.validation
    return Setup(backbone, built.template, built.loop.step, batch, int(batch[0].shape[-1]), int(batch[0].shape[0]),
                 f"recipe {recipe_path} (step: {built.step_text})", ema=bool(v is not None and v.use_ema))


def fallback_setup(backbone: str, size: int, batch_size: int) -> Setup:
    """A detector of ``backbone`` with the library's defaults, AdamW 1e-3, clipping 10, a batch of rendered scenes.

    ``fallback_setup("cspdarknet", 256, 16)``
    """
    def loss_fn(apply: Callable[..., Any], batch: Any) -> Any:
        images, targets = batch
        return detection_loss(apply(images), targets, LAYOUT, image_size=images.shape[-1])

    template = TrainState.create(lambda: Detector(backbone=backbone, groups=dict(LAYOUT.groups)), adamw(1e-3), seed=0)
    scenes = rupiah.RupiahScenes("train", batch_size, size=size, augment=rupiah.Jitter())
    batch = rupiah.collate([scenes.sample(i, torch.Generator().manual_seed(i)) for i in range(batch_size)])
    return Setup(backbone, template, clip(10.0)(make_step(loss_fn)), batch, size, batch_size,
                 "built-in: Detector(backbone) defaults, adamw(1e-3), clip(10)(make_step(detection_loss))")


def time_train(s: Setup, steps: int, warmup: int) -> dict[str, Any]:
    """Images/s of the fastest and the median of ``steps`` timed training steps on the fixed batch, after ``warmup``."""
    state = s.template
    state.model.train(True)
    for _ in range(warmup):
        state = s.step(state, s.batch)
    first = float(state.metrics.get("loss", math.nan))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state = s.step(state, s.batch)
        times.append(time.perf_counter() - t0)
    last = float(state.metrics.get("loss", math.nan))
    b = s.batch_size
    return {"train_images_per_s": b / min(times), "train_images_per_s_median": b / statistics.median(times),
            "train_step_s": times, "loss_after_warmup": first, "loss_last": last}


def _infer(s: Setup, images: torch.Tensor, with_decode: bool) -> Any:
    state = s.template
    if s.ema and "ema" in state.extras:
        out = state.apply(images, params=state.extras["ema"]["params"], buffers=state.extras["ema"]["buffers"])
    else:
        out = state.apply(images)
    return decode(out, LAYOUT, **DECODE) if with_decode else out


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """The fastest and the median wall time of ``repeats`` calls of ``fn``, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def time_inference(s: Setup, repeats: int) -> dict[str, Any]:
    """Forward-only and forward+decode images/s at the batch size, and one-image latency (ms), in eval mode.

    Each figure is from the fastest of ``repeats`` timed calls (``*_median`` from the median).
    """
    images = s.batch[0]
    model = s.template.model
    was = model.training
    model.train(False)
    try:
        with torch.inference_mode():
            fwd = _timed(lambda: _infer(s, images, False), repeats)
            full = _timed(lambda: _infer(s, images, True), repeats)
            one = _timed(lambda: _infer(s, images[:1], True), max(repeats, 3))
            n_det = sum(int(d.scores.numel()) for d in _infer(s, images, True))
    finally:
        model.train(was)
    b = s.batch_size
    return {"forward_images_per_s": b / fwd[0], "infer_images_per_s": b / full[0],
            "forward_images_per_s_median": b / fwd[1], "infer_images_per_s_median": b / full[1],
            "latency_ms_batch1": one[0] * 1e3, "latency_ms_batch1_median": one[1] * 1e3,
            "detections_per_image": n_det / b}


def measure_models(backbones: list[str], recipe_path: Path | None, size: int | None, batch_size: int | None,
                   steps: int, warmup: int, repeats: int, b4_limit_s: float,
                   trained: tuple[str, ...] = TRAINED) -> tuple[list[dict[str, Any]], str]:
    """Train and inference figures per backbone; the second value says where the setup came from."""
    rows, sources = [], set()
    for bb in backbones:
        s = recipe_setup(recipe_path, bb) if recipe_path is not None and size is None and batch_size is None else None
        if s is None:
            s = fallback_setup(bb, size or FALLBACK_SIZE, batch_size or FALLBACK_BATCH)
        sources.add(s.source.replace(bb, "<backbone>"))
        params = sum(t.numel() for t in s.template.params.values())
        row: dict[str, Any] = {"backbone": bb, "size": s.size, "batch": s.batch_size, "params_M": params / 1e6}
        if bb not in trained:
            model = s.template.model
            model.train(False)
            with torch.inference_mode():
                t0 = time.perf_counter()
                _infer(s, s.batch[0], True)
                probe = time.perf_counter() - t0
            row["probe_batch_s"] = probe
            if probe > b4_limit_s:
                row["skipped"] = f"one inference batch took {probe:.1f} s > {b4_limit_s:g} s (--slow-limit)"
                rows.append(row)
                print(f"  {bb:<16} skipped: {row['skipped']}", flush=True)
                continue
            row["train"] = "not measured (inference only" + (", --quick)" if bb in TRAINED else ")")
        else:
            row.update(time_train(s, steps, warmup))
        row.update(time_inference(s, repeats))
        rows.append(row)
        train = f"train {row['train_images_per_s']:6.1f} img/s" if "train_images_per_s" in row else "train   (n/a)    "
        print(f"  {bb:<16} {row['params_M']:5.2f} M params  {train}  forward {row['forward_images_per_s']:7.1f} "
              f"img/s  forward+decode {row['infer_images_per_s']:7.1f} img/s  batch-1 {row['latency_ms_batch1']:6.1f} "
              f"ms/img  ({row['detections_per_image']:.0f} dets/img)", flush=True)
    return rows, "; ".join(sorted(sources))


def measure_precision(recipe_path: Path, precisions: list[str], steps: int) -> list[dict[str, Any]] | None:
    """The recipe's cspdarknet step under each ``train.precision``, side by side: one process, one batch, the
    precisions' steps alternated (each timed; one warm-up each), so a load on the machine falls on all alike.

    Median seconds a step and its ratio to the first precision's; None when the recipe builds no detector.
    ``measure_precision(Path("recipes/rupiah_yolo.toml"), ["fp32", "bf16"], 8)``
    """
    setups = [recipe_setup(recipe_path, "cspdarknet", (f'train.precision="{p}"',)) for p in precisions]
    if any(s is None for s in setups):
        return None
    states = [s.template for s in setups]
    for s in states:
        s.model.train(True)
    states = [s.step(state, s.batch) for s, state in zip(setups, states)]  # warm-up
    times: list[list[float]] = [[] for _ in setups]
    for _ in range(steps):
        for i, s in enumerate(setups):
            t0 = time.perf_counter()
            states[i] = s.step(states[i], s.batch)
            times[i].append(time.perf_counter() - t0)
    base = statistics.median(times[0])
    rows = [{"precision": p, "step_s": statistics.median(t), "ratio": statistics.median(t) / base,
             "step_s_all": t, "loss_last": float(st.metrics.get("loss", math.nan)), "step": s.source}
            for p, t, st, s in zip(precisions, times, states, setups)]
    for r in rows:
        print(f"  {r['precision']:<5} step {r['step_s'] * 1e3:7.1f} ms (median of {steps})  {r['ratio']:.2f}x "
              f"{precisions[0]}'s", flush=True)
    return rows


# --------------------------------------------------------------------------- data


@attrs.frozen
class BoxAugment:
    """``yolo.Augment`` (flip, affine, colour jitter, on image and boxes) as a RupiahScenes ``augment``.

    ``RupiahScenes("train", 512, augment=BoxAugment(Augment()))``
    """

    augment: Any

    def __call__(self, image: torch.Tensor, target: dict[str, torch.Tensor],
                 generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, boxes, labels = self.augment(image, target["boxes"], target["labels"], generator)
        return image, {"boxes": boxes, "labels": labels}


def scene_pipelines(recipe_path: Path | None, size: int | None, images: int) -> list[tuple[str, LoaderData]]:
    """The loaders to time: the recipe's training scenes as it renders them (cut to ``images``; else RupiahScenes
    with Jitter), and the same scenes with ``yolo.Augment`` (torchvision v2) on image and boxes."""
    from smartcash_fn.smartcash.yolo import Augment

    data = None
    if recipe_path is not None and size is None:
        from smartcash_fn.run.build import make_data
        from smartcash_fn.run.recipe import load

        try:
            train, _, _ = make_data(load(recipe_path))
        except UserError:
            train = None
        ds = getattr(train, "dataset", None)
        if isinstance(train, LoaderData) and isinstance(ds, rupiah.RupiahScenes):
            data = attrs.evolve(train, dataset=attrs.evolve(ds, n=min(images, ds.n)))
            what = (f"the recipe's training scenes ({ds.size} px, scenario {ds.scenario!r}, augment "
                    f"{type(ds.augment).__name__ if ds.augment else None})")
    if data is None:
        ds = rupiah.RupiahScenes("train", images, size=size or FALLBACK_SIZE, augment=rupiah.Jitter())
        data = LoaderData(ds, batch_size=FALLBACK_BATCH, collate_fn=rupiah.collate)
        what = f"RupiahScenes('train', {images}, size={ds.size}, augment=Jitter())"
    boxed = attrs.evolve(data, dataset=attrs.evolve(data.dataset, augment=BoxAugment(Augment())))
    return [(what, data), ("the same scenes + yolo.Augment() (yolo.affine, colour jitter)", boxed)]


def measure_data(recipe_path: Path | None, size: int | None, images: int, workers: list[int]) -> list[dict]:
    """Render (+ augment) + collate images/s of one epoch through LoaderData, per pipeline and worker count."""
    rows = []
    for what, data in scene_pipelines(recipe_path, size, images):
        print(f"  {what}:", flush=True)
        for w in workers:
            d = attrs.evolve(data, workers=w)
            t0 = time.perf_counter()
            count = 0
            for batch in d.batches(seed=0, epoch=0):
                count += int(batch[0].shape[0])
            dt = time.perf_counter() - t0
            rows.append({"pipeline": what, "workers": w, "images": count, "seconds": dt,
                         "images_per_s": count / dt})
            print(f"    workers {w}: {count} images in {dt:6.2f} s = {count / dt:7.1f} images/s", flush=True)
    return rows


# --------------------------------------------------------------------------- evaluator


def measure_evaluator(images: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """smartcash_fn.smartcash.metrics.evaluate against pycocotools (default and same-work) on map_eval's generated scenes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dets, tgts = map_eval.make_scenes(images, seed)
        dataset, results = map_eval.coco_inputs(dets, tgts)
        fresh = lambda: (copy.deepcopy(dataset), copy.deepcopy(results))  # noqa: E731 - loadRes edits its input
        t_coco, ev = map_eval.best_of(repeats, lambda d, r: map_eval.run_pycocotools(d, r, False), fresh)
        t_same, _ = map_eval.best_of(repeats, lambda d, r: map_eval.run_pycocotools(d, r, True), fresh)
        t_ours, report = map_eval.best_of(repeats, lambda: M.evaluate(dets, tgts, map_eval.CLASSES, map_eval.LAYERS))
    finally:
        torch.set_num_threads(threads)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    ref = map_eval.coco_ap(ev)
    diff = max(float(np.nanmax(np.abs(ref - report.ap.numpy()))), abs(float(ev.stats[0]) - report.map),
               abs(float(ev.stats[1]) - report.map50))
    out = {"images": images, "detections": sum(int(d.scores.numel()) for d in dets), "repeats": repeats,
           "pycocotools_default_s": t_coco, "pycocotools_same_work_s": t_same, "smartcash_fn_evaluate_s": t_ours,
           "speedup_default": t_coco / t_ours, "speedup_same_work": t_same / t_ours, "max_difference": diff,
           "agree": bool(diff <= map_eval.TOL)}
    print(f"  {images} images, {out['detections']} detections, best of {repeats}, 1 thread: pycocotools "
          f"{t_coco:.3f} s (same work {t_same:.3f} s), smartcash_fn {t_ours:.3f} s -> {out['speedup_default']:.1f}x "
          f"({out['speedup_same_work']:.1f}x same work); mAP difference {diff:.1e} "
          f"({'agree' if out['agree'] else 'DISAGREE'})", flush=True)
    return out


def measure_affine(size: int, images: int, seed: int = 0) -> dict[str, Any]:
    """``yolo.affine`` against torchvision v2's bilinear ``RandomAffine`` on the same moves, alternated, one thread."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from smartcash_fn.smartcash.yolo import Augment, affine

    g = torch.Generator().manual_seed(seed)
    aug = Augment()
    # the move yolo.Augment made until 2026-12-01: the same ranges, drawn by torchvision; a move's cost does not
    # depend on its draw
    old = v2.Compose([v2.RandomAffine(degrees=aug.degrees, translate=(aug.translate, aug.translate), scale=aug.scale,
                                      interpolation=v2.InterpolationMode.BILINEAR), v2.ClampBoundingBoxes()])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"yolo.affine": [], "torchvision": []}
    try:
        for i in range(images + 2):  # the first two warm up
            image = torch.rand(3, size, size, generator=g)
            boxes = torch.tensor([[size * 0.2, size * 0.3, size * 0.6, size * 0.5]])
            t0 = time.perf_counter()
            affine(image, boxes, aug.matrix(size, size, g))
            t1 = time.perf_counter()
            old(tv_tensors.Image(image), tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(size, size)))
            t2 = time.perf_counter()
            if i >= 2:
                times["yolo.affine"].append(t1 - t0)
                times["torchvision"].append(t2 - t1)
    finally:
        torch.set_num_threads(threads)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"size": size, "images": images, "yolo_affine_ms": med["yolo.affine"] * 1e3,
           "torchvision_ms": med["torchvision"] * 1e3, "ratio": med["yolo.affine"] / med["torchvision"]}
    print(f"  {images} images of {size} px, 1 thread, medians: yolo.affine {out['yolo_affine_ms']:.2f} ms, "
          f"torchvision v2 {out['torchvision_ms']:.2f} ms -> {out['ratio']:.2f}x", flush=True)
    return out


# --------------------------------------------------------------------------- main


def load_warning() -> str | None:
    """A warning when other processes keep the CPUs busy (the load average exceeds the core count), else None."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= cores:
        return None
    return (f"warning: load average {load:.1f} on {cores} cores: other processes are computing, so times are slow "
            "and noisy; with more than one torch thread each OpenMP barrier may wait for a descheduled thread "
            "(try --threads 1, or OMP_WAIT_POLICY=PASSIVE)")


def _recipe_size(recipe_path: Path) -> int:
    """The input size of the recipe's data (its ``data.params.size``), else the fallback size."""
    from smartcash_fn.run.recipe import load

    try:
        size = load(recipe_path).data.params.get("size")
    except (UserError, AttributeError):
        size = None
    return size if isinstance(size, int) else FALLBACK_SIZE


def _default_recipe() -> Path:
    from smartcash_fn.run.commands import DEFAULT_RECIPE

    return DEFAULT_RECIPE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a smoke check: no b4, efficientnet_b0 for inference only, few steps and images")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    ap.add_argument("--recipe", type=Path, default=None,
                    help="the detector recipe to take size, batch, model, step and scenes from (default: the "
                         "built-in default recipe; the library's defaults at 256 px, batch 16 when it is no detector)")
    ap.add_argument("--size", type=int, default=None,
                    help="input size in pixels (overrides the recipe: built-in setup)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (overrides the recipe: built-in setup)")
    ap.add_argument("--backbones", default=None, help=f"comma-separated, from {', '.join(BACKBONES)} (default: all; "
                    "--quick: the first two)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per backbone (default 10, quick 5)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed inference/evaluator repeats (default 5/3, quick 3/1)")
    ap.add_argument("--loader-images", type=int, default=None, help="scenes per loader epoch (default 512, quick 128)")
    ap.add_argument("--workers", default="0,1,2", help="loader worker counts to time (default 0,1,2)")
    ap.add_argument("--eval-images", type=int, default=None, help="images for the evaluator (default 2000, quick 200)")
    ap.add_argument("--slow-limit", type=float, default=30.0,
                    help="skip an inference-only backbone whose first batch takes longer (seconds, default 30)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="train.precision values whose steps are timed side by side (default fp32,bf16)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: model, precision, data, affine, evaluator")
    args = ap.parse_args(argv)

    q = args.quick
    backbones = args.backbones.split(",") if args.backbones else list(BACKBONES[:2] if q else BACKBONES)
    steps = args.steps if args.steps is not None else (5 if q else 10)
    repeats = args.repeats if args.repeats is not None else (3 if q else 5)
    eval_repeats = args.repeats if args.repeats is not None else (1 if q else 3)
    loader_images = args.loader_images if args.loader_images is not None else (128 if q else 512)
    eval_images = args.eval_images if args.eval_images is not None else (200 if q else 2000)
    skip = {s for s in args.skip.split(",") if s}
    precisions = [p for p in args.precisions.split(",") if p]
    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        workers = [-1]
    bad = ([f"--backbones: unknown {b!r}" for b in backbones if b not in BACKBONES]
           + [f"--skip: unknown part {s!r}" for s in skip if s not in ("model", "precision", "data", "affine", "evaluator")]
           + [f"--precisions: unknown {p!r} (fp32, bf16, fp16, auto)" for p in precisions
              if p not in ("fp32", "bf16", "fp16", "auto")]
           + (["--workers: expected integers >= 0 separated by commas"] if min(workers) < 0 else [])
           + [f"{name} must be >= 1" for name, v in (("--steps", steps), ("--repeats", repeats),
                                                    ("--loader-images", loader_images), ("--eval-images", eval_images),
                                                    ("--threads", args.threads or 1), ("--batch", args.batch or 1))
              if v < 1]
           + (["--size must be >= 64 and a multiple of 32"] if args.size is not None and
              (args.size < 64 or args.size % 32) else []))
    recipe_path = args.recipe if args.recipe is not None else _default_recipe()
    if not recipe_path.is_file():
        bad.append(f"--recipe {recipe_path}: no such file")
    if bad:
        for b in bad:
            print(f"error: {b}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {map_eval.machine()}")
    print("figures from a shared, busy machine are noisy: compare runs made side by side, not across days")
    warning = load_warning()
    if warning:
        print(warning)
    out: dict[str, Any] = {"machine": map_eval.machine(), "quick": q, "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "decode": DECODE}
    t_all = time.perf_counter()
    try:
        if "model" not in skip:
            print(f"model (fastest of {steps} timed training steps after 1 warm-up, of {repeats} timed inference "
                  "calls; medians in --json):", flush=True)
            rows, source = measure_models(backbones, recipe_path, args.size, args.batch, steps, 1, repeats,
                                          args.slow_limit, QUICK_TRAINED if q else TRAINED)
            print(f"  setup: {source}")
            out["models"], out["model_setup"] = rows, source
        if "precision" not in skip and precisions:
            print(f"precision (the recipe's cspdarknet step, {', '.join(precisions)} alternated on one batch):",
                  flush=True)
            out["precision"] = measure_precision(recipe_path, precisions, steps)
            if out["precision"] is None:
                print("  not measured: the recipe builds no detector")
        if "data" not in skip:
            print(f"data (render, augment, collate: one epoch of {loader_images} scenes, worker start-up included):",
                  flush=True)
            out["data"] = measure_data(recipe_path, args.size, loader_images, workers)
        if "affine" not in skip:
            size = args.size or _recipe_size(recipe_path)
            print(f"affine (yolo.affine against torchvision v2's RandomAffine, {size} px):", flush=True)
            out["affine"] = measure_affine(size, 50 if q else 400)
        if "evaluator" not in skip:
            print("evaluator vs pycocotools:", flush=True)
            out["evaluator"] = measure_evaluator(eval_images, eval_repeats)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out["seconds"] = time.perf_counter() - t_all
    print(f"done in {out['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 1 if "evaluator" in out and not out["evaluator"]["agree"] else 0


if __name__ == "__main__":
    sys.exit(main())
