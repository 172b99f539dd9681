"""COCO mAP: smartcash_fn.smartcash.metrics against pycocotools on the same detections.

A generated validation set shaped like SmartCash's (17 classes in three
layers; 1-3 notes per image, each with its banknote box, its numeral box and
some of its small security features, 1-8 ground-truth boxes in all) and the
output of a plausible detector after NMS at a low confidence cut (most notes
found with jittered boxes, some duplicates and wrong classes, and spurious
low-scoring boxes, 10-100 per image) is evaluated by:

- **pycocotools (default)**: ``COCO`` index + ``loadRes`` + ``COCOeval``
  ``evaluate`` + ``accumulate`` with its default params (four area ranges,
  maxDets 1/10/100) — how it is usually run;
- **pycocotools (same work)**: the same with only area 'all' and maxDets 100,
  the numbers this library computes;
- **smartcash_fn**: :func:`smartcash_fn.smartcash.metrics.evaluate` (COCO AP plus
  P/R/F1 and the confusion matrix) from the per-image tensors.

Each is timed best of ``--repeats``; the script prints the times, the
speed-ups, and checks that AP per class and IoU threshold and both mAPs agree
within 1e-4 (exit status 1 if not, 2 on bad arguments)::

    .venv/bin/python benchmarks/map_eval.py                    # 2,000 images, best of 3
    .venv/bin/python benchmarks/map_eval.py --quick            # 200 images, one repeat
    .venv/bin/python benchmarks/map_eval.py --images 5000 --json figures.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smartcash_fn.smartcash import metrics as M  # noqa: E402

CLASSES = ("001", "002", "005", "010", "020", "050", "100",
           "l2_001", "l2_002", "l2_005", "l2_010", "l2_020", "l2_050", "l2_100",
           "l3_sign", "l3_text", "l3_thread")
LAYERS = {"banknote": CLASSES[:7], "nominal": CLASSES[7:14], "security": CLASSES[14:]}
SIZE = 640
TOL = 1e-4


# --------------------------------------------------------------------------- the scene


def _inside(g: torch.Generator, box: torch.Tensor, frac_lo: float, frac_hi: float) -> torch.Tensor:
    """A random box inside ``box`` whose sides are ``frac_lo..frac_hi`` of its sides."""
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    fw, fh = (frac_lo + (frac_hi - frac_lo) * torch.rand(2, generator=g)).tolist()
    x = float(box[0]) + (w - fw * w) * float(torch.rand(1, generator=g))
    y = float(box[1]) + (h - fh * h) * float(torch.rand(1, generator=g))
    return torch.tensor([x, y, x + fw * w, y + fh * h])


def ground_truth(g: torch.Generator) -> M.Targets:
    """1-3 notes: each a banknote box, its numeral box (class + 7) and 0-3 security features (14-16); <= 8 boxes."""
    boxes, labels = [], []
    for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
        denom = int(torch.randint(0, 7, (1,), generator=g))
        w = 120 + 300 * float(torch.rand(1, generator=g))
        h = w / 2.1
        x, y = (SIZE - w) * float(torch.rand(1, generator=g)), (SIZE - h) * float(torch.rand(1, generator=g))
        note = torch.tensor([x, y, x + w, y + h])
        boxes += [note, _inside(g, note, 0.18, 0.3)]
        labels += [denom, denom + 7]
        for feature in torch.randperm(3, generator=g)[: int(torch.randint(0, 4, (1,), generator=g))].tolist():
            boxes.append(_inside(g, note, 0.04, 0.12))
            labels.append(14 + feature)
    boxes, labels = boxes[:8], labels[:8]
    return M.Targets(torch.stack(boxes), torch.tensor(labels))


def detector_output(g: torch.Generator, t: M.Targets) -> M.Detections:
    """What a detector might give after NMS at conf 0.001: hits, duplicates, wrong classes, spurious boxes."""
    m = t.labels.numel()
    size = (t.boxes[:, 2:] - t.boxes[:, :2]).repeat(1, 2)
    parts_b, parts_s, parts_l = [], [], []
    for p_keep, jitter, score_lo, score_hi, wrong in ((0.9, 0.08, 0.4, 0.98, 0.05), (0.3, 0.25, 0.05, 0.5, 0.2)):
        keep = torch.rand(m, generator=g) < p_keep
        b = t.boxes + (torch.rand(m, 4, generator=g) - 0.5) * 2 * jitter * size
        s = score_lo + (score_hi - score_lo) * torch.rand(m, generator=g)
        flip = torch.rand(m, generator=g) < wrong
        lab = torch.where(flip, torch.randint(0, 17, (m,), generator=g), t.labels)
        parts_b.append(b[keep]), parts_s.append(s[keep]), parts_l.append(lab[keep])
    n = int(torch.randint(10, 101, (1,), generator=g)) - sum(len(s) for s in parts_s)
    if n > 0:
        xy = torch.rand(n, 2, generator=g) * SIZE
        wh = 8 + torch.rand(n, 2, generator=g) * 200
        parts_b.append(torch.cat([xy, xy + wh], 1))
        parts_s.append(0.001 + 0.3 * torch.rand(n, generator=g) ** 2)
        parts_l.append(torch.randint(0, 17, (n,), generator=g))
    b = torch.cat(parts_b)
    b = torch.cat([torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:])], 1).clamp(0, SIZE)
    return M.Detections(b, torch.cat(parts_s), torch.cat(parts_l))


def make_scenes(images: int, seed: int) -> tuple[list[M.Detections], list[M.Targets]]:
    """``images`` (detections, targets) pairs, a pure function of ``seed``."""
    g = torch.Generator().manual_seed(seed)
    tgts = [ground_truth(g) for _ in range(images)]
    return [detector_output(g, t) for t in tgts], tgts


# --------------------------------------------------------------------------- pycocotools


def coco_inputs(dets: list[M.Detections], tgts: list[M.Targets]) -> tuple[dict, list[dict]]:
    """The same scene as a COCO ground-truth dataset dict and a result list (xywh, 1-based ids)."""
    images = [{"id": i + 1, "width": SIZE, "height": SIZE} for i in range(len(tgts))]
    anns = []
    for i, t in enumerate(tgts):
        for (x1, y1, x2, y2), c in zip(t.boxes.double().tolist(), t.labels.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    results = []
    for i, d in enumerate(dets):
        for (x1, y1, x2, y2), s, c in zip(d.boxes.double().tolist(), d.scores.double().tolist(), d.labels.tolist()):
            results.append({"image_id": i + 1, "category_id": c + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    cats = [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)]
    return {"images": images, "annotations": anns, "categories": cats}, results


def run_pycocotools(dataset: dict, results: list[dict], same_work: bool) -> Any:
    """Index, load results, evaluate, accumulate; the COCOeval object (its prints swallowed)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        if same_work:
            ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [[0, 1e10]], ["all"], [100]
        ev.evaluate()
        ev.accumulate()
    return ev


