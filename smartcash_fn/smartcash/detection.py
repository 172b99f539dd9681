"""Target assignment, the detection loss and decoding for the YOLO-style multi-layer head.

Each label layer (banknote, nominal, security) has its own head output per
level (strides 8, 16, 32): ``[B, 4 + 1 + C, H, W]`` — box, objectness and the
layer's class logits. ``docs/detection.md`` describes the assignment::

    layout = Layout.of({"banknote": 7, "nominal": 7, "security": 3})
    loss, parts = detection_loss(model(images), targets, layout, image_size=256)
    dets = decode(model(images), layout)   # per image: boxes, scores, labels

A target is a mapping with ``boxes`` (float ``[K, 4]``, xyxy pixels) and
``labels`` (int64 ``[K]``, global class ids in the layout's order).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import attrs
import torch
import torch.nn.functional as F
import torchvision

from .detector import STRIDES
from .metrics import Detections

Outputs = Mapping[str, Sequence[torch.Tensor]]

#: Objectness loss weight of each level (fine levels have many more cells).
LEVEL_BALANCE = (4.0, 1.0, 0.4)


@attrs.frozen
class Layout:
    """How global class ids split into layer groups: ``groups`` (name, classes) in id order.

    ``Layout.of({"banknote": 7, "nominal": 7, "security": 3}).group_of(9)`` is ``("nominal", 2)``.
    """

    groups: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, groups: Mapping[str, int]) -> "Layout":
        return cls(tuple((g, int(c)) for g, c in groups.items()))

    @property
    def num_classes(self) -> int:
        return sum(c for _, c in self.groups)

    def offset(self, group: str) -> int:
        """The global id of ``group``'s first class."""
        total = 0
        for g, c in self.groups:
            if g == group:
                return total
            total += c
        raise KeyError(group)

    def group_of(self, label: int) -> tuple[str, int]:
        """The group of a global class id and the id inside the group."""
        for g, c in self.groups:
            if label < c:
                return g, label
            label -= c
        raise KeyError(label)


@attrs.frozen
class LossWeights:
    """Weights of the loss parts; SmartCash used box 0.05, objectness 1.0, class 0.5."""

    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5


def _boxes(t: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, stride: int) -> torch.Tensor:
    """xyxy boxes from sigmoid-squashed box outputs ``t[..., 4]`` at cells ``(gx, gy)``.

    Centre: ``(cell + 2σ − 0.5) · stride`` (a cell predicts centres up to one
    cell away); size: ``(4σ)² · stride`` (0 to 16 strides).
    """
    cx = (gx + t[..., 0] * 2 - 0.5) * stride
    cy = (gy + t[..., 1] * 2 - 0.5) * stride
    bw = (t[..., 2] * 4) ** 2 * stride
    bh = (t[..., 3] * 4) ** 2 * stride
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)


def box_decode(raw: torch.Tensor, stride: int) -> torch.Tensor:
    """Boxes (xyxy pixels) of every cell of a raw head output ``[B, 4+…, H, W]`` → ``[B, H, W, 4]``."""
    _, _, h, w = raw.shape
    gy, gx = torch.meshgrid(torch.arange(h, device=raw.device, dtype=raw.dtype),
                            torch.arange(w, device=raw.device, dtype=raw.dtype), indexing="ij")
    return _boxes(raw[:, :4].permute(0, 2, 3, 1).sigmoid(), gx, gy, stride)


def level_of(sizes: torch.Tensor, image_size: int, strides: Sequence[int] = STRIDES) -> torch.Tensor:
    """The level (0, 1, 2 for strides 8, 16, 32) a box of longest side ``sizes`` is assigned to.

    Boxes up to a quarter of the image go to stride 8, up to half to stride 16,
    larger ones to stride 32 (for a 256-px input: 64 px and 128 px) — but a
    level never takes boxes over 8 of its strides (half the 16 strides a cell
    can reach), so at 640 px the limits are 64 px and 128 px, not 160 and 320.
    """
    first = min(image_size / 4, 8 * strides[0])
    second = min(image_size / 2, 8 * strides[1])
    return (sizes > first).long() + (sizes > second).long()


def _group_targets(targets: Sequence[Mapping[str, torch.Tensor]], layout: Layout, group: str,
                   device: torch.device) -> torch.Tensor:
    """Rows ``(image, class-in-group, x1, y1, x2, y2)`` of one group's targets over the batch."""
    lo = layout.offset(group)
    hi = lo + dict(layout.groups)[group]
    rows = []
    for i, t in enumerate(targets):
        labels = t["labels"].to(device)
        keep = (labels >= lo) & (labels < hi)
        if keep.any():
            boxes = t["boxes"].to(device, torch.float32)[keep]
            img = torch.full((int(keep.sum()), 1), float(i), device=device)
            rows.append(torch.cat([img, (labels[keep] - lo).float()[:, None], boxes], 1))
    return torch.cat(rows) if rows else torch.zeros((0, 6), device=device)


