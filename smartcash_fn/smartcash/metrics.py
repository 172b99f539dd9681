"""Detection metrics: COCO-style AP, per-layer mAP, P/R/F1 and a confusion matrix, over plain tensors.

Each image contributes its detections ``(boxes [N, 4], scores [N], labels [N])``
and its ground truth ``(boxes [M, 4], labels [M])``, boxes in absolute ``xyxy``
pixels. :func:`evaluate` reproduces the bbox evaluation of pycocotools'
``COCOeval`` (area range ``all``, ``max_dets`` per image and class, IoU
thresholds 0.50:0.05:0.95, 101 recall points) with the matching batched over
all images at once, and adds the numbers a detector is judged by::

    report = evaluate(detections, targets, class_names=("001", "002"), layers={"banknote": ("001", "002")})
    report.map50, report.map, report.metrics()["mAP50/banknote"]
    print(report.table())

In a training loop, :func:`detection_evaluator` feeds the same numbers into
the history (``val/mAP50``, ``val/mAP50-95/<layer>``, ...), so early stopping
and the best checkpoint can watch any of them. ``docs/metrics.md`` defines
every number.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import attrs
import numpy as np
import torch
import torchvision

from ..errors import DataError, StateError
from ..loop import Evaluator

# pycocotools builds its thresholds with np.linspace; the same calls give the same bits.
_IOU = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
_RECALL = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)

IOU_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in _IOU)
"""COCO's ten IoU thresholds 0.50, 0.55, ..., 0.95 (index 0 is IoU 0.5)."""

RECALL_POINTS: tuple[float, ...] = tuple(float(r) for r in _RECALL)
"""COCO's 101 recall points 0.00, 0.01, ..., 1.00 at which precision is sampled."""

_EPS = float(np.spacing(1))  # added to tp + fp as pycocotools does
_CHUNK = 1 << 21  # padded elements per matching chunk (bounds memory in crowded scenes)


# --------------------------------------------------------------------------- records