def coco_ap(ev: Any) -> np.ndarray:
    """AP [T, C] (NaN for classes without ground truth) at area 'all' and the largest maxDets."""
    p = ev.eval["precision"][:, :, :, 0, -1]
    return np.where((p == -1).all(1), np.nan, p.mean(1))


# --------------------------------------------------------------------------- timing


def best_of(repeats: int, fn: Callable[[], Any], fresh: Callable[[], tuple] = lambda: ()) -> tuple[float, Any]:
    """The shortest wall time of ``repeats`` calls of ``fn(*fresh())`` (``fresh`` untimed) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        args = fresh()
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " load average %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return f"{model}, {os.cpu_count()} cores,{load}; torch {torch.__version__}, threads {torch.get_num_threads()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=None, help="images in the set (default 2000, --quick 200)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs of each, best taken (default 3, --quick 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as pycocotools uses one core)")
    ap.add_argument("--quick", action="store_true", help="a smoke check: 200 images, one repeat")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    images = args.images if args.images is not None else (200 if args.quick else 2000)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if images < 1 or repeats < 1 or args.threads < 1:
        print("error: --images, --repeats and --threads must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    dets, tgts = make_scenes(images, args.seed)
    dataset, results = coco_inputs(dets, tgts)
    n_det, n_gt = sum(d.scores.numel() for d in dets), sum(t.labels.numel() for t in tgts)
    print(f"machine: {machine()}")
    print(f"{images} images, {n_gt} ground-truth boxes, {n_det} detections, 17 classes; best of {repeats}")

    fresh = lambda: (copy.deepcopy(dataset), copy.deepcopy(results))  # noqa: E731 - loadRes edits its input
    t_coco, ev = best_of(repeats, lambda d, r: run_pycocotools(d, r, False), fresh)
    t_same, ev_same = best_of(repeats, lambda d, r: run_pycocotools(d, r, True), fresh)
    t_ours, report = best_of(repeats, lambda: M.evaluate(dets, tgts, CLASSES, LAYERS))
    t_ap, table = best_of(repeats, lambda: M.coco_precision(M.match_detections(dets, tgts, len(CLASSES))))

    ref = coco_ap(ev)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    ref_map, ref_map50 = float(ev.stats[0]), float(ev.stats[1])
    ours = report.ap.numpy()
    same_nan = all(np.array_equal(np.isnan(x), np.isnan(ours)) for x in (ref, coco_ap(ev_same), table.ap.numpy()))
    diff = max(float(np.nanmax(np.abs(ref - ours))), float(np.nanmax(np.abs(coco_ap(ev_same) - ours))),
               float(np.nanmax(np.abs(table.ap.numpy() - ours))),
               abs(ref_map - report.map), abs(ref_map50 - report.map50))
    agree = same_nan and diff <= TOL

    print(f"pycocotools (default: 4 area ranges, maxDets 1/10/100): {t_coco:8.3f} s")
    print(f"pycocotools (same work: area all, maxDets 100):         {t_same:8.3f} s")
    print(f"smartcash_fn evaluate (AP + P/R/F1 + confusion):        {t_ours:8.3f} s")
    print(f"smartcash_fn match + coco_precision (AP only):          {t_ap:8.3f} s")
    print(f"speed-up vs pycocotools default:   {t_coco / t_ours:6.1f}x")
    print(f"speed-up vs pycocotools same work: {t_same / t_ours:6.1f}x (AP only: {t_same / t_ap:.1f}x)")
    print(f"mAP50-95 {report.map:.6f} (pycocotools {ref_map:.6f}), mAP50 {report.map50:.6f} "
          f"(pycocotools {ref_map50:.6f}); largest difference {diff:.2e}: "
          f"{'agree' if agree else 'DISAGREE'} within {TOL:g}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "machine": machine(), "images": images, "detections": n_det, "ground_truth": n_gt, "repeats": repeats,
            "pycocotools_default_s": t_coco, "pycocotools_same_work_s": t_same, "smartcash_fn_evaluate_s": t_ours,
            "smartcash_fn_ap_only_s": t_ap, "speedup_default": t_coco / t_ours, "speedup_same_work": t_same / t_ours,
            "map": report.map, "map50": report.map50, "max_difference": diff, "agree": agree,
        }, indent=2) + "\n")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
