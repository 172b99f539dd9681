"""Task-aligned assignment and the loss of the decoupled head: quality-scored classes, CIoU and side distributions.

The decoupled head (:class:`~smartcash_fn.smartcash.detector.DecoupledHead`)
predicts, per cell, a distribution over distances for each side of a box and
the layer's class scores. Which cells learn which target is decided by how
well they already do (Feng et al. 2021, task alignment): among the cells of
the target's layer whose centres lie inside the target, and at each level
the cell that holds the target's centre (so that a box too small to hold a
cell centre, a security feature a few pixels wide, is learned too), at the
levels within ``reach`` of the target's own (the first whose 8 strides cover
its longest side: up to 64 px stride 8, up to 128 px stride 16, larger
stride 32), the ``topk`` with the largest ``score^alpha · IoU^beta`` learn
it (a cell claimed by two targets keeps the one its box overlaps most). The
class target of a positive cell is that alignment, rescaled so the best cell
of each target gets its IoU: a score then ranks boxes by quality, as the
objectness of the coupled head does. The box loss (CIoU) and the distribution loss (the two
bins around each true distance, Li et al. 2020) weigh each positive by its
class target. A head whose distributions start below zero (``sides_from = -1``)
lets a positive cell beside a target thinner than a stride (its centre cell at
a level, outside it) place the target's sides exactly; the distribution loss
then reads each true distance, negative ones too, as a position among its bins::

    loss, parts = aligned_loss(model(images), pad_targets(targets), layout)
    parts   # {"box": ..., "cls": ..., "dfl": ...}

One batched computation: the candidate pairs are a ``[B, M, block]`` tensor
(M the batch's largest target count, ``block`` the cells of one layer), no
loop over images, targets or groups, no host synchronization, and the
operations recorded do not depend on the batch size or the target count.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import attrs
import torch
import torch.nn.functional as F

from .detection import (Heads, Layout, Outputs, cell_grid, ciou_loss, distance_boxes, in_float32, level_of,
                        pad_targets, pair_iou, shape_constant, side_bins, split_labels, unit_box)
from .detector import BINS, STRIDES


@attrs.frozen
class AlignedWeights:
    """Weights of the three parts and the assignment's knobs.

    ``topk`` cells per target, alignment ``score^alpha · IoU^beta``, candidates at the levels within
    ``reach`` of the target's own (0: that level alone; 2: every level of three):
    ``AlignedWeights(box=7.5, cls=3.0, dfl=1.5, topk=10, alpha=0.5, beta=6.0, reach=2)``. The values are
    those of the strong single-stage detectors but the class weight, 3.0 where they use 0.5: with 0.5 the
    seven look-alike notes of a layer were learned too slowly for a 10-minute run (docs/detector.md).
    """

    box: float = 7.5
    cls: float = 3.0
    dfl: float = 1.5
    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    reach: int = 2


@attrs.frozen
class Cells:
    """Every cell of every head on one axis: its centre (pixels), stride, level, group index and the group's
    class count; ``block``, the cells of one group when every group's heads have the same grids (each group's
    block then repeats the first one's centres, strides and levels), else all of them."""

    x: torch.Tensor
    y: torch.Tensor
    stride: torch.Tensor
    level: torch.Tensor
    group: torch.Tensor
    classes: torch.Tensor
    block: int

    @classmethod
    def of(cls, heads: Heads, layout: Layout, strides: Sequence[int], device: torch.device) -> "Cells":
        """The cells of ``heads``; they depend on the grids alone, so each is made once per grids, layout,
        strides and device and then reused (a training step builds none: on a GPU that is over a hundred
        kernel launches fewer). The tensors are shared: never change them in place."""
        return _cells(cls, heads, layout, tuple(strides), torch.device(device))


@shape_constant
def _cells(cls: type[Cells], heads: Heads, layout: Layout, strides: tuple[int, ...], device: torch.device) -> Cells:
    parts: list[list[torch.Tensor]] = [[], [], [], [], [], []]
    for i, (h, w) in enumerate(heads.shapes):
        g, level = divmod(i, heads.levels)
        s = float(strides[level])
        gx, gy = cell_grid(h, w, device)
        n = h * w
        for part, value in zip(parts, ((gx.reshape(-1) + 0.5) * s, (gy.reshape(-1) + 0.5) * s,
                                       torch.full((n,), s, device=device),
                                       torch.full((n,), level, dtype=torch.int64, device=device),
                                       torch.full((n,), g, dtype=torch.int64, device=device),
                                       torch.full((n,), layout.groups[g][1], dtype=torch.int64, device=device))):
            part.append(value)
    first = heads.shapes[:heads.levels]
    alike = all(heads.shapes[i:i + heads.levels] == first for i in range(0, len(heads.shapes), heads.levels))
    block = sum(h * w for h, w in first) if alike else heads.cells
    return cls(*(torch.cat(p) for p in parts), block=block)