@attrs.frozen(eq=False)
class Detections:
    """One image's detections: ``boxes`` [N, 4] xyxy pixels, ``scores`` [N], ``labels`` [N] class indices.

        Detections(boxes=torch.tensor([[10., 20., 110., 70.]]), scores=torch.tensor([0.9]),
                   labels=torch.tensor([3]))
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


@attrs.frozen(eq=False)
class Targets:
    """One image's ground truth: ``boxes`` [M, 4] xyxy pixels and ``labels`` [M] class indices.

        Targets(boxes=torch.tensor([[12., 18., 108., 72.]]), labels=torch.tensor([3]))
    """

    boxes: torch.Tensor
    labels: torch.Tensor


def as_detections(x: Any, where: str = "detections") -> Detections:
    """A :class:`Detections` from any record with ``boxes``/``scores``/``labels``, such a mapping, or a triple.

        as_detections({"boxes": b, "scores": s, "labels": l})
        as_detections((b, s, l))
    """
    if isinstance(x, Detections):
        return x
    if all(hasattr(x, k) for k in ("boxes", "scores", "labels")):   # e.g. smartcash_fn.smartcash.detection.Detections
        return Detections(x.boxes, x.scores, x.labels)
    if isinstance(x, Mapping):
        missing = [k for k in ("boxes", "scores", "labels") if k not in x]
        if missing:
            raise DataError(f"{where}: a mapping of detections needs the keys boxes, scores, labels; "
                            f"{', '.join(missing)} missing")
        return Detections(x["boxes"], x["scores"], x["labels"])
    if isinstance(x, (tuple, list)) and len(x) == 3:
        return Detections(*x)
    raise DataError(f"{where}: expected Detections, a mapping with boxes/scores/labels or a triple "
                    f"(boxes, scores, labels), got {type(x).__name__}")


def as_targets(x: Any, where: str = "targets") -> Targets:
    """A :class:`Targets` from any record with ``boxes``/``labels``, such a mapping, or a pair.

        as_targets({"boxes": b, "labels": l})
        as_targets((b, l))
    """
    if isinstance(x, Targets):
        return x
    if hasattr(x, "boxes") and hasattr(x, "labels"):
        return Targets(x.boxes, x.labels)
    if isinstance(x, Mapping):
        missing = [k for k in ("boxes", "labels") if k not in x]
        if missing:
            raise DataError(f"{where}: a mapping of targets needs the keys boxes, labels; {', '.join(missing)} missing")
        return Targets(x["boxes"], x["labels"])
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return Targets(*x)
    raise DataError(f"{where}: expected Targets, a mapping with boxes/labels or a pair (boxes, labels), "
                    f"got {type(x).__name__}")


# --------------------------------------------------------------------------- IoU


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``a`` and ``b`` (broadcast) exactly as pycocotools computes it from xywh, in float64."""
    ax, ay, aw, ah = a[..., 0], a[..., 1], a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    bx, by, bw, bh = b[..., 0], b[..., 1], b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    iw = torch.minimum(aw + ax, bw + bx) - torch.maximum(ax, bx)
    ih = torch.minimum(ah + ay, bh + by) - torch.maximum(ay, by)
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    hit = (iw > 0) & (ih > 0)
    return torch.where(hit, inter / torch.where(hit, union, 1.0), 0.0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU [N, M] (float64) of xyxy boxes ``a`` [N, 4] and ``b`` [M, 4], COCO's convention (no +1).

        box_iou(torch.tensor([[0., 0., 10., 10.]]), torch.tensor([[5., 0., 15., 10.]]))  # [[1/3]]
    """
    a = torch.as_tensor(a).detach().to("cpu", torch.float64).reshape(-1, 4)
    b = torch.as_tensor(b).detach().to("cpu", torch.float64).reshape(-1, 4)
    return _iou(a[:, None, :], b[None, :, :])


# --------------------------------------------------------------------------- flattening and checks


@attrs.frozen(eq=False)
class _Flat:
    """All images' boxes concatenated (CPU, float64 boxes/scores), with each box's image index."""

    det_boxes: torch.Tensor
    det_scores: torch.Tensor
    det_labels: torch.Tensor
    det_images: torch.Tensor
    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor
    gt_images: torch.Tensor
    num_images: int
    num_classes: int


def _raw(x: Any) -> torch.Tensor:
    """A CPU tensor of ``x`` without a copy where it already is one."""
    t = (x.detach() if x.requires_grad else x) if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return t if t.device.type == "cpu" else t.cpu()


def _cat(parts: list[torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype, what: str) -> torch.Tensor:
    out = torch.cat(parts) if parts else torch.zeros(shape, dtype=dtype)
    if dtype == torch.int64 and out.is_floating_point():
        bad = out != out.round()
        if bad.any():
            raise DataError(f"{what}: labels must be whole class indices, got {float(out[bad][0])}")
    return out.to(dtype)


def _check_boxes(boxes: torch.Tensor, images: torch.Tensor, what: str) -> None:
    if boxes.numel() == 0:
        return
    bad = ~torch.isfinite(boxes).all(1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise DataError(f"{what}: image {int(images[i])} has a box that is not finite: {boxes[i].tolist()}")
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        i = int(bad.nonzero()[0])
        raise DataError(f"{what}: image {int(images[i])} has a box with x2 < x1 or y2 < y1: {boxes[i].tolist()}; "
                        "boxes must be xyxy in pixels")


def _check_labels(labels: torch.Tensor, images: torch.Tensor, num_classes: int, what: str) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise DataError(f"{what}: image {int(images[i])} has label {int(labels[i])}, outside 0..{num_classes - 1} "
                        f"({num_classes} classes)")


def _flatten(detections: Sequence[Any], targets: Sequence[Any], num_classes: int) -> _Flat:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise StateError(f"metrics: num_classes must be an int >= 1, got {num_classes!r}")
    detections, targets = list(detections), list(targets)
    if len(detections) != len(targets):
        raise DataError(f"metrics: {len(detections)} images of detections but {len(targets)} of targets; "
                        "give one of each per image, in the same order")
    db, ds, dl, di, gb, gl, gi = [], [], [], [], [], [], []
    for i, (d, t) in enumerate(zip(detections, targets)):
        d, t = as_detections(d, f"detections[{i}]"), as_targets(t, f"targets[{i}]")
        boxes, scores, labels = _raw(d.boxes), _raw(d.scores), _raw(d.labels)
        n = scores.numel()
        if scores.dim() > 1 or labels.shape != scores.shape or (boxes.shape != (n, 4) and boxes.numel() + n != 0):
            raise DataError(f"detections[{i}]: boxes {tuple(boxes.shape)}, scores {tuple(scores.shape)} and labels "
                            f"{tuple(labels.shape)} do not fit; expected boxes [N, 4], scores [N], labels [N]")
        gboxes, glabels = _raw(t.boxes), _raw(t.labels)
        m = glabels.numel()
        if glabels.dim() > 1 or (gboxes.shape != (m, 4) and gboxes.numel() + m != 0):
            raise DataError(f"targets[{i}]: boxes {tuple(gboxes.shape)} and labels {tuple(glabels.shape)} do not fit; "
                            "expected boxes [M, 4] and labels [M]")
        db.append(boxes if boxes.dim() == 2 else boxes.reshape(0, 4)), ds.append(scores.reshape(n))
        dl.append(labels.reshape(n)), gb.append(gboxes if gboxes.dim() == 2 else gboxes.reshape(0, 4))
        gl.append(glabels.reshape(m)), di.append(n), gi.append(m)
    idx = torch.arange(len(detections))
    flat = _Flat(
        det_boxes=_cat(db, (0, 4), torch.float64, "detections"),
        det_scores=_cat(ds, (0,), torch.float64, "detections"),
        det_labels=_cat(dl, (0,), torch.int64, "detections"), gt_boxes=_cat(gb, (0, 4), torch.float64, "targets"),
        gt_labels=_cat(gl, (0,), torch.int64, "targets"),
        det_images=idx[_segments(torch.tensor(di, dtype=torch.int64))],
        gt_images=idx[_segments(torch.tensor(gi, dtype=torch.int64))],
        num_images=len(detections), num_classes=num_classes,
    )
    _check_boxes(flat.det_boxes, flat.det_images, "detections")
    _check_boxes(flat.gt_boxes, flat.gt_images, "targets")
    if not torch.isfinite(flat.det_scores).all():
        i = int((~torch.isfinite(flat.det_scores)).nonzero()[0])
        raise DataError(f"detections: image {int(flat.det_images[i])} has a score that is not finite")
    _check_labels(flat.det_labels, flat.det_images, num_classes, "detections")
    _check_labels(flat.gt_labels, flat.gt_images, num_classes, "targets")
    return flat


# --------------------------------------------------------------------------- greedy matching


def _segments(counts: torch.Tensor) -> torch.Tensor:
    """The segment index of each of ``counts.sum()`` positions (``repeat_interleave(arange, counts)``).

    Built from ``bincount`` and ``cumsum``, which run serially on small
    tensors: ``repeat_interleave`` starts torch's thread pool for any size,
    which costs milliseconds a call on a busy machine.
    """
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1]) if ends.numel() else 0
    marks = torch.bincount(ends[:-1], minlength=total + 1)[:total]
    return torch.cumsum(marks, 0)


def _lookup(keys: torch.Tensor, size: int) -> torch.Tensor:
    """A table ``t`` of length ``size`` with ``t[keys[i]] = i`` (-1 elsewhere): the inverse of distinct ``keys``."""
    table = torch.full((size,), -1, dtype=torch.int64)
    table[keys] = torch.arange(keys.numel())
    return table


def _ranks(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a sorted group id per item: the unique groups, their sizes, and each item's rank inside its group."""
    ug, counts = torch.unique_consecutive(groups, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(groups.numel()) - starts[_segments(counts)]
    return ug, counts, rank


def _pow2(x: torch.Tensor) -> torch.Tensor:
    return torch.pow(2, torch.ceil(torch.log2(x.double()))).long()


def _sequential(iou: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """Greedy matching in P padded groups at once: ``iou`` [P, D, G] (gt axis reversed, -1 padding).

    Returns [P, T, D]: the (reversed) gt index each detection takes at each
    threshold, or -1. Detection ``r`` takes the free gt with the highest IoU
    >= the threshold; argmax returns the first maximum of the reversed axis,
    that is the last gt among equal maxima, as pycocotools does.
    """
    P, D, G = iou.shape
    T = thr.numel()
    thr = thr.view(1, T, 1)
    taken = torch.zeros((P, T, G), dtype=torch.bool)
    chosen = torch.full((P, T, D), -1, dtype=torch.int64)
    for r in range(D):
        row = iou[:, r, :].unsqueeze(1)                                # [P, 1, G]
        ok = (row >= thr) & ~taken                                     # [P, T, G]
        best = torch.where(ok, row, -1.0).argmax(-1, keepdim=True)     # [P, T, 1]
        has = ok.any(-1, keepdim=True)
        taken.scatter_(-1, best, has | taken.gather(-1, best))
        chosen[:, :, r] = torch.where(has, best, -1).squeeze(-1)
    return chosen


def _first_hit(iou: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """:func:`_sequential` for groups of one gt, without a loop: the first detection reaching a threshold takes it."""
    P, D, _ = iou.shape
    T = thr.numel()
    hit = iou.view(P, 1, D) >= thr.view(1, T, 1)                       # [P, T, D]
    first = hit.to(torch.uint8).argmax(-1, keepdim=True)               # first True (or 0)
    chosen = torch.full((P, T, D), -1, dtype=torch.int64)
    chosen.scatter_(-1, first, torch.where(hit.any(-1, keepdim=True), 0, -1))
    return chosen


def _greedy(pair_det: torch.Tensor, pair_gt: torch.Tensor, pair_iou: torch.Tensor, det_group: torch.Tensor,
            gt_group: torch.Tensor, thresholds: torch.Tensor, num_dets: int) -> torch.Tensor:
    """COCO's greedy matching in every group at once: [T, num_dets] index of the matched gt, or -1.

    Detections are indexed in processing order inside each group and ground
    truths in their given order; both are sorted by group, and the pairs by
    detection. Each detection, in turn, takes the still unmatched gt of its
    group with the highest IoU >= the threshold, the last such gt on ties (as
    pycocotools' ``<`` test does). Pairs below every threshold are dropped
    first, so a group holds only its candidate detections and gts; groups are
    bucketed by their (power-of-two) size, each bucket padded to a tensor and
    matched by :func:`_sequential` (a loop over the candidates' rank) or, with
    one gt, by :func:`_first_hit`.
    """
    T = thresholds.numel()
    out = torch.full((T, num_dets), -1, dtype=torch.int64)
    keep = pair_iou >= thresholds.min()
    pd, pg, pv = pair_det[keep], pair_gt[keep], pair_iou[keep]
    if pd.numel() == 0:
        return out
    cd, cg = torch.unique(pd), torch.unique(pg)                       # candidates, in order
    ug, d_count, d_rank = _ranks(det_group[cd])
    _, g_count, g_rank = _ranks(gt_group[cg])
    d_start, g_start = torch.cumsum(d_count, 0) - d_count, torch.cumsum(g_count, 0) - g_count
    slot = _lookup(ug, int(ug[-1]) + 1)[det_group[pd]]               # group of each pair (non-decreasing)
    pr = d_rank[_lookup(cd, int(cd[-1]) + 1)[pd]]
    pc = g_rank[_lookup(cg, int(cg[-1]) + 1)[pg]]
    gb = torch.where(g_count == 1, 1, _pow2(g_count).clamp(min=8))   # small gt counts share one bucket
    bucket = (_pow2(d_count) * (int(gb.max()) + 1) + gb)[slot]
    order = torch.argsort(bucket, stable=True)                        # by bucket, then group
    _, sizes = torch.unique_consecutive(bucket[order], return_counts=True)
    for p0, n in zip((torch.cumsum(sizes, 0) - sizes).tolist(), sizes.tolist()):
        sel = order[p0:p0 + n]
        sel_slot = slot[sel]
        slots = torch.unique_consecutive(sel_slot)
        D, G = int(d_count[slots].max()), int(g_count[slots].max())
        per_chunk = max(1, _CHUNK // (D * G * T))
        for c0 in range(0, slots.numel(), per_chunk):
            cs = slots[c0:c0 + per_chunk]
            P = cs.numel()
            lo = int(torch.searchsorted(sel_slot, cs[0]))
            hi = int(torch.searchsorted(sel_slot, cs[-1], right=True))
            psel = sel[lo:hi]
            iou = torch.full((P, D, G), -1.0, dtype=torch.float64)
            iou[_lookup(cs, int(cs[-1]) + 1)[slot[psel]], pr[psel], G - 1 - pc[psel]] = pv[psel]
            chosen = _first_hit(iou, thresholds) if G == 1 else _sequential(iou, thresholds)
            # back to flat indices: row p, rank r -> candidate detection; reversed local gt -> candidate gt
            real = torch.arange(D).view(1, D) < d_count[cs].view(P, 1)              # [P, D]
            det_idx = cd[(d_start[cs].view(P, 1) + torch.arange(D).view(1, D))[real]]
            ch = chosen.permute(1, 0, 2)[:, real]                                  # [T, n]
            g0 = g_start[cs].view(P, 1).expand(P, D)[real].view(1, -1)
            out[:, det_idx] = torch.where(ch >= 0, cg[(g0 + G - 1 - ch).clamp(0, cg.numel() - 1)], -1)
    return out


def _pairs(det_group: torch.Tensor, gt_group: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (detection, gt) pair inside the same group; both inputs sorted by group."""
    g_count = torch.bincount(gt_group, minlength=num_groups)
    g_start = torch.cumsum(g_count, 0) - g_count
    per_det = g_count[det_group]
    pair_det = _segments(per_det)
    offsets = torch.arange(pair_det.numel()) - (torch.cumsum(per_det, 0) - per_det)[pair_det]
    pair_gt = g_start[det_group][pair_det] + offsets
    return pair_det, pair_gt


def _threshold(t: float) -> float:
    return min(t, 1 - 1e-10)  # pycocotools caps the threshold just below 1


# --------------------------------------------------------------------------- matching


@attrs.frozen(eq=False)
class Matches:
    """The kept detections (top ``max_dets`` per image and class) and whether each matched, per IoU threshold.

    ``scores``, ``labels``, ``images``, ``index`` (into the flat input order)
    describe the kept detections; ``matched`` [T, K] is True where the
    detection is a true positive at ``IOU_THRESHOLDS[t]`` and ``gt`` [T, K]
    the flat index of the gt it matched (-1 when none); ``num_gt`` [C] counts
    ground truth per class::

        m = match_detections(dets, targets, num_classes=17)
        m.matched[0].sum()          # true positives at IoU 0.5
    """

    scores: torch.Tensor
    labels: torch.Tensor
    images: torch.Tensor
    index: torch.Tensor
    matched: torch.Tensor
    gt: torch.Tensor
    num_gt: torch.Tensor


def _kept(flat: _Flat, max_dets: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections and gts ordered for class-aware matching, and each one's (image, class) group.

    Detections: by group, then descending score (a stable sort: ties keep
    their input order), only the first ``max_dets`` of each group; gts: by
    group, in input order. Returns ``(det order, det group, gt order, gt group)``.
    """
    C = flat.num_classes
    d_group = flat.det_images * C + flat.det_labels
    order = torch.sort(-flat.det_scores, stable=True).indices
    order = order[torch.sort(d_group[order], stable=True).indices]
    order = order[_ranks(d_group[order])[2] < max_dets]
    g_group = flat.gt_images * C + flat.gt_labels
    return order, d_group, torch.sort(g_group, stable=True).indices, g_group


def _match_flat(flat: _Flat, kept: tuple) -> Matches:
    C = flat.num_classes
    order, d_group, g_order, g_group = kept
    num_groups = max(flat.num_images * C, 1)
    pd, pg = _pairs(d_group[order], g_group[g_order], num_groups)
    iou = _iou(flat.det_boxes[order][pd], flat.gt_boxes[g_order][pg])
    thr = torch.tensor([_threshold(t) for t in IOU_THRESHOLDS], dtype=torch.float64)
    gt_sorted = _greedy(pd, pg, iou, d_group[order], g_group[g_order], thr, order.numel())
    gt = torch.where(gt_sorted >= 0, g_order[gt_sorted.clamp(min=0)], -1) if g_order.numel() else gt_sorted
    return Matches(scores=flat.det_scores[order], labels=flat.det_labels[order], images=flat.det_images[order],
                   index=order, matched=gt >= 0, gt=gt,
                   num_gt=torch.bincount(flat.gt_labels, minlength=C))


def _check_max_dets(max_dets: Any) -> int:
    if not isinstance(max_dets, int) or isinstance(max_dets, bool) or max_dets < 1:
        raise StateError(f"metrics: max_dets must be an int >= 1, got {max_dets!r}")
    return max_dets


def match_detections(detections: Sequence[Any], targets: Sequence[Any], num_classes: int,
                     max_dets: int = 100) -> Matches:
    """Match every image's detections to its ground truth, COCO's way, at the ten IoU thresholds.

    Per image and class the ``max_dets`` highest-scoring detections are kept
    (a stable sort: ties keep their input order); in score order each takes
    the best still-unmatched gt of its class with IoU >= the threshold::

        m = match_detections([Detections(b, s, l)], [Targets(gb, gl)], num_classes=17)
        m.matched.shape             # [10, kept detections]
    """
    flat = _flatten(detections, targets, num_classes)
    return _match_flat(flat, _kept(flat, _check_max_dets(max_dets)))


@attrs.frozen(eq=False)
class PrecisionTable:
    """Precision at COCO's recall points: ``precision`` [T, R, C] (NaN for classes without gt), ``recall`` [T, C].

    ``ap`` [T, C] is the mean over the recall points; ``recall`` the highest
    recall reached (0 without detections)::

        table = coco_precision(match_detections(dets, targets, 17))
        table.ap[0]                 # AP at IoU 0.5, per class
    """

    precision: torch.Tensor
    recall: torch.Tensor

    @property
    def ap(self) -> torch.Tensor:
        """AP per threshold and class [T, C]: precision averaged over the 101 recall points (NaN without gt)."""
        return self.precision.mean(1)


def coco_precision(matches: Matches) -> PrecisionTable:
    """Accumulate matches into COCO's precision table (``COCOeval.accumulate`` for area 'all').

    Per class, all kept detections of all images in descending score (ties:
    image order, then the order inside the image); precision made monotone
    from the right; sampled at each recall point with ``searchsorted(side='left')``,
    0 past the highest recall::

        coco_precision(match_detections(dets, targets, 17)).ap.mean(0)   # AP50-95 per class
    """
    T, R, C = len(IOU_THRESHOLDS), len(RECALL_POINTS), int(matches.num_gt.numel())
    precision = torch.full((T, R, C), math.nan, dtype=torch.float64)
    recall = torch.full((T, C), math.nan, dtype=torch.float64)
    # class, then score descending, then input order (image, position): pycocotools' accumulation order
    order = torch.argsort(matches.index)
    order = order[torch.sort(-matches.scores[order], stable=True).indices]
    order = order[torch.sort(matches.labels[order], stable=True).indices]
    labels = matches.labels[order]
    counts = torch.bincount(labels, minlength=C).tolist()
    tp_all = matches.matched[:, order]
    rec_pts = torch.from_numpy(_RECALL)
    start = 0
    for c in range(C):
        n, npig = counts[c], int(matches.num_gt[c])
        seg = slice(start, start + n)
        start += n
        if npig == 0:
            continue
        if n == 0:
            precision[:, :, c] = 0.0
            recall[:, c] = 0.0
            continue
        tp = tp_all[:, seg]
        tps = torch.cumsum(tp, 1, dtype=torch.float64)
        fps = torch.cumsum(~tp, 1, dtype=torch.float64)
        rc = tps / npig
        pr = tps / (fps + tps + _EPS)
        pr = pr.flip(1).cummax(1).values.flip(1)
        # one row at a time: 101 values stay under searchsorted's parallel grain
        idx = torch.stack([torch.searchsorted(rc[t], rec_pts, side="left") for t in range(T)])
        precision[:, :, c] = torch.where(idx < n, pr.gather(1, idx.clamp(max=n - 1)), 0.0)
        recall[:, c] = rc[:, -1]
    return PrecisionTable(precision=precision, recall=recall)


# --------------------------------------------------------------------------- confusion matrix


def _confusion_flat(flat: _Flat, conf: float, iou: float, kept: tuple) -> torch.Tensor:
    C = flat.num_classes
    cm = torch.zeros((C + 1, C + 1), dtype=torch.int64)
    # the same kept set as the AP (top max_dets per image and class), then the confidence cut
    order, d_group, g_order, g_group = kept
    order = order[flat.det_scores[order] >= conf]
    thr = torch.tensor([_threshold(iou)], dtype=torch.float64)
    # pass 1: class-aware greedy matching (the true positives of P/R/F1)
    pd, pg = _pairs(d_group[order], g_group[g_order], max(flat.num_images * C, 1))
    m1 = _greedy(pd, pg, _iou(flat.det_boxes[order][pd], flat.gt_boxes[g_order][pg]),
                 d_group[order], g_group[g_order], thr, order.numel())[0]
    det_left = order[m1 < 0]
    gt_hit = torch.zeros(flat.gt_labels.numel(), dtype=torch.bool)
    gt_hit[g_order[m1[m1 >= 0]]] = True
    diag = flat.det_labels[order[m1 >= 0]]
    cm.index_put_((diag, diag), torch.ones_like(diag), accumulate=True)
    # pass 2: what is left, class-agnostic inside each image, in score order
    o2 = torch.sort(det_left).values                           # input order, then score, then image
    o2 = o2[torch.sort(-flat.det_scores[o2], stable=True).indices]
    o2 = o2[torch.sort(flat.det_images[o2], stable=True).indices]
    g2 = torch.sort(g_order[~gt_hit[g_order]]).values          # input order: by image, then position
    pd, pg = _pairs(flat.det_images[o2], flat.gt_images[g2], max(flat.num_images, 1))
    m2 = _greedy(pd, pg, _iou(flat.det_boxes[o2][pd], flat.gt_boxes[g2][pg]),
                 flat.det_images[o2], flat.gt_images[g2], thr, o2.numel())[0]
    hit = m2 >= 0
    cm.index_put_((flat.gt_labels[g2[m2[hit]]], flat.det_labels[o2[hit]]),
                  torch.ones(int(hit.sum()), dtype=torch.int64), accumulate=True)
    gt_hit[g2[m2[hit]]] = True
    spurious = flat.det_labels[o2[~hit]]
    cm.index_put_((torch.full_like(spurious, C), spurious), torch.ones_like(spurious), accumulate=True)
    missed = flat.gt_labels[~gt_hit]
    cm.index_put_((missed, torch.full_like(missed, C)), torch.ones_like(missed), accumulate=True)
    return cm


def _check_unit(name: str, value: Any, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0) \
            or (low_open and value == 0.0):
        raise StateError(f"metrics: {name} must be a number in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")
    return float(value)


def confusion_matrix(detections: Sequence[Any], targets: Sequence[Any], num_classes: int, conf: float = 0.25,
                     iou: float = 0.5, max_dets: int = 100) -> torch.Tensor:
    """A [C+1, C+1] count matrix: rows the true class, columns the predicted class, index C background.

    Detections scoring >= ``conf`` are matched first within their class
    (COCO's greedy rule at IoU >= ``iou``: the diagonal is the true
    positives), then what is left across classes inside each image (the
    confusions). A detection still unmatched counts in the background row, a
    gt still unmatched in the background column::

        cm = confusion_matrix(dets, targets, num_classes=17, conf=0.25)
        cm[:17, 17]                 # missed ground truth per class
    """
    flat = _flatten(detections, targets, num_classes)
    return _confusion_flat(flat, _check_unit("conf", conf), _check_unit("iou", iou, True),
                           _kept(flat, _check_max_dets(max_dets)))


# --------------------------------------------------------------------------- the report


CONF_POINTS = 1001
"""Score thresholds the confidence curves are computed at: 0, 0.001, ..., 1."""


@attrs.frozen(eq=False)
class ConfidenceCurves:
    """Precision, recall and F1 of each class at IoU 0.5 as the score threshold rises — the curves an
    Ultralytics user picks ``conf`` from.

    ``conf`` [G] runs from 0 to 1; ``precision``, ``recall`` and ``f1`` are
    [C, G], NaN rows for classes without gt. Where no detection of a class
    passes a threshold its precision is 1 (no false positive), as Ultralytics
    draws it::

        curves = confidence_curves(match_detections(dets, tgts, num_classes=17))
        conf, f1 = curves.best()      # the threshold where the mean F1 over the classes peaks
    """

    conf: torch.Tensor
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over the classes with gt of ``values`` [C, G] (``self.f1``, ...): one curve [G]."""
        has = ~torch.isnan(values).all(dim=1)
        return values[has].mean(dim=0) if bool(has.any()) else torch.full_like(self.conf, math.nan)

    def best(self) -> tuple[float, float]:
        """The threshold where the mean F1 peaks (the lowest of equal peaks) and that F1; NaNs without gt."""
        mean = self.mean(self.f1)
        if bool(torch.isnan(mean).all()):
            return math.nan, math.nan
        i = int(torch.argmax(torch.nan_to_num(mean, nan=-1.0)))
        return float(self.conf[i]), float(mean[i])


def confidence_curves(matches: Matches, points: int = CONF_POINTS) -> ConfidenceCurves:
    """Per class, the precision, recall and F1 at IoU 0.5 of the detections scoring at least each threshold.

    ``confidence_curves(match_detections(dets, tgts, 17)).f1[3]`` is class 3's F1 at ``points`` thresholds.
    """
    conf = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    C = int(matches.num_gt.numel())
    precision = torch.full((C, points), math.nan, dtype=torch.float64)
    recall = torch.full((C, points), math.nan, dtype=torch.float64)
    order = torch.sort(matches.scores.double(), descending=True, stable=True).indices
    scores, labels = matches.scores.double()[order], matches.labels[order]
    hits = matches.matched[0][order] if matches.matched.numel() else torch.zeros(0, dtype=torch.bool)
    for c in range(C):
        n_gt = int(matches.num_gt[c])
        if n_gt == 0:
            continue
        mine = labels == c
        ranked = scores[mine]                                          # descending
        passed = ranked.numel() - torch.searchsorted(ranked.flip(0), conf)   # how many score >= each threshold
        tp = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(hits[mine].double(), 0)])[passed]
        precision[c] = torch.where(passed > 0, tp / passed.clamp(min=1), 1.0)
        recall[c] = tp / n_gt
    total = precision + recall
    f1 = torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-300), 0.0)
    f1 = torch.where(torch.isnan(precision), math.nan, f1)
    return ConfidenceCurves(conf=conf, precision=precision, recall=recall, f1=f1)


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan


@attrs.frozen(eq=False)
class DetectionReport:
    """Everything :func:`evaluate` measures, per class (index order of ``class_names``).

    ``ap`` [T, C] is COCO AP per IoU threshold (NaN for a class without gt);
    ``precision``/``recall``/``f1`` [C] are at ``conf`` and IoU 0.5;
    ``confusion`` [C+1, C+1] has rows true, columns predicted, last background;
    ``pr`` is COCO's precision table [T, R, C]; ``by_conf`` P, R and F1 against
    the score threshold (:class:`ConfidenceCurves`)::

        report = evaluate(dets, targets, class_names)
        report.map50, report.ap50[3], report.confusion[-1]   # background row: spurious detections
        report.metrics()            # the flat {name: float} the training loop records
    """

    class_names: tuple[str, ...]
    layers: Mapping[str, tuple[str, ...]]
    num_images: int
    num_gt: torch.Tensor
    num_det: torch.Tensor
    ap: torch.Tensor
    max_recall: torch.Tensor
    pr: torch.Tensor
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    confusion: torch.Tensor
    conf: float
    max_dets: int
    by_conf: ConfidenceCurves | None = None

    @property
    def ap50(self) -> torch.Tensor:
        """AP at IoU 0.5 per class [C] (NaN without gt)."""
        return self.ap[0]

    @property
    def ap50_95(self) -> torch.Tensor:
        """AP averaged over IoU 0.50:0.95 per class [C] (NaN without gt)."""
        return self.ap.mean(0)

    @property
    def has_gt(self) -> torch.Tensor:
        """Which classes have ground truth [C] (only those count in a mean)."""
        return self.num_gt > 0

    @property
    def map50(self) -> float:
        """mAP at IoU 0.5 over the classes with gt (NaN when none has any): COCOeval's stats[1]."""
        return _nanmean(self.ap50)

    @property
    def map(self) -> float:
        """mAP over IoU 0.50:0.95 and the classes with gt: COCOeval's stats[0]."""
        return _nanmean(self.ap50_95)

    def layer_indices(self, layer: str) -> list[int]:
        """The class indices of ``layer``."""
        return [self.class_names.index(n) for n in self.layers[layer]]

    def metrics(self) -> dict[str, float]:
        """The flat metrics: ``mAP50``, ``mAP50-95``, ``precision``, ``recall``, ``F1``, per layer and class.

        A mean over no class (no gt at all, or none in a layer) and the AP of a
        class without gt are left out rather than recorded as NaN::

            evaluate(dets, targets, names, layers).metrics()["mAP50/banknote"]
        """
        out: dict[str, float] = {}
        has = self.has_gt

        def put(name: str, value: float) -> None:
            if not math.isnan(value):
                out[name] = value

        put("mAP50", self.map50)
        put("mAP50-95", self.map)
        put("precision", _nanmean(torch.where(has, self.precision, math.nan)))
        put("recall", _nanmean(torch.where(has, self.recall, math.nan)))
        put("F1", _nanmean(torch.where(has, self.f1, math.nan)))
        for layer in self.layers:
            idx = torch.tensor(self.layer_indices(layer), dtype=torch.int64)
            put(f"mAP50/{layer}", _nanmean(self.ap50[idx]))
            put(f"mAP50-95/{layer}", _nanmean(self.ap50_95[idx]))
        for c, name in enumerate(self.class_names):
            put(f"AP50/{name}", float(self.ap50[c]))
            put(f"AP50-95/{name}", float(self.ap50_95[c]))
        return out

    def pr_curves(self, iou_index: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{class: (recall points, precision)}`` at ``IOU_THRESHOLDS[iou_index]`` for classes with gt.

        ``plots.pr_curve_figure(report.pr_curves(), ap={n: float(a) for n, a in zip(names, report.ap50)})``
        """
        rec = torch.tensor(RECALL_POINTS, dtype=torch.float64)
        return {n: (rec, self.pr[iou_index, :, c]) for c, n in enumerate(self.class_names) if self.num_gt[c] > 0}

    def table(self) -> str:
        """A plain-text table: one row per class, per layer and for all classes (``-`` where undefined)."""
        def f(v: float) -> str:
            return "    -" if math.isnan(v) else f"{v:5.3f}"

        layer_of = {n: layer for layer, names in self.layers.items() for n in names}
        w = max([len(n) for n in self.class_names] + [len(x) for x in self.layers] + [5])
        head = f"{'class':<{w}}  {'layer':<10} {'gt':>6} {'dets':>6}     P     R    F1  AP50 AP50-95"
        rows = [head, "-" * len(head)]
        has = self.has_gt
        for c, n in enumerate(self.class_names):
            p, r, f1 = (float(x[c]) if has[c] else math.nan for x in (self.precision, self.recall, self.f1))
            rows.append(f"{n:<{w}}  {layer_of.get(n, ''):<10} {int(self.num_gt[c]):>6} {int(self.num_det[c]):>6} "
                        f"{f(p)} {f(r)} {f(f1)} {f(float(self.ap50[c]))}   {f(float(self.ap50_95[c]))}")
        rows.append("-" * len(head))
        groups = [(layer, self.layer_indices(layer)) for layer in self.layers]
        groups.append(("all", list(range(len(self.class_names)))))
        for name, idx in groups:
            ix = torch.tensor(idx, dtype=torch.int64)
            sel = torch.where(has[ix], 1.0, math.nan)
            rows.append(f"{name:<{w}}  {'':<10} {int(self.num_gt[ix].sum()):>6} {int(self.num_det[ix].sum()):>6} "
                        f"{f(_nanmean(self.precision[ix] * sel))} {f(_nanmean(self.recall[ix] * sel))} "
                        f"{f(_nanmean(self.f1[ix] * sel))} {f(_nanmean(self.ap50[ix]))}   "
                        f"{f(_nanmean(self.ap50_95[ix]))}")
        return "\n".join(rows)


def _check_names(class_names: Sequence[str], layers: Mapping[str, Sequence[str]] | None
                 ) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or not class_names:
        raise StateError(f"metrics: class_names must be a non-empty sequence of names, got {class_names!r}")
    names = tuple(str(n) for n in class_names)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise StateError(f"metrics: class_names repeats {', '.join(dup)}; give each class once")
    if layers is not None and not isinstance(layers, Mapping):
        raise StateError(f"metrics: layers must map a layer name to its class names, got {type(layers).__name__}")
    out: dict[str, tuple[str, ...]] = {}
    for layer, members in (layers or {}).items():
        if isinstance(members, str) or not isinstance(members, Sequence):
            raise StateError(f"metrics: layers[{layer!r}] must be a sequence of class names, got {members!r}")
        unknown = [str(m) for m in members if str(m) not in names]
        if unknown:
            raise StateError(f"metrics: layers[{layer!r}] names {', '.join(map(repr, unknown))}, not in class_names "
                             f"({', '.join(names)})")
        out[str(layer)] = tuple(str(m) for m in members)
    return names, out


def evaluate(detections: Sequence[Any], targets: Sequence[Any], class_names: Sequence[str],
             layers: Mapping[str, Sequence[str]] | None = None, conf: float = 0.25,
             max_dets: int = 100) -> DetectionReport:
    """The full evaluation of a detector over images: COCO AP, per-layer mAP, P/R/F1 at ``conf``, confusion.

    ``detections[i]`` and ``targets[i]`` belong to image ``i`` (records,
    mappings or tuples, see :func:`as_detections`); labels index
    ``class_names``; ``layers`` maps a layer name to its class names::

        report = evaluate(dets, targets, ("001", "002", "l3_sign"), {"banknote": ("001", "002")})
        report.map50, report.metrics()["mAP50-95/banknote"], report.confusion
    """
    names, layer_map = _check_names(class_names, layers)
    conf = _check_unit("conf", conf)
    max_dets = _check_max_dets(max_dets)
    flat = _flatten(detections, targets, len(names))
    kept = _kept(flat, max_dets)
    matches = _match_flat(flat, kept)
    table = coco_precision(matches)
    C = len(names)
    sure = matches.scores >= conf
    tp = torch.bincount(matches.labels[sure & matches.matched[0]], minlength=C).double()
    n_pos = torch.bincount(matches.labels[sure], minlength=C).double()
    n_gt = matches.num_gt.double()
    precision = torch.where(n_pos > 0, tp / n_pos.clamp(min=1), 0.0)
    recall = torch.where(n_gt > 0, tp / n_gt.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-300), 0.0)
    return DetectionReport(
        class_names=names, layers=layer_map, num_images=flat.num_images, num_gt=matches.num_gt,
        num_det=torch.bincount(matches.labels, minlength=C), ap=table.ap, max_recall=table.recall,
        pr=table.precision, precision=precision, recall=recall, f1=f1,
        confusion=_confusion_flat(flat, conf, 0.5, kept), conf=conf, max_dets=max_dets,
        by_conf=confidence_curves(matches),
    )


def by_layer(detections: Sequence[Any], targets: Sequence[Any], class_names: Sequence[str],
             layers: Mapping[str, Sequence[str]], iou: float = 0.6, max_dets: int = 100) -> DetectionReport:
    """The boxes apart from their classes: :func:`evaluate` with each layer one class.

    A detection counts when it covers a note (or feature) of its layer,
    whatever the class it names there, so a ``002`` box on a ``001`` note is a
    hit; of detections of one layer that overlap above ``iou`` (one place named
    by several classes) the highest-scoring is kept, as class-aware NMS could
    not. A layer's AP50-95 against its AP50 says how tight the boxes are once
    found, apart from telling the look-alike classes of the layer apart::

        boxes = by_layer(dets, targets, names, {"banknote": ("001", "002"), "security": ("l3_sign",)})
        boxes.metrics()["AP50-95/banknote"] / boxes.metrics()["AP50/banknote"]
    """
    names, layer_map = _check_names(class_names, layers)
    order = list(layer_map)
    layer_of = torch.tensor([next((order.index(l) for l, ns in layer_map.items() if n in ns), -1) for n in names],
                            dtype=torch.int64)
    if not order or bool((layer_of < 0).any()):
        raise StateError(f"by_layer: every class needs a layer; in none: "
                         f"{', '.join(n for n, l in zip(names, layer_of.tolist()) if l < 0)}")
    iou = _check_unit("iou", iou)
    flat = _flatten(detections, targets, len(names))  # every input checked as evaluate checks it
    det_layers, gt_layers = layer_of[flat.det_labels], layer_of[flat.gt_labels]
    # one NMS over every image: a category per (image, layer); kept in the flat order, so image by image
    keep = torchvision.ops.batched_nms(flat.det_boxes, flat.det_scores, flat.det_images * len(order) + det_layers,
                                       iou).sort().values
    per_image = torch.bincount(flat.det_images[keep], minlength=flat.num_images).tolist()
    gt_per_image = torch.bincount(flat.gt_images, minlength=flat.num_images).tolist()
    dets = [Detections(*parts) for parts in zip(*(t[keep].split(per_image) for t in
                                                  (flat.det_boxes, flat.det_scores, det_layers)))]
    truth = [Targets(*parts) for parts in zip(flat.gt_boxes.split(gt_per_image), gt_layers.split(gt_per_image))]
    return evaluate(dets, truth, order, max_dets=max_dets)


# --------------------------------------------------------------------------- the training-loop evaluator


def batch_targets(batch: Any) -> Sequence[Any]:
    """The per-image targets of a detection batch ``(images, targets, ...)`` or ``{"targets": ...}``.

    ``targets`` is a sequence with one entry per image: :class:`Targets`, a
    mapping with ``boxes``/``labels`` or a pair::

        batch_targets((images, [{"boxes": b0, "labels": l0}, {"boxes": b1, "labels": l1}]))
    """
    if isinstance(batch, Mapping) and "targets" in batch:
        targets = batch["targets"]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        targets = batch[1]
    else:
        raise DataError(f"detection batch: expected (images, targets, ...) or a mapping with 'targets', "
                        f"got {type(batch).__name__}; pass targets=<function batch -> per-image targets>")
    if isinstance(targets, torch.Tensor) or isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence):
        raise DataError(f"detection batch: targets must be a sequence with one entry per image "
                        f"(Targets, {{'boxes', 'labels'}} or (boxes, labels)), got {type(targets).__name__}; "
                        "for another layout pass targets=<function batch -> per-image targets>")
    return targets


def _detached(x: Any, cls: type) -> Any:
    r = as_detections(x) if cls is Detections else as_targets(x)
    return attrs.evolve(r, **{f.name: _raw(getattr(r, f.name)) for f in attrs.fields(cls)})


def collect_detections(decode: Callable[[Callable[..., Any], Any], Sequence[Any]], apply: Callable[..., Any],
            batches: Any, targets: Callable[[Any], Sequence[Any]] = batch_targets
            ) -> tuple[list[Detections], list[Targets]]:
    """Run ``decode(apply, batch)`` over ``batches`` (no gradient): all images' detections and targets, on the CPU.

    For the full report after training or in an eval command::

        dets, tgts = collect_detections(decode, state.apply, val_batches)
        report = evaluate(dets, tgts, CLASSES, LAYERS); print(report.table())
    """
    dets: list[Detections] = []
    tgts: list[Targets] = []
    with torch.no_grad():
        for batch in batches:
            d, t = _batch_pairs(decode, apply, batch, targets)
            dets.extend(d)
            tgts.extend(t)
    return dets, tgts


def _batch_pairs(decode: Callable, apply: Callable, batch: Any, targets: Callable
                 ) -> tuple[list[Detections], list[Targets]]:
    dets, tgts = list(decode(apply, batch)), list(targets(batch))
    if len(dets) != len(tgts):
        raise DataError(f"detection batch: decode gave detections for {len(dets)} images but the batch has "
                        f"targets for {len(tgts)}; return one entry per image")
    return [_detached(x, Detections) for x in dets], [_detached(x, Targets) for x in tgts]


def detection_evaluator(decode: Callable[[Callable[..., Any], Any], Sequence[Any]], class_names: Sequence[str],
                        layers: Mapping[str, Sequence[str]] | None = None, *,
                        targets: Callable[[Any], Sequence[Any]] = batch_targets, conf: float = 0.25,
                        max_dets: int = 100) -> Evaluator:
    """An :class:`~smartcash_fn.loop.Evaluator` of a detector: COCO mAP, per-layer mAP, P/R/F1, per-class AP.

    ``decode(apply, batch)`` runs the model (``apply(images)``) and returns
    one entry of detections per image; ``targets(batch)`` gives the batch's
    per-image ground truth. The images are evaluated together at the end;
    the loop records ``val/mAP50``, ``val/mAP50-95/<layer>``, ``val/AP50/<class>``...::

        ev = detection_evaluator(decode, CLASSES, LAYERS)
        loop = Loop(step, data, epochs=50, validation=Validation(val_data, ev))
        fit(state, loop.add(early_stopping(Monitor("val/mAP50", "max", 0.001), patience=15)))
    """
    if not callable(decode) or not callable(targets):
        raise StateError("detection_evaluator: decode must be a function (apply, batch) -> per-image detections "
                         "and targets a function batch -> per-image targets")
    names, layer_map = _check_names(class_names, layers)
    conf, max_dets = _check_unit("conf", conf), _check_max_dets(max_dets)

    def init() -> tuple[tuple, tuple]:
        return (), ()

    def update(acc: tuple[tuple, tuple], apply: Callable[..., Any], batch: Any) -> tuple[tuple, tuple]:
        dets, tgts = _batch_pairs(decode, apply, batch, targets)
        return acc[0] + tuple(dets), acc[1] + tuple(tgts)

    def finish(acc: tuple[tuple, tuple]) -> dict[str, float]:
        return evaluate(acc[0], acc[1], names, layer_map, conf=conf, max_dets=max_dets).metrics()

    def merge(a: tuple[tuple, tuple], b: tuple[tuple, tuple]) -> tuple[tuple, tuple]:
        return a[0] + b[0], a[1] + b[1]  # the images of consecutive shards, in order

    return Evaluator(init=init, update=update, finish=finish, merge=merge)
