"""The decoupled head and its task-aligned loss: against a per-image, per-target reference, and by shape.

The reference below walks the images and the targets one by one, as the
method reads in words; the batched loss must give its values and gradients
within 1e-5, and record the same operations whatever the batch and the
target count.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from smartcash_fn.errors import DataError
from smartcash_fn.smartcash.aligned import AlignedWeights, Cells, align, aligned_loss
from smartcash_fn.smartcash.components import detector, task_aligned
from smartcash_fn.smartcash.detection import (Heads, Layout, ciou_loss, decode, detection_loss, distance_boxes,
                                              pad_targets, pair_iou, side_bins)
from smartcash_fn.smartcash.detector import BINS, STRIDES, Detector
from smartcash_fn.smartcash.metrics import evaluate

from conftest import assert_fixed_operations, random_targets

GROUPS = {"banknote": 7, "nominal": 7, "security": 3}
LAYOUT = Layout.of(GROUPS)

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_outputs(g, batch, size, layout=LAYOUT, bins=BINS):
    return {name: [torch.randn(batch, 4 * bins + c, size // s, size // s, generator=g).requires_grad_(True)
                   for s in STRIDES] for name, c in layout.groups}


def reference_loss(outputs, targets, layout, w=AlignedWeights()):
    """The aligned loss image by image, group by group, target by target."""
    batch = next(iter(outputs.values()))[0].shape[0]
    bins = (outputs[layout.groups[0][0]][0].shape[1] - layout.groups[0][1]) // 4
    below = bins - BINS  # bins under zero: the first is -below strides
    cls_sum, box_sum, dfl_sum, total = 0.0, 0.0, 0.0, 0.0
    for b in range(batch):
        for gi, (group, classes) in enumerate(layout.groups):
            # this group's cells, in the head order: centres, strides, side logits, class logits
            xs, ys, ss, ls, dists, logits = [], [], [], [], [], []
            for level, (raw, s) in enumerate(zip(outputs[group], STRIDES)):
                _, _, h, wd = raw.shape
                for y in range(h):
                    for x in range(wd):
                        xs.append((x + 0.5) * s), ys.append((y + 0.5) * s), ss.append(float(s)), ls.append(level)
                r = raw[b].reshape(raw.shape[1], -1).T
                dists.append(r[:, :4 * bins].reshape(-1, 4, bins))
                logits.append(r[:, 4 * bins:])
            xs, ys, ss = torch.tensor(xs), torch.tensor(ys), torch.tensor(ss)
            dist, logit = torch.cat(dists), torch.cat(logits)
            mean = (dist.softmax(-1) * (torch.arange(bins, dtype=torch.float32) - below)).sum(-1) * ss[:, None]
            boxes = torch.stack([xs - mean[:, 0], ys - mean[:, 1], xs + mean[:, 2], ys + mean[:, 3]], 1)
            scores = logit.detach().sigmoid()
            mine = [(m, int(l) - layout.offset(group)) for m, l in enumerate(targets[b]["labels"].tolist())
                    if layout.group_of(int(l))[0] == group]
            n = len(xs)
            claims = {}  # cell -> [(target, iou, metric)]
            for m, c in mine:
                x1, y1, x2, y2 = targets[b]["boxes"][m].tolist()
                iou = pair_iou(torch.tensor([x1, y1, x2, y2]).expand(n, 4), boxes.detach()).clamp(min=0).nan_to_num(0)
                inside = torch.minimum(torch.minimum(xs - x1, ys - y1), torch.minimum(x2 - xs, y2 - ys)) > 1e-9
                inside |= ((xs - (x1 + x2) / 2).abs() <= ss / 2) & ((ys - (y1 + y2) / 2).abs() <= ss / 2)
                own = next((i for i, s in enumerate(STRIDES[:-1]) if max(x2 - x1, y2 - y1) <= 8 * s),
                           len(STRIDES) - 1)
                inside &= torch.tensor([abs(level - own) <= w.reach for level in ls])
                metric = torch.where(inside, scores[:, c] ** w.alpha * iou ** w.beta, 0.0)
                for cell in metric.topk(min(w.topk, n)).indices.tolist():
                    if inside[cell]:
                        claims.setdefault(cell, []).append((m, float(iou[cell]), float(metric[cell])))
            owner = {cell: max(cs, key=lambda t: (t[1], -t[0]))[0] for cell, cs in claims.items()}
            target = torch.zeros(n, classes)
            for m, c in mine:
                cells = [cell for cell, o in owner.items() if o == m]
                if not cells:
                    continue
                best_metric = max(t[2] for cell in cells for t in claims[cell] if t[0] == m)
                best_iou = max(t[1] for cell in cells for t in claims[cell] if t[0] == m)
                for cell in cells:
                    metric = next(t[2] for t in claims[cell] if t[0] == m)
                    target[cell, c] = metric * best_iou / (best_metric + 1e-9)
            cls_sum = cls_sum + F.binary_cross_entropy_with_logits(logit, target, reduction="sum")
            total += float(target.sum())
            for cell, m in owner.items():
                weight = target[cell].sum()
                true = targets[b]["boxes"][m]
                box_sum = box_sum + ciou_loss(boxes[cell], true) * weight
                sides = torch.stack([xs[cell] - true[0], ys[cell] - true[1], true[2] - xs[cell], true[3] - ys[cell]])
                sides = (sides / ss[cell] + below).clamp(0, bins - 1.01)
                logp = dist[cell].log_softmax(-1)
                near = 0.0
                for side in range(4):
                    lo = int(math.floor(float(sides[side])))
                    share = lo + 1 - sides[side]
                    near = near - (logp[side, lo] * share + logp[side, lo + 1] * (1 - share))
                dfl_sum = dfl_sum + near / 4 * weight
    total = max(total, 1.0)
    parts = {"box": box_sum / total, "cls": cls_sum / total, "dfl": dfl_sum / total}
    loss = (w.box * parts["box"] + w.cls * parts["cls"] + w.dfl * parts["dfl"]) * batch
    return loss, {k: torch.as_tensor(v).detach() for k, v in parts.items()}


@pytest.mark.parametrize("seed", range(4))
def test_batched_loss_equals_the_per_image_reference(seed):
    g = torch.Generator().manual_seed(seed)
    size = (64, 96, 96, 160)[seed]  # at 160 px sides up to 147 px: targets of all three levels
    out = _random_outputs(g, 3, size)
    targets = random_targets(g, 3, size, most=12, spread=(0.6, 0.6, 0.6, 0.9)[seed], least=3.0)
    leaves = [t for ts in out.values() for t in ts]
    weights = AlignedWeights(box=7.5, cls=0.5, dfl=1.5, topk=(10, 3)[seed % 2], reach=(2, 1, 0, 1)[seed])
    want, want_parts = reference_loss(out, targets, LAYOUT, weights)
    want_grads = torch.autograd.grad(want, leaves)
    for given in (targets, pad_targets(targets)):
        got, parts = aligned_loss(out, given, LAYOUT, weights)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got, want)
        for k in want_parts:
            assert torch.allclose(parts[k], want_parts[k], rtol=1e-5, atol=1e-5), (k, parts[k], want_parts[k])
        for a, b in zip(torch.autograd.grad(got, leaves), want_grads):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert want_parts["box"] > 0 and want_parts["dfl"] > 0


def test_a_head_reaching_below_zero_equals_the_reference_too():
    # 17 bins a side, from -1 stride: true distances below zero are bin positions like the others
    g = torch.Generator().manual_seed(11)
    out = _random_outputs(g, 2, 96, bins=BINS + 1)
    targets = random_targets(g, 2, 96, most=12, spread=0.6, least=2.0)
    leaves = [t for ts in out.values() for t in ts]
    want, want_parts = reference_loss(out, targets, LAYOUT)
    got, parts = aligned_loss(out, targets, LAYOUT)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got, want)
    for k in want_parts:
        assert torch.allclose(parts[k], want_parts[k], rtol=1e-5, atol=1e-5), (k, parts[k], want_parts[k])
    for a, b in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_groups_on_different_grids_meet_every_cell_and_still_equal_the_reference():
    # each target meets only its group's block of cells when the groups' grids are alike; a model whose groups
    # differ (here the security head on a coarser input) falls back to every cell, masked by group
    g = torch.Generator().manual_seed(7)
    sizes = {"banknote": 96, "nominal": 96, "security": 64}
    out = {name: [torch.randn(2, 4 * BINS + c, sizes[name] // s, sizes[name] // s, generator=g).requires_grad_(True)
                  for s in STRIDES] for name, c in LAYOUT.groups}
    alike = Cells.of(Heads.of(_random_outputs(g, 1, 96), LAYOUT), LAYOUT, STRIDES, torch.device("cpu"))
    differ = Cells.of(Heads.of(out, LAYOUT), LAYOUT, STRIDES, torch.device("cpu"))
    assert alike.block * 3 == alike.x.shape[0] and differ.block == differ.x.shape[0]
    targets = random_targets(g, 2, 64, most=12, spread=0.6, least=3.0)
    targets[0] = random_targets(g, 2, 64, most=12, spread=0.6, least=3.0)[1]  # its image 0 is always empty
    leaves = [t for ts in out.values() for t in ts]
    want, _ = reference_loss(out, targets, LAYOUT)
    got, _ = aligned_loss(out, targets, LAYOUT)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got, want)
    for a, b in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", ["decoupled", "coupled"])
def test_the_loss_of_a_bf16_forward_is_computed_in_float32(head):
    # under `precision = "bf16"` the model's outputs are bfloat16 and the loss runs inside the autocast region;
    # no op of the loss may be lowered with them (a lowered matmul decoding the side distributions moved the
    # aligned loss by 0.016): it must equal the loss of the same outputs in float32, outside autocast
    g = torch.Generator().manual_seed(5)
    bins = BINS if head == "decoupled" else None
    out = {name: [torch.randn(2, (4 * bins if bins else 5) + c, 96 // s, 96 // s, generator=g).bfloat16()
                  .requires_grad_(True) for s in STRIDES] for name, c in LAYOUT.groups}
    targets = random_targets(g, 2, 96, most=10, spread=0.6, least=3.0)
    loss = aligned_loss if bins else (lambda o, t, layout: detection_loss(o, t, layout, image_size=96))
    leaves = [t for ts in out.values() for t in ts]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = loss(out, targets, LAYOUT)
    want, _ = loss({k: [t.float() for t in ts] for k, ts in out.items()}, targets, LAYOUT)
    assert got.dtype == torch.float32 and got.item() == want.item(), (got, want)
    for a, b in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves)):
        assert torch.equal(a, b)


def test_a_batch_without_targets_costs_only_the_class_part():
    g = torch.Generator().manual_seed(1)
    out = _random_outputs(g, 2, 64)
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    got, parts = aligned_loss(out, empty, LAYOUT)
    want, _ = reference_loss(out, empty, LAYOUT)
    assert torch.allclose(got, want, rtol=1e-6) and parts["box"] == 0 and parts["dfl"] == 0 and parts["cls"] > 0


def test_a_box_too_small_to_hold_a_cell_centre_is_learned_by_the_cells_holding_its_centre():
    # 3 x 3 px between the stride-8 centres (4, 12): inside no cell, but held by one cell at every level
    size, box = 64, torch.tensor([[[5.0, 5.0, 8.0, 8.0]]])
    layout = Layout.of({"security": 3})
    out = {"security": [torch.randn(1, 4 * BINS + 3, size // s, size // s) for s in STRIDES]}
    cells = Cells.of(Heads.of(out, layout), layout, STRIDES, torch.device("cpu"))
    boxes = distance_boxes(torch.zeros(1, cells.x.shape[0], 4, BINS), cells.x, cells.y, cells.stride)
    one = torch.ones(1, 1, dtype=torch.bool)
    a = align(boxes, torch.full((1, cells.x.shape[0], 3), 0.5), cells, box, one, torch.zeros(1, 1, dtype=torch.long),
              torch.tensor([[2]]), AlignedWeights(topk=10))
    assert a.positive.sum() == 3  # the cell (0, 0) of each of the three levels
    assert set(cells.stride[a.positive[0]].tolist()) == {8.0, 16.0, 32.0}
    assert (cells.x[a.positive[0]] - cells.stride[a.positive[0]] / 2).abs().max() == 0
    assert float(a.score.max()) > 0


def test_the_loss_records_the_same_operations_whatever_the_batch_and_the_targets():
    assert_fixed_operations(lambda out, padded: aligned_loss(out, padded, LAYOUT), _random_outputs)


def _peaked(layout, size, batch=1, bins=BINS):
    """Decoupled raw outputs: every class logit at -20, every side distribution flat."""
    return {g: [torch.cat([torch.zeros(batch, 4 * bins, size // s, size // s),
                           torch.full((batch, c, size // s, size // s), -20.0)], 1) for s in STRIDES]
            for g, c in layout.groups}


def _fitted(raw, layout, group, target, classes_at=20.0):
    """``raw`` with every cell of ``group`` predicting the box ``target`` exactly where its distributions can (each
    side's mass on the two bins around the true distance), the target's class at ``classes_at``."""
    _, cls = layout.group_of(int(target["labels"][0]))
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    for t, s in zip(raw[group], STRIDES):
        bins = (t.shape[1] - dict(layout.groups)[group]) // 4
        h, w = t.shape[-2:]
        cy, cx = [(torch.arange(n, dtype=torch.float32) + 0.5) * s for n in (h, w)]
        sides = torch.stack(torch.broadcast_tensors((cx[None] - x1), (cy[:, None] - y1), (x2 - cx[None]),
                                                    (y2 - cy[:, None])))  # [4, h, w] pixels
        pos = (sides / s + (bins - BINS)).clamp(0, bins - 1 - 1e-6)
        low = pos.floor()
        p = torch.zeros(4, bins, h, w).scatter_(1, low.long()[:, None], (low + 1 - pos)[:, None])
        p.scatter_add_(1, (low.long() + 1).clamp(max=bins - 1)[:, None], (pos - low)[:, None])
        t[0, :4 * bins] = p.clamp(min=1e-12).log().reshape(4 * bins, h, w)
        t[0, 4 * bins + cls] = classes_at
    return raw


def test_a_head_reaching_below_zero_fits_a_feature_thinner_than_a_stride():
    # a 2 px high strip between the rows of cell centres (4 and 12 at stride 8, 8 at 16, 16 at 32): its cells at
    # every level lie outside it. With sides from 0 a box must hold its cell's centre and cannot fit the strip;
    # with sides from -1 stride it can, exactly
    layout = Layout.of({"security": 3})
    target = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 7.0]]), "labels": torch.tensor([1])}
    costs = {}
    for bins in (BINS, BINS + 1):
        raw = _fitted(_peaked(layout, 64, bins=bins), layout, "security", target)
        _, parts = aligned_loss(raw, [target], layout)
        costs[bins] = float(parts["box"])
        boxes = decode(raw, layout, conf=0.5, iou=0.99)[0].boxes
        assert len(boxes) > 0
        best = float(pair_iou(target["boxes"].expand(len(boxes), 4), boxes).max())
        assert (best > 0.999) == (bins > BINS), (bins, best)
    assert costs[BINS + 1] < 1e-4 < 0.1 < costs[BINS]


def test_the_bin_count_says_where_the_distances_start():
    assert (side_bins(4 * BINS + 7, 7), side_bins(4 * (BINS + 1) + 3, 3), side_bins(5 + 7, 7)) == (BINS, BINS + 1, None)
    centre = torch.tensor(40.0)
    for bins, first in ((BINS, 0.0), (BINS + 1, -1.0)):
        sure = torch.full((4, bins), -50.0)
        sure[:, 0] = 50.0  # every side on its first bin
        box = distance_boxes(sure, centre, centre, 8.0)
        assert torch.allclose(box, torch.tensor([40 - 8 * first, 40 - 8 * first, 40 + 8 * first, 40 + 8 * first]))
        last = torch.full((4, bins), -50.0)
        last[:, -1] = 50.0
        assert torch.allclose(distance_boxes(last, centre, centre, 8.0)[2], torch.tensor(40.0 + 8 * (BINS - 1)))


def test_a_cell_decodes_to_the_distances_its_distributions_peak_at():
    raw = _peaked(LAYOUT, 64)
    t = raw["nominal"][1]  # stride 16, cell (1, 2): centre (24, 40)
    for side, strides in enumerate((1, 2, 3, 0)):  # left 1, top 2, right 3, bottom 0 strides
        t[0, side * BINS + strides, 2, 1] = 30.0
    t[0, 4 * BINS + 5, 2, 1] = 2.0
    d = decode(raw, LAYOUT, conf=0.01)[0]
    assert len(d.boxes) == 1 and int(d.labels[0]) == LAYOUT.offset("nominal") + 5
    assert torch.allclose(d.boxes[0], torch.tensor([24.0 - 16, 40 - 32, 24 + 48, 40 + 0]), atol=1e-3)
    assert torch.allclose(d.scores[0], torch.sigmoid(torch.tensor(2.0)))


def test_a_cell_whose_opposite_sides_cross_decodes_to_a_flat_box_the_evaluator_takes():
    # with sides from -1 stride, top and bottom at -1 each sum to -2 strides: an inverted box, which the
    # evaluator refuses (a validation of the default recipe in bf16 died on one); it decodes flat, at the middle
    raw = _peaked(LAYOUT, 64, bins=BINS + 1)
    t = raw["security"][0]  # stride 8, cell (3, 5): centre (44, 28)
    for side, strides in enumerate((2, -1, 1, -1)):  # left 2, top -1, right 1, bottom -1 strides
        t[0, side * (BINS + 1) + strides + 1, 3, 5] = 30.0
    t[0, 4 * (BINS + 1) + 1, 3, 5] = 2.0
    d = decode(raw, LAYOUT, conf=0.01)[0]
    assert len(d.boxes) == 1 and torch.allclose(d.boxes[0], torch.tensor([44.0 - 16, 28, 44 + 8, 28]), atol=1e-3)
    truth = {"boxes": torch.tensor([[30.0, 20, 50, 36]]), "labels": torch.tensor([LAYOUT.offset("security") + 1])}
    report = evaluate([d], [truth], [str(i) for i in range(LAYOUT.num_classes)])
    assert report.metrics()["mAP50"] == 0.0


def test_a_prediction_on_its_target_costs_little_box_and_distribution_loss():
    raw = _peaked(LAYOUT, 64)
    t = raw["banknote"][0]  # stride 8, cell (4, 4): centre (36, 36); the box 2 strides each side
    for side in range(4):
        t[0, side * BINS + 2, 4, 4] = 30.0
    t[0, 4 * BINS + 3, 4, 4] = 20.0
    target = [{"boxes": torch.tensor([[20.0, 20, 52, 52]]), "labels": torch.tensor([3])}]
    _, parts = aligned_loss(raw, target, LAYOUT)
    assert parts["box"] < 1e-4 and parts["dfl"] < 1e-3


def test_the_loss_refuses_a_coupled_head_naming_the_setting():
    out = Detector("cspdarknet", GROUPS, width=16, backbone_width=8)(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match='model.params.head = "decoupled"'):
        aligned_loss(out, [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}], LAYOUT)


def test_the_decoupled_detector_gives_bins_and_classes_and_learns_a_tiny_batch():
    torch.manual_seed(0)
    model = detector(GROUPS, width=16, backbone_width=8, head="decoupled")
    images = torch.rand(2, 3, 64, 64)
    out = model(images)
    assert [o.shape[1] for o in out["security"]] == [4 * BINS + 3] * 3
    below = detector(GROUPS, width=16, backbone_width=8, head="decoupled", sides_from=-1)(images)
    assert [o.shape[1] for o in below["security"]] == [4 * (BINS + 1) + 3] * 3
    targets = [{"boxes": torch.tensor([[8.0, 8, 40, 30]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[20.0, 30, 30, 40], [0, 0, 60, 60]]), "labels": torch.tensor([15, 9])}]
    loss_fn = task_aligned(GROUPS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, _ = loss_fn(model, (images, targets))
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first / 4
    model.eval()
    with torch.no_grad():
        d = decode(model(images), LAYOUT, conf=0.01)[1]
    best = d.labels[d.scores.argmax()]
    assert int(best) in (15, 9)


@pytest.mark.parametrize("bad, match", [({"head": "split"}, "head must be one of"),
                                        ({"head_depth": -1}, "head_depth must be an integer"),
                                        ({"head": "decoupled", "sides_from": 1}, "sides_from must be an integer"),
                                        ({"head": "decoupled", "sides_from": -1.0}, "sides_from must be an integer"),
                                        ({"sides_from": -1}, "the decoupled head's; head is 'coupled'")])
def test_the_factory_refuses_a_bad_head(bad, match):
    with pytest.raises(DataError, match=match):
        detector(GROUPS, width=16, backbone_width=8, **bad)


@pytest.mark.parametrize("bad, match", [({"topk": 0}, "topk must be an integer >= 1"),
                                        ({"box": -1.0}, "box must be a number >= 0"),
                                        ({"reach": -1}, "reach must be an integer >= 0")])
def test_the_loss_factory_refuses_bad_weights(bad, match):
    with pytest.raises(DataError, match=match):
        task_aligned(GROUPS, **bad)