def _cell_major(outputs: Outputs, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Every head's cells on one axis: side logits ``[B, cells, 4, bins]`` and class logits ``[B, cells, widest]``
    (each group's padded to the widest). Cell-major (``[B, H·W, C]``) is free for channels-last outputs."""
    widest = max(c for _, c in layout.groups)
    rows, found = [], set()
    for g, c in layout.groups:
        for raw in outputs[g]:
            bins = side_bins(raw.shape[1], c)
            if bins is None:
                raise ValueError(f"aligned loss: the {g!r} head gives {raw.shape[1]} channels a cell where the "
                                 f"decoupled head gives 4 x {BINS} (or more) distance bins and {c} classes; set "
                                 "model.params.head = \"decoupled\", or use loss = \"detection\" for the coupled head")
            found.add(bins)
            rows.append((raw.permute(0, 2, 3, 1).flatten(1, 2), c))
    if len(found) > 1:
        raise ValueError(f"aligned loss: the heads give different numbers of distance bins ({sorted(found)})")
    bins = found.pop()
    dist = torch.cat([r[..., :4 * bins] for r, _ in rows], 1).float()
    logits = torch.cat([F.pad(r[..., 4 * bins:], (0, widest - c)) for r, c in rows], 1).float()
    return dist.unflatten(-1, (4, bins)), logits


@attrs.frozen
class Aligned:
    """The assignment of a padded batch, per cell ``[B, cells]``: ``positive``, the ``target`` index it learns
    (into the padded targets), its class ``score`` target (the rescaled alignment; 0 off the positives)."""

    positive: torch.Tensor
    target: torch.Tensor
    score: torch.Tensor


def own_level(boxes: torch.Tensor, strides: Sequence[int] = STRIDES) -> torch.Tensor:
    """The level of each xyxy box ``[..., 4]``: the first whose 8 strides cover its longest side::

        own_level(torch.tensor([[0.0, 0.0, 40.0, 20.0], [0.0, 0.0, 100.0, 300.0]]))   # tensor([0, 2])
    """
    longest = torch.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
    return level_of(longest, math.inf, strides)


def align(boxes: torch.Tensor, scores: torch.Tensor, cells: Cells, gt_boxes: torch.Tensor, valid: torch.Tensor,
          group: torch.Tensor, cls: torch.Tensor, weights: AlignedWeights = AlignedWeights(),
          strides: Sequence[int] = STRIDES, eps: float = 1e-9) -> Aligned:
    """Task-aligned assignment: ``boxes [B, A, 4]`` and ``scores [B, A, widest]`` predicted (no gradient needed)
    against padded targets ``gt_boxes [B, M, 4]`` with their ``valid``, ``group`` and ``cls`` ``[B, M]``.

    Each target meets only its own group's block of cells (``[B, M, block]``, a third of every cell for
    SmartCash's three layers); its top-k cells, their owners and class targets are then ``[B, M, k]`` and
    ``[B, A]``: nothing of size targets x cells is built after the top-k.
    """
    batch, count = gt_boxes.shape[:2]
    cell_count, block = boxes.shape[1], cells.block
    blocks = cell_count // block
    # the target's block: its group's when the groups' grids are alike, else every cell (masked by group below)
    which = group.clamp(min=0) if blocks > 1 else torch.zeros_like(group)  # [B, M]
    cx, cy, stride, level = (t[:block] for t in (cells.x, cells.y, cells.stride, cells.level))
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))  # [B, M, 1]
    inside = torch.minimum(torch.minimum(cx - x1, cy - y1), torch.minimum(x2 - cx, y2 - cy)) > eps  # [B, M, block]
    # the cell holding the target's centre at each level: a box too small to hold a cell centre still has cells
    centre = torch.maximum((cx - (x1 + x2) / 2).abs(), (cy - (y1 + y2) / 2).abs()) <= stride / 2
    near = (level - own_level(gt_boxes, strides)[..., None]).abs() <= weights.reach
    candidate = (inside | centre) & near & valid[..., None]
    if blocks == 1:
        candidate &= cells.group == group[..., None]
    # each target's view of its block: predicted sides and its class's score
    seen = boxes.view(batch, blocks, block, 4).gather(1, which[..., None, None].expand(-1, -1, block, 4))
    widest = scores.shape[-1]
    by_class = scores.view(batch, blocks, block, widest).transpose(2, 3).reshape(batch, blocks * widest, block)
    score = by_class.gather(1, (which * widest + cls.clamp(min=0))[..., None].expand(-1, -1, block))
    iou = pair_iou(gt_boxes[:, :, None, :], seen).clamp(min=0).nan_to_num(0.0)
    metric = torch.where(candidate, score.pow(weights.alpha) * iou.pow(weights.beta), 0.0)
    top = metric.topk(min(weights.topk, block), dim=-1).indices  # [B, M, k]
    picked = candidate.gather(-1, top)
    iou, metric = iou.gather(-1, top), metric.gather(-1, top)
    cell = (top + (which * block)[..., None]).flatten(1)  # each pick's index among every cell, [B, M·k]
    # a cell chosen by several targets keeps the one it overlaps most (the first of them on a tie)
    claim = torch.where(picked, iou, -1.0)
    best = torch.full((batch, cell_count), -1.0, device=boxes.device).scatter_reduce(
        1, cell, claim.flatten(1), "amax").gather(1, cell).view_as(claim)
    who = torch.arange(count, device=boxes.device)[None, :, None].expand_as(top)
    owner = torch.full((batch, cell_count), count, device=boxes.device).scatter_reduce(
        1, cell, torch.where(picked & (claim == best), who, count).flatten(1), "amin")
    mine = picked & (owner.gather(1, cell).view_as(claim) == who)
    metric, iou = metric * mine, iou * mine
    rescaled = metric * iou.amax(-1, keepdim=True) / (metric.amax(-1, keepdim=True) + eps)
    positive = owner < count
    score = torch.zeros(batch, cell_count, device=boxes.device).scatter_reduce(1, cell, rescaled.flatten(1), "amax")
    return Aligned(positive, torch.where(positive, owner, 0), score)


