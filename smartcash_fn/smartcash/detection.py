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

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import attrs
import torch
import torch.nn.functional as F
import torchvision

from ..errors import StateError
from .detector import BINS, STRIDES
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


def cell_grid(h: int, w: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The column and row index of every cell of an ``h × w`` grid, each ``[h, w]``: a cell's centre is
    ``(gx + 0.5, gy + 0.5)`` strides::

        gx, gy = cell_grid(2, 3)    # gx [[0, 1, 2], [0, 1, 2]], gy [[0, 0, 0], [1, 1, 1]]
    """
    gy, gx = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return gx, gy


def box_decode(raw: torch.Tensor, stride: int) -> torch.Tensor:
    """Boxes (xyxy pixels) of every cell of a raw head output ``[B, 4+…, H, W]`` → ``[B, H, W, 4]``."""
    gx, gy = cell_grid(*raw.shape[-2:], raw.device, raw.dtype)
    return _boxes(raw[:, :4].permute(0, 2, 3, 1).sigmoid(), gx, gy, stride)


def distance_boxes(dist: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, stride: torch.Tensor | float
                   ) -> torch.Tensor:
    """xyxy boxes from a decoupled head's side distributions ``dist[..., 4, bins]`` (logits) at centres ``(cx, cy)``.

    Each side's distance is the distribution's mean, in strides; the bins end at ``BINS − 1`` (15) strides and
    start at 0, or below 0 when there are more than ``BINS`` of them (a head with ``sides_from = -1`` has 17,
    from −1)::

        distance_boxes(torch.zeros(4, 16), torch.tensor(8.0), torch.tensor(8.0), 8.0)   # 7.5 strides each side
        distance_boxes(torch.zeros(4, 17), torch.tensor(8.0), torch.tensor(8.0), 8.0)   # 7 strides each side
    """
    bins = torch.arange(BINS - dist.shape[-1], BINS, device=dist.device, dtype=torch.float32)
    d = (dist.float().softmax(-1) @ bins) * (stride[..., None] if isinstance(stride, torch.Tensor) else stride)
    return torch.stack([cx - d[..., 0], cy - d[..., 1], cx + d[..., 2], cy + d[..., 3]], -1)


def upright(boxes: torch.Tensor) -> torch.Tensor:
    """xyxy ``boxes`` with each inverted side pair (``x2 < x1`` or ``y2 < y1``) met at its middle: a box of
    zero width (or height) there. Sides that start below zero (``sides_from = -1``) let a cell's two opposite
    distances sum below zero; the evaluator refuses such a box, and no object is that thin::

        upright(torch.tensor([10.0, 20, 14, 18]))   # tensor([10., 19., 14., 19.])
    """
    mid = (boxes[..., :2] + boxes[..., 2:]) / 2
    return torch.cat([torch.minimum(boxes[..., :2], mid), torch.maximum(boxes[..., 2:], mid)], -1)


def side_bins(channels: int, classes: int) -> int | None:
    """The distance bins per side of a decoupled head output with ``channels`` channels and ``classes`` classes
    (``BINS``, or more for a head that reaches below zero), or None for another head (the coupled one)::

        side_bins(4 * 16 + 7, 7), side_bins(4 * 17 + 3, 3), side_bins(5 + 7, 7)   # (16, 17, None)
    """
    bins, rest = divmod(channels - classes, 4)
    return bins if rest == 0 and bins >= BINS else None


def cell_predictions(raw: torch.Tensor, stride: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every cell's box (xyxy pixels) and class scores from one head output: ``[B, H·W, 4]``, ``[B, H·W, classes]``.

    The coupled head (``4 + 1 + classes`` channels) scores σ(obj)·σ(cls); the
    decoupled one (``4 · bins + classes``, :func:`side_bins`) σ(cls), its boxes from the side
    distributions around the cell's centre.
    """
    raw = raw.float()
    b, c, h, w = raw.shape
    bins = side_bins(c, classes)
    if bins is not None:
        gx, gy = cell_grid(h, w, raw.device, raw.dtype)
        dist = raw[:, :4 * bins].reshape(b, 4, bins, h * w).permute(0, 3, 1, 2)
        boxes = distance_boxes(dist, (gx.reshape(-1) + 0.5) * stride, (gy.reshape(-1) + 0.5) * stride, stride)
        return upright(boxes), raw[:, 4 * bins:].sigmoid().reshape(b, classes, h * w).transpose(1, 2)
    if c != 5 + classes:
        raise StateError(f"a head output of {c} channels fits neither the coupled head ({5 + classes}: box, "
                         f"objectness, {classes} classes) nor the decoupled one (4 x {BINS} or more distance "
                         f"bins and {classes} classes)")
    boxes = box_decode(raw, stride).reshape(b, h * w, 4)
    score = (raw[:, 4:5].sigmoid() * raw[:, 5:].sigmoid()).permute(0, 2, 3, 1).reshape(b, h * w, classes)
    return boxes, score


def level_of(sizes: torch.Tensor, image_size: float, strides: Sequence[int] = STRIDES) -> torch.Tensor:
    """The level (0, 1, 2 for strides 8, 16, 32) a box of longest side ``sizes`` is assigned to.

    Boxes up to a quarter of the image go to stride 8, up to half to stride 16,
    larger ones to stride 32 (for a 256-px input: 64 px and 128 px) — but a
    level never takes boxes over 8 of its strides (half the 16 strides a cell
    can reach), so at 640 px the limits are 64 px and 128 px, not 160 and 320.
    ``image_size=math.inf`` applies the stride limits alone, whatever the image.
    """
    first = min(image_size / 4, 8 * strides[0])
    second = min(image_size / 2, 8 * strides[1])
    return (sizes > first).long() + (sizes > second).long()


def _pick(index: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
    """``values[index]`` for an integer tensor ``index``, with the values as kernel arguments: no host copy.

    ``_pick(torch.tensor([2, 0]), (8, 16, 32))`` is ``tensor([32, 8])``; an index outside gives 0.
    """
    out = torch.zeros(index.shape, dtype=torch.float32, device=index.device)
    for i, v in enumerate(values):
        out = torch.where(index == i, float(v), out)
    return out


def _thrice(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``[B, M, ...]`` repeated for each target's three candidate cells: ``[B, M, 3, ...]``, always a copy.

    A copy whatever the shape (``torch.stack``), where ``expand(...).reshape(...)``
    would copy for some target counts and not for others.
    """
    return torch.stack((t, t, t), 2)


def unit_box(device: torch.device | str | None = None) -> torch.Tensor:
    """The box ``(0, 0, 1, 1)``, made on ``device`` by a kernel: ``torch.tensor`` would copy it from the
    host, and on a GPU the host waits for that copy. ``unit_box("cpu").tolist() == [0.0, 0.0, 1.0, 1.0]``."""
    return (torch.arange(4, device=device) >= 2).float()


def pad_targets(targets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch's per-image targets as two fixed-size tensors: ``boxes [B, M, 4]`` and ``labels [B, M]``.

    ``M`` is the largest target count of the batch; the rows past an image's
    own targets hold the box ``(0, 0, 1, 1)`` and the label ``-1`` (no
    target). :func:`detection_collate` pads in the data loader, so the loss
    receives a batch it can compute on without a per-image loop::

        padded = pad_targets([{"boxes": torch.tensor([[1.0, 2, 9, 8]]), "labels": torch.tensor([3])},
                              {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}])
        padded["labels"].tolist()    # [[3], [-1]]
    """
    count = max((len(t["labels"]) for t in targets), default=0)
    device = targets[0]["boxes"].device if len(targets) else torch.device("cpu")
    boxes = unit_box(device).repeat(len(targets), count, 1)
    labels = torch.full((len(targets), count), -1, dtype=torch.int64, device=device)
    for i, t in enumerate(targets):
        k = len(t["labels"])
        boxes[i, :k] = t["boxes"].to(device, torch.float32).reshape(k, 4)
        labels[i, :k] = t["labels"].to(device, torch.int64)
    return {"boxes": boxes, "labels": labels}


def detection_collate(batch: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]]
                      ) -> tuple[torch.Tensor, list[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Stack the images and keep the targets both per image and padded: ``(images, targets, padded)``.

    The list serves the evaluator and the plots; the padded form
    (:func:`pad_targets`) feeds the loss. Padding here, in the loader's
    workers, keeps the per-image loop out of the training step and moves one
    pair of tensors to the device instead of two per image::

        images, targets, padded = detection_collate([(torch.zeros(3, 64, 64), {"boxes": torch.zeros((0, 4)),
                                                       "labels": torch.zeros(0, dtype=torch.int64)})])
    """
    targets = [b[1] for b in batch]
    return torch.stack([b[0] for b in batch]), targets, pad_targets(targets)


def ciou_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The complete-IoU loss of box pairs ``a[..., 4]``, ``b[..., 4]`` (xyxy), elementwise, no reduction.

    ``1 − IoU + ρ²/c² + α·v`` (Zheng et al. 2020): ``ρ`` the distance of the
    centres, ``c`` the diagonal of the smallest box enclosing both,
    ``v = 4/π² (atan(w_b/h_b) − atan(w_a/h_a))²`` and ``α = v / (1 − IoU + v)``
    (no gradient through ``α``). The values of
    ``torchvision.ops.complete_box_iou_loss``, computed with clamps instead of
    a boolean mask so it runs on any shape without a host synchronization::

        ciou_loss(torch.tensor([0.0, 0, 2, 2]), torch.tensor([0.0, 0, 2, 2]))   # tensor(0.)
    """
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    iou = inter / (union + eps)
    diag = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)) ** 2 \
        + (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)) ** 2 + eps
    dist = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2) ** 2 + ((ay1 + ay2) / 2 - (by1 + by2) / 2) ** 2
    v = (4 / math.pi ** 2) * (torch.atan((bx2 - bx1) / (by2 - by1)) - torch.atan((ax2 - ax1) / (ay2 - ay1))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return 1 - iou + dist / diag + alpha * v


def pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The IoU of box pairs ``a[..., 4]``, ``b[..., 4]`` (xyxy), elementwise: the diagonal of ``box_iou(a, b)``.

    ``pair_iou(torch.tensor([0.0, 0, 2, 2]), torch.tensor([1.0, 0, 3, 2]))`` is ``tensor(0.3333)``.
    """
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter)


@attrs.frozen
class Heads:
    """Where each head's cells sit in the flat cell axis of a batch's outputs, one entry per (group, level).

    ``heads[g * levels + l]`` is group ``g`` at level ``l``: its grid ``(h, w)``
    and its first cell ``base`` in the concatenation of every head's cells;
    ``cells`` counts them all. ``Heads.of(outputs, layout)``.
    """

    shapes: tuple[tuple[int, int], ...]
    bases: tuple[int, ...]
    levels: int
    cells: int

    @classmethod
    def of(cls, outputs: Outputs, layout: Layout) -> "Heads":
        shapes = tuple(tuple(raw.shape[-2:]) for g, _ in layout.groups for raw in outputs[g])
        bases, total = [], 0
        for h, w in shapes:
            bases.append(total)
            total += h * w
        return cls(shapes, tuple(bases), len(outputs[layout.groups[0][0]]), total)


def shape_constant(build: Callable[..., Any]) -> Callable[..., Any]:
    """Make ``build`` (hashable arguments: grids, sizes, a device) a shared constant: built once per arguments
    (an lru cache of 16) as plain tensors without gradient, whatever mode the first call ran in. What it
    returns is shared by every later call: never change it in place::

        @shape_constant
        def ones(n: int, device: torch.device) -> torch.Tensor:
            return torch.ones(n, device=device)
    """
    @functools.lru_cache(maxsize=16)
    @functools.wraps(build)
    def made(*args: Any) -> Any:
        with torch.inference_mode(False), torch.no_grad():
            return build(*args)

    return made


def in_float32(loss: Callable[..., Any]) -> Callable[..., Any]:
    """Make ``loss`` (its first argument: the head's outputs, by layer name) compute in float32 inside an
    autocast region: the outputs are taken as float32 and no op of the loss is lowered to bf16 or fp16, so
    a ``precision = "bf16"`` step places boxes with the loss of the float32 step::

        @in_float32
        def my_loss(outputs, targets, layout): ...
    """
    @functools.wraps(loss)
    def computed(outputs: Outputs, *args: Any, **kwargs: Any) -> Any:
        device = next(iter(outputs.values()))[0].device.type
        with torch.autocast(device_type=device, enabled=False):
            return loss(outputs, *args, **kwargs)

    return computed


@shape_constant
def head_table(heads: Heads, device: torch.device) -> torch.Tensor:
    """``[heads, 3]`` int64: each head's grid width, height and first cell, made on ``device`` by kernels
    once per grids and device, then shared (never change it in place)::

        head_table(Heads(((2, 3),), (0,), 1, 6), torch.device("cpu")).tolist()    # [[3, 2, 0]]
    """
    values = [v for (h, w), base in zip(heads.shapes, heads.bases) for v in (w, h, base)]
    return torch.stack([torch.full((), v, dtype=torch.int64, device=device) for v in values]).view(-1, 3)


@shape_constant
def _objectness_balance(heads: Heads, batch: int, groups: int, device: torch.device) -> torch.Tensor:
    """Each cell's objectness weight ``[cells]``: its level's :data:`LEVEL_BALANCE` over the batch's cells of
    that head and over the groups; made once per grids, batch size and device, then shared."""
    return torch.cat([torch.full((h * w,), LEVEL_BALANCE[i % heads.levels] / (batch * h * w), device=device)
                      for i, (h, w) in enumerate(heads.shapes)]) / groups


@attrs.frozen
class Assignment:
    """Which cells learn which target, for a padded batch: three candidate cells per target, ``[B, M, 3]`` each.

    ``x``, ``y``: the candidate's grid cell (centre cell, then the horizontal
    and the vertical neighbour nearer the centre); ``stride`` its level's
    stride; ``cell``: its index in the flat cell axis (:class:`Heads`);
    ``positive``: whether it learns the target — inside the grid, a real
    target, and the last target of the image to claim that cell. ``group``
    and ``cls`` (``[B, M]``) are each target's group index and class in the group.
    """

    x: torch.Tensor
    y: torch.Tensor
    stride: torch.Tensor
    cell: torch.Tensor
    positive: torch.Tensor
    group: torch.Tensor
    cls: torch.Tensor


def split_labels(labels: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global class ids as ``(valid, group, cls)``: whether each is a class of the layout, its group's index and
    its class in the group, elementwise in tensor ops (a padding label ``-1`` is not valid)::

        split_labels(torch.tensor([9, -1]), Layout.of({"banknote": 7, "nominal": 7}))   # ([T, F], [1, 0], [2, -1])
    """
    valid = (labels >= 0) & (labels < layout.num_classes)
    offsets = [layout.offset(g) for g, _ in layout.groups]
    group = sum(((labels >= o).long() for o in offsets[1:]), torch.zeros_like(labels))
    return valid, group, labels - _pick(group, offsets).long()


def assign(padded: Mapping[str, torch.Tensor], layout: Layout, heads: Heads, image_size: int,
           strides: Sequence[int] = STRIDES) -> Assignment:
    """The assignment of ``docs/detection.md`` for a whole padded batch, in tensor ops only.

    Group by label, level by size, the centre cell and its two nearer
    neighbours, one target per cell (the later one wins: the largest target
    index among the claims, by ``scatter_reduce(amax)``). No loop over images
    or targets and no host synchronization; the operations recorded do not
    depend on the batch size or the target count::

        a = assign(pad_targets(targets), layout, Heads.of(outputs, layout), image_size=256)
        a.positive.sum()    # the number of positive cells
    """
    boxes, labels = padded["boxes"].float(), padded["labels"]
    batch, count = labels.shape
    valid, group, cls = split_labels(labels, layout)
    level = level_of(torch.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]), image_size, strides)
    head = group * heads.levels + level
    stride = _pick(level, strides)
    w, h, base = head_table(heads, labels.device)[head].unbind(-1)  # head: a group and level, always in the table
    cx = (boxes[..., 0] + boxes[..., 2]) / 2 / stride
    cy = (boxes[..., 1] + boxes[..., 3]) / 2 / stride
    gx, gy = cx.floor(), cy.floor()
    nx = torch.where(cx - gx < 0.5, gx - 1, gx + 1)
    ny = torch.where(cy - gy < 0.5, gy - 1, gy + 1)
    x = torch.stack([gx, nx, gx], -1).long()
    y = torch.stack([gy, gy, ny], -1).long()
    inside = (x >= 0) & (x < w[..., None]) & (y >= 0) & (y < h[..., None]) & valid[..., None]
    cell = torch.where(inside, base[..., None] + y * w[..., None] + x, heads.cells)  # heads.cells: a spare slot
    index = _thrice(torch.arange(count, device=labels.device).view(1, count).expand(batch, count).contiguous())
    owner = torch.full((batch, heads.cells + 1), -1, dtype=torch.int64, device=labels.device)
    owner = owner.scatter_reduce(1, cell.reshape(batch, -1), index.reshape(batch, -1), "amax")
    positive = inside & (owner.gather(1, cell.reshape(batch, -1)).view(batch, count, 3) == index)
    return Assignment(x=x, y=y, stride=_thrice(stride), cell=cell, positive=positive, group=group, cls=cls)