def _positives(rows: torch.Tensor, stride: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cells that learn each target: its centre cell and the two neighbours nearest the centre.

    Returns (row index, grid y, grid x) of every positive, duplicates removed
    (the later target wins a shared cell).
    """
    cx = (rows[:, 2] + rows[:, 4]) / 2 / stride
    cy = (rows[:, 3] + rows[:, 5]) / 2 / stride
    gx, gy = cx.floor(), cy.floor()
    fx, fy = cx - gx, cy - gy
    nx = torch.where(fx < 0.5, gx - 1, gx + 1)
    ny = torch.where(fy < 0.5, gy - 1, gy + 1)
    idx = torch.arange(len(rows), device=rows.device)
    all_idx = torch.cat([idx, idx, idx])
    all_x = torch.cat([gx, nx, gx]).long()
    all_y = torch.cat([gy, gy, ny]).long()
    ok = (all_x >= 0) & (all_x < w) & (all_y >= 0) & (all_y < h)
    all_idx, all_y, all_x = all_idx[ok], all_y[ok], all_x[ok]
    # one target per (image, cell): keep the last writer, deterministically
    img = rows[all_idx, 0].long()
    key = (img * h + all_y) * w + all_x
    order = torch.argsort(key * (len(rows) + 1) + all_idx, stable=True)
    key_sorted = key[order]
    last = torch.ones_like(key_sorted, dtype=torch.bool)
    if len(key_sorted) > 1:
        last[:-1] = key_sorted[1:] != key_sorted[:-1]
    sel = order[last]
    return all_idx[sel], all_y[sel], all_x[sel]


def detection_loss(outputs: Outputs, targets: Sequence[Mapping[str, torch.Tensor]], layout: Layout,
                   image_size: int, weights: LossWeights = LossWeights(),
                   strides: Sequence[int] = STRIDES) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of box (CIoU), objectness and class losses, and the three parts.

    Objectness targets at positive cells are the detached IoU of the
    predicted box with its target, so scores rank boxes by quality.
    """
    any_out = next(iter(outputs.values()))[0]
    device, batch = any_out.device, any_out.shape[0]
    box_l = torch.zeros((), device=device)
    obj_l = torch.zeros((), device=device)
    cls_l = torch.zeros((), device=device)
    n_box = 0
    for group, classes in layout.groups:
        rows = _group_targets(targets, layout, group, device)
        levels = level_of(torch.maximum(rows[:, 4] - rows[:, 2], rows[:, 5] - rows[:, 3]), image_size, strides)
        for li, (raw, stride) in enumerate(zip(outputs[group], strides)):
            raw = raw.float()
            h, w = raw.shape[-2:]
            obj_t = torch.zeros((batch, h, w), device=device)
            mine = rows[levels == li]
            if len(mine):
                ridx, gy, gx = _positives(mine, stride, h, w)
                img = mine[ridx, 0].long()
                pred = raw[img, :, gy, gx]  # [P, 5 + C]
                boxes = _boxes(pred[:, :4].sigmoid(), gx.float(), gy.float(), stride)
                tbox = mine[ridx, 2:6]
                box_l = box_l + torchvision.ops.complete_box_iou_loss(boxes, tbox, reduction="sum")
                n_box += len(ridx)
                iou = torchvision.ops.box_iou(boxes.detach(), tbox).diagonal().clamp(0)
                obj_t[img, gy, gx] = iou
                cls_t = F.one_hot(mine[ridx, 1].long(), classes).float()
                cls_l = cls_l + F.binary_cross_entropy_with_logits(pred[:, 5:], cls_t, reduction="sum") / classes
            obj_l = obj_l + LEVEL_BALANCE[li] * F.binary_cross_entropy_with_logits(raw[:, 4], obj_t)
    n = max(n_box, 1)
    box_l, cls_l = box_l / n, cls_l / n
    obj_l = obj_l / len(layout.groups)
    total = (weights.box * box_l + weights.obj * obj_l + weights.cls * cls_l) * batch
    return total, {"box": box_l.detach(), "obj": obj_l.detach(), "cls": cls_l.detach()}


def decode(outputs: Outputs, layout: Layout, conf: float = 0.001, iou: float = 0.6, max_det: int = 100,
           pre_nms: int = 3000, strides: Sequence[int] = STRIDES) -> list[Detections]:
    """Per-image detections: score = σ(obj)·σ(cls) above ``conf``, class-wise NMS at ``iou``, top ``max_det``.

    A cell may give several classes (multi-label) when their scores pass ``conf``.
    """
    boxes_all, scores_all, labels_all = [], [], []
    for group, classes in layout.groups:
        off = layout.offset(group)
        for raw, stride in zip(outputs[group], strides):
            raw = raw.float()
            b, _, h, w = raw.shape
            boxes = box_decode(raw, stride).reshape(b, h * w, 4)
            score = (raw[:, 4:5].sigmoid() * raw[:, 5:].sigmoid()).permute(0, 2, 3, 1).reshape(b, h * w, classes)
            boxes_all.append(boxes[:, :, None, :].expand(b, h * w, classes, 4).reshape(b, -1, 4))
            scores_all.append(score.reshape(b, -1))
            labels_all.append((torch.arange(classes, device=raw.device) + off).repeat(h * w)[None].expand(b, -1))
    boxes = torch.cat(boxes_all, 1)
    scores = torch.cat(scores_all, 1)
    labels = torch.cat(labels_all, 1)
    out = []
    for i in range(boxes.shape[0]):
        s = scores[i]
        keep = s > conf
        s, bx, lb = s[keep], boxes[i][keep], labels[i][keep]
        if len(s) > pre_nms:
            top = s.topk(pre_nms).indices
            s, bx, lb = s[top], bx[top], lb[top]
        k = torchvision.ops.batched_nms(bx, s, lb, iou)[:max_det]
        out.append(Detections(bx[k], s[k], lb[k]))
    return out