@in_float32
def aligned_loss(outputs: Outputs, targets: Sequence[Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                 layout: Layout, weights: AlignedWeights = AlignedWeights(), strides: Sequence[int] = STRIDES
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the CIoU box, class (BCE on quality targets) and distribution losses, and the parts.

    Each part is summed over the cells, weighted by the class targets, and
    divided by their sum; the total is multiplied by the batch size, as the
    coupled head's :func:`~smartcash_fn.smartcash.detection.detection_loss`.
    """
    padded = targets if isinstance(targets, Mapping) else pad_targets(targets)
    dist, logits = _cell_major(outputs, layout)
    device, batch, cell_count, widest, bins = dist.device, dist.shape[0], dist.shape[1], logits.shape[-1], dist.shape[-1]
    gt_boxes, labels = padded["boxes"].to(device).float(), padded["labels"].to(device)
    if labels.shape[1] == 0:  # no targets in the batch: one padding target keeps every shape non-empty
        gt_boxes = unit_box(device).repeat(batch, 1, 1)
        labels = torch.full((batch, 1), -1, dtype=torch.int64, device=device)
    cells = Cells.of(Heads.of(outputs, layout), layout, strides, device)
    valid, group, cls = split_labels(labels, layout)
    with torch.no_grad():
        boxes = distance_boxes(dist, cells.x, cells.y, cells.stride)
        a = align(boxes, logits.sigmoid(), cells, gt_boxes, valid, group, cls, weights, strides)
        label = cls.gather(1, a.target).clamp(min=0)
        score = (torch.arange(widest, device=device) == label[..., None]) * a.score[..., None]  # [B, A, widest]
        total = score.sum().clamp(min=1.0)
        # the positives are among each target's top-k cells: that many slots hold them all, whatever the data
        slots = a.positive.float().topk(min(labels.shape[1] * weights.topk, cell_count), dim=1).indices  # [B, P]
        weight = score.sum(-1).gather(1, slots)  # 0 at a slot without a positive
        true_boxes = gt_boxes.gather(1, a.target.gather(1, slots)[..., None].expand(-1, -1, 4))
        at = {k: getattr(cells, k)[slots] for k in ("x", "y", "stride")}
    real = torch.arange(widest, device=device) < cells.classes[:, None]  # [A, widest]: the group's own classes
    cls_l = torch.where(real, F.binary_cross_entropy_with_logits(logits, score, reduction="none"), 0.0).sum() / total
    sides_logits = dist.gather(1, slots[..., None, None].expand(-1, -1, 4, bins))  # [B, P, 4, bins]
    pred = distance_boxes(sides_logits, at["x"], at["y"], at["stride"])
    pos = (weight > 0)[..., None]
    unit = unit_box(device)
    box_l = (ciou_loss(torch.where(pos, pred, unit), torch.where(pos, true_boxes, unit)) * weight).sum() / total
    sides = torch.stack([at["x"] - true_boxes[..., 0], at["y"] - true_boxes[..., 1],
                         true_boxes[..., 2] - at["x"], true_boxes[..., 3] - at["y"]], -1) / at["stride"][..., None]
    if bins != BINS:  # as a bin position: the first bin is 16 - bins strides
        sides = sides + (bins - BINS)
    sides = sides.clamp(0, bins - 1.01)
    left = sides.floor().long()
    share = left + 1 - sides  # of the bin below; 1 - share of the bin above
    logp = sides_logits.log_softmax(-1)
    below, above = logp.gather(-1, left[..., None])[..., 0], logp.gather(-1, left[..., None] + 1)[..., 0]
    near = -(below * share + above * (1 - share))
    dfl_l = (near.mean(-1) * weight).sum() / total
    loss = (weights.box * box_l + weights.cls * cls_l + weights.dfl * dfl_l) * batch
    return loss, {"box": box_l.detach(), "cls": cls_l.detach(), "dfl": dfl_l.detach()}