@in_float32
def detection_loss(outputs: Outputs, targets: Sequence[Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                   layout: Layout, image_size: int, weights: LossWeights = LossWeights(),
                   strides: Sequence[int] = STRIDES) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of box (CIoU), objectness and class losses, and the three parts.

    ``targets`` is a list of per-image targets or their padded form
    (:func:`pad_targets`, what :func:`detection_collate` serves); a list is
    padded here. The loss is one batched computation over every head at once:
    each head's outputs are laid side by side on one cell axis, the
    :func:`assign`-ed cells are gathered from it and the objectness targets
    scattered into it. Objectness targets at positive cells are the detached
    IoU of the predicted box with its target, so scores rank boxes by quality.
    """
    padded = targets if isinstance(targets, Mapping) else pad_targets(targets)
    first = next(iter(outputs.values()))[0]
    device, batch = first.device, first.shape[0]
    padded = {k: v.to(device) for k, v in padded.items()}
    heads = Heads.of(outputs, layout)
    widest = max(c for _, c in layout.groups)
    for g, c in layout.groups:
        if outputs[g][0].shape[1] != 5 + c:
            raise ValueError(f"detection loss: the {g!r} head gives {outputs[g][0].shape[1]} channels a cell where "
                             f"the coupled head gives {5 + c} (box, objectness, {c} classes); use loss = "
                             "\"task_aligned\" for model.params.head = \"decoupled\"")
    flat = torch.cat([F.pad(raw.float().flatten(2), (0, 0, 0, widest - c))
                      for g, c in layout.groups for raw in outputs[g]], 2)  # [B, 5 + widest, cells]
    balance = _objectness_balance(heads, batch, len(layout.groups), torch.device(device))
    a = assign(padded, layout, heads, image_size, strides)
    _, count = padded["labels"].shape
    spots = a.cell.reshape(batch, -1).clamp(max=heads.cells - 1)
    pred = flat.gather(2, spots[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)  # [B, 3M, 5 + widest]
    pos = a.positive.reshape(batch, -1)
    boxes = _boxes(pred[..., :4].sigmoid(), a.x.reshape(batch, -1).float(), a.y.reshape(batch, -1).float(),
                   a.stride.reshape(batch, -1))
    unit = unit_box(device)
    tbox = torch.where(pos[..., None], _thrice(padded["boxes"].float()).reshape(batch, -1, 4), unit)
    boxes = torch.where(pos[..., None], boxes, unit)  # inert pairs off the positives: finite values and gradients
    n = pos.sum().clamp(min=1)
    box_l = torch.where(pos, ciou_loss(boxes, tbox), 0.0).sum() / n
    iou = torch.where(pos, pair_iou(boxes.detach(), tbox).clamp(min=0), 0.0)
    obj_t = torch.zeros((batch, heads.cells + 1), device=device)
    obj_t = obj_t.scatter_add(1, torch.where(pos, a.cell.reshape(batch, -1), heads.cells), iou)[:, :heads.cells]
    obj_l = (F.binary_cross_entropy_with_logits(flat[:, 4], obj_t, reduction="none") * balance).sum()
    classes = torch.arange(widest, device=device)
    cls = _thrice(a.cls).reshape(batch, -1, 1)
    group_size = _thrice(_pick(a.group, [c for _, c in layout.groups])).reshape(batch, -1, 1)
    cls_bce = F.binary_cross_entropy_with_logits(pred[..., 5:], (classes == cls).float(), reduction="none")
    cls_bce = torch.where(classes < group_size, cls_bce, 0.0).sum(-1) / group_size[..., 0]
    cls_l = torch.where(pos, cls_bce, 0.0).sum() / n
    total = (weights.box * box_l + weights.obj * obj_l + weights.cls * cls_l) * batch
    return total, {"box": box_l.detach(), "obj": obj_l.detach(), "cls": cls_l.detach()}


def decode(outputs: Outputs, layout: Layout, conf: float = 0.001, iou: float = 0.6, max_det: int = 100,
           pre_nms: int = 3000, strides: Sequence[int] = STRIDES) -> list[Detections]:
    """Per-image detections: scores (:func:`cell_predictions`) above ``conf``, class-wise NMS at ``iou``,
    the best ``max_det``.

    A cell may give several classes (multi-label) when their scores pass ``conf``.
    """
    boxes_all, scores_all, labels_all = [], [], []
    for group, classes in layout.groups:
        off = layout.offset(group)
        for raw, stride in zip(outputs[group], strides):
            boxes, score = cell_predictions(raw, stride, classes)
            b, h, w = raw.shape[0], raw.shape[2], raw.shape[3]
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
