"""The detector (backbones, neck, head groups), its loss and target assignment, and decoding.

Small inputs (64-128 px) and the CSPDarknet baseline at small widths keep
these fast; EfficientNet-B0 runs one forward at 64 px, B1-B4 are only built.
Hand-built raw head outputs pin the box parametrization: a logit chosen to
decode to a known box must come back as that box, and a prediction that
matches its targets exactly must cost (almost) nothing::

    raw = _raw(layout, 64)                       # every cell "nothing here"
    _put(raw, "a", level=0, gx=3, gy=2, box=(24, 16, 32, 24), cls=1)
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torchvision

import torch.nn.functional as F

from smartcash_fn.smartcash.detection import (LEVEL_BALANCE, Detections, Heads, Layout, LossWeights, assign, box_decode,
                                              ciou_loss, decode, detection_collate, detection_loss, level_of,
                                              pad_targets, pair_iou)
from smartcash_fn.smartcash.components import detector
from smartcash_fn.smartcash.detector import BACKBONES, STRIDES, Detector, backbone
from smartcash_fn.errors import StateError, UserError

from conftest import assert_fixed_operations, random_targets

GROUPS = {"banknote": 7, "nominal": 7, "security": 3}
LAYOUT = Layout.of(GROUPS)
OFF = -20.0  # a logit whose sigmoid is ~2e-9: "no object", "not this class"
ON = 20.0


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_detector(**kw) -> Detector:
    """The CSPDarknet baseline at its smallest: fast enough to train a few steps in a test."""
    torch.manual_seed(kw.pop("seed", 0))
    return Detector("cspdarknet", GROUPS, width=kw.pop("width", 16), backbone_width=kw.pop("backbone_width", 8), **kw)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _raw(layout: Layout, size: int, batch: int = 1) -> dict[str, list[torch.Tensor]]:
    """Raw outputs of every group and level with every objectness and class logit at OFF."""
    out = {}
    for g, c in layout.groups:
        out[g] = [torch.full((batch, 5 + c, size // s, size // s), OFF) for s in STRIDES]
        for t in out[g]:
            t[:, :4] = 0.0
    return out


def _box_logits(box, gx: int, gy: int, stride: int) -> list[float]:
    """The four box logits with which cell (gx, gy) at ``stride`` decodes to ``box`` (xyxy pixels)."""
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    tx = (cx / stride - gx + 0.5) / 2
    ty = (cy / stride - gy + 0.5) / 2
    tw, th = math.sqrt(w / stride) / 4, math.sqrt(h / stride) / 4
    for t in (tx, ty, tw, th):
        assert 0 < t < 1, f"cell ({gx}, {gy}) cannot reach {box}"
    return [_logit(t) for t in (tx, ty, tw, th)]


def _put(raw, group: str, level: int, gx: int, gy: int, box, cls, obj: float = ON, image: int = 0) -> None:
    """Make cell (gx, gy) of ``group`` at ``level`` predict ``box`` with class(es) ``cls`` (in-group ids)."""
    t = raw[group][level]
    t[image, :4, gy, gx] = torch.tensor(_box_logits(box, gx, gy, STRIDES[level]))
    t[image, 4, gy, gx] = obj
    for c in [cls] if isinstance(cls, int) else cls:
        t[image, 5 + c, gy, gx] = ON


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("size", [64, 96, 128])
def test_cspdarknet_outputs_one_group_per_layer_at_three_strides(size):
    model = tiny_detector().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert list(out) == list(GROUPS)
    assert model.strides == STRIDES == (8, 16, 32)
    for g, classes in GROUPS.items():
        assert [tuple(t.shape) for t in out[g]] == [(2, 5 + classes, size // s, size // s) for s in STRIDES]
        assert all(torch.isfinite(t).all() for t in out[g])


def test_efficientnet_b0_forward_at_64_px():
    torch.manual_seed(0)
    model = Detector("efficientnet_b0", {"banknote": 7, "security": 3}, width=16).eval()
    assert model.backbone.channels == (40, 112, 320)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert {g: [tuple(t.shape) for t in ts] for g, ts in out.items()} == {
        "banknote": [(1, 12, 8, 8), (1, 12, 4, 4), (1, 12, 2, 2)],
        "security": [(1, 8, 8, 8), (1, 8, 4, 4), (1, 8, 2, 2)],
    }


def test_efficientnet_b1_to_b4_build_with_their_stage_widths():
    # the widths of torchvision's stages 3, 5 and 7 (strides 8, 16, 32) for each variant
    expected = {1: (40, 112, 320), 2: (48, 120, 352), 3: (48, 136, 384), 4: (56, 160, 448)}
    for i, channels in expected.items():
        net = backbone(f"efficientnet_b{i}")
        assert net.channels == channels
    assert BACKBONES == tuple(f"efficientnet_b{i}" for i in range(5)) + ("cspdarknet",)


def test_head_starts_with_a_low_objectness_and_class_prior():
    model = tiny_detector()
    pred = model.head["security"].preds[0]
    assert torch.all(pred.bias[:4] == 0)
    assert torch.allclose(pred.bias[4:].sigmoid(), torch.full((4,), 0.01))


def test_pretrained_backbone_comes_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    sd = torchvision.models.efficientnet_b0().state_dict()
    path = tmp_path / "b0.pt"
    torch.save(sd, path)
    torch.manual_seed(2)  # a different init: only the file can make the tensors equal
    model = Detector("efficientnet_b0", GROUPS, width=16, weights_path=str(path))
    mine = model.state_dict()
    assert torch.equal(mine["backbone.to8.0.0.weight"], sd["features.0.0.weight"])
    assert torch.equal(mine["backbone.to32.7.0.block.3.0.weight"], sd["features.7.0.block.3.0.weight"])
    torch.manual_seed(2)
    fresh = Detector("efficientnet_b0", GROUPS, width=16).state_dict()
    assert not torch.equal(fresh["backbone.to8.0.0.weight"], sd["features.0.0.weight"])


def test_a_checkpoint_dict_with_a_state_dict_key_is_accepted(tmp_path):
    sd = torchvision.models.efficientnet_b0().state_dict()
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    net = backbone("efficientnet_b0", str(tmp_path / "ckpt.pt"))
    assert torch.equal(net.state_dict()["to16.4.0.block.0.0.weight"], sd["features.4.0.block.0.0.weight"])


def test_missing_weights_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "b0.pt"
    with pytest.raises(StateError, match="no such weights file") as err:
        Detector("efficientnet_b0", GROUPS, weights_path=str(path))
    assert str(path) in str(err.value)


def test_weights_of_another_model_are_refused_naming_the_file(tmp_path):
    torch.save(torchvision.models.efficientnet_b2().state_dict(), tmp_path / "b2.pt")  # other widths
    torch.save(torchvision.models.efficientnet_b1().state_dict(), tmp_path / "b1.pt")  # same widths, more blocks
    torch.save({"weight": torch.zeros(3)}, tmp_path / "junk.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    for name, why in [("b2.pt", "not efficientnet_b0 weights"), ("b1.pt", "not part of efficientnet_b0"),
                      ("junk.pt", "missing"), ("garbage.pt", "cannot read")]:
        with pytest.raises(StateError, match=why) as err:
            backbone("efficientnet_b0", str(tmp_path / name))
        assert str(tmp_path / name) in str(err.value)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(StateError, match="unknown backbone 'resnet50'") as err:
        Detector("resnet50", GROUPS)
    assert all(b in str(err.value) for b in BACKBONES)
    assert isinstance(err.value, UserError)
    with pytest.raises(StateError, match="cspdarknet: pretrained weights are not supported"):
        backbone("cspdarknet", "weights.pt")


# --------------------------------------------------------------------------- layout and assignment


def test_layout_maps_global_ids_to_groups():
    assert LAYOUT.num_classes == 17
    assert [LAYOUT.offset(g) for g in GROUPS] == [0, 7, 14]
    assert LAYOUT.group_of(0) == ("banknote", 0)
    assert LAYOUT.group_of(9) == ("nominal", 2)
    assert LAYOUT.group_of(16) == ("security", 2)
    with pytest.raises(KeyError):
        LAYOUT.group_of(17)


def test_level_of_splits_at_a_quarter_and_a_half_of_the_image():
    sizes = torch.tensor([2.0, 64.0, 64.01, 128.0, 128.01, 300.0])
    assert level_of(sizes, 256).tolist() == [0, 0, 1, 1, 2, 2]
    assert level_of(torch.tensor([16.0, 17.0, 33.0]), 64).tolist() == [0, 1, 2]


def test_level_of_never_assigns_a_box_its_level_cannot_reach():
    # a cell predicts sides up to 16 strides; at 640 px a quarter of the image (160 px) would be out of
    # reach of stride 8 (128 px), so the limits stay at 8 strides: 64 px and 128 px
    assert level_of(torch.tensor([64.0, 65.0, 128.0, 129.0, 500.0]), 640).tolist() == [0, 1, 1, 2, 2]
    for image_size in (64, 256, 320, 512, 640, 1024):
        sizes = torch.arange(1.0, min(image_size, 16 * STRIDES[-1]) + 1)
        levels = level_of(sizes, image_size)
        reach = torch.tensor([16.0 * s for s in STRIDES])[levels]
        assert torch.all(sizes <= reach), image_size
        assert torch.all(sizes[levels < 2] <= reach[levels < 2] / 2), image_size  # σ <= 0.71: not saturated


# --------------------------------------------------------------------------- the per-image reference
# The loss as it was before it became one batched computation: a loop over groups, levels and images,
# positives found by boolean masks and a sort. Kept here, not in the package, as the reference the
# batched loss must equal.


def _ref_group_targets(targets, layout, group):
    """Rows ``(image, class-in-group, x1, y1, x2, y2)`` of one group's targets over the batch."""
    lo = layout.offset(group)
    hi = lo + dict(layout.groups)[group]
    rows = []
    for i, t in enumerate(targets):
        labels = t["labels"]
        keep = (labels >= lo) & (labels < hi)
        if keep.any():
            boxes = t["boxes"].float()[keep]
            img = torch.full((int(keep.sum()), 1), float(i))
            rows.append(torch.cat([img, (labels[keep] - lo).float()[:, None], boxes], 1))
    return torch.cat(rows) if rows else torch.zeros((0, 6))


def _positives(rows, stride, h, w):
    """(row index, grid y, grid x) of every positive: centre cell and the two nearer neighbours, the later wins."""
    cx = (rows[:, 2] + rows[:, 4]) / 2 / stride
    cy = (rows[:, 3] + rows[:, 5]) / 2 / stride
    gx, gy = cx.floor(), cy.floor()
    nx = torch.where(cx - gx < 0.5, gx - 1, gx + 1)
    ny = torch.where(cy - gy < 0.5, gy - 1, gy + 1)
    idx = torch.arange(len(rows))
    all_idx = torch.cat([idx, idx, idx])
    all_x = torch.cat([gx, nx, gx]).long()
    all_y = torch.cat([gy, gy, ny]).long()
    ok = (all_x >= 0) & (all_x < w) & (all_y >= 0) & (all_y < h)
    all_idx, all_y, all_x = all_idx[ok], all_y[ok], all_x[ok]
    img = rows[all_idx, 0].long()
    key = (img * h + all_y) * w + all_x
    order = torch.argsort(key * (len(rows) + 1) + all_idx, stable=True)
    key_sorted = key[order]
    last = torch.ones_like(key_sorted, dtype=torch.bool)
    if len(key_sorted) > 1:
        last[:-1] = key_sorted[1:] != key_sorted[:-1]
    sel = order[last]
    return all_idx[sel], all_y[sel], all_x[sel]


def _ref_boxes(t, gx, gy, stride):
    cx = (gx + t[..., 0] * 2 - 0.5) * stride
    cy = (gy + t[..., 1] * 2 - 0.5) * stride
    bw = (t[..., 2] * 4) ** 2 * stride
    bh = (t[..., 3] * 4) ** 2 * stride
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)


def reference_loss(outputs, targets, layout, image_size, weights=LossWeights()):
    """The per-image loss (docs/detection.md), one group, level and image at a time."""
    batch = next(iter(outputs.values()))[0].shape[0]
    box_l, obj_l, cls_l, n_box = torch.zeros(()), torch.zeros(()), torch.zeros(()), 0
    for group, classes in layout.groups:
        rows = _ref_group_targets(targets, layout, group)
        levels = level_of(torch.maximum(rows[:, 4] - rows[:, 2], rows[:, 5] - rows[:, 3]), image_size)
        for li, (raw, stride) in enumerate(zip(outputs[group], STRIDES)):
            raw = raw.float()
            h, w = raw.shape[-2:]
            obj_t = torch.zeros((batch, h, w))
            mine = rows[levels == li]
            if len(mine):
                ridx, gy, gx = _positives(mine, stride, h, w)
                img = mine[ridx, 0].long()
                pred = raw[img, :, gy, gx]
                boxes = _ref_boxes(pred[:, :4].sigmoid(), gx.float(), gy.float(), stride)
                tbox = mine[ridx, 2:6]
                box_l = box_l + torchvision.ops.complete_box_iou_loss(boxes, tbox, reduction="sum")
                n_box += len(ridx)
                obj_t[img, gy, gx] = torchvision.ops.box_iou(boxes.detach(), tbox).diagonal().clamp(0)
                cls_t = F.one_hot(mine[ridx, 1].long(), classes).float()
                cls_l = cls_l + F.binary_cross_entropy_with_logits(pred[:, 5:], cls_t, reduction="sum") / classes
            obj_l = obj_l + LEVEL_BALANCE[li] * F.binary_cross_entropy_with_logits(raw[:, 4], obj_t)
    n = max(n_box, 1)
    box_l, cls_l, obj_l = box_l / n, cls_l / n, obj_l / len(layout.groups)
    total = (weights.box * box_l + weights.obj * obj_l + weights.cls * cls_l) * batch
    return total, {"box": box_l.detach(), "obj": obj_l.detach(), "cls": cls_l.detach()}


def _rows(*boxes, image=0):
    return torch.tensor([[image, 0, *b] for b in boxes], dtype=torch.float32)


def _cells(ridx, gy, gx):
    return sorted(zip(ridx.tolist(), gy.tolist(), gx.tolist()))


def test_positives_are_the_centre_cell_and_the_two_nearest_neighbours():
    # centre (19, 11) px at stride 8 is cell (x=2, y=1), in its left and upper half
    assert _cells(*_positives(_rows((15, 7, 23, 15)), 8, 8, 8)) == [(0, 0, 2), (0, 1, 1), (0, 1, 2)]
    # centre (45, 29): cell (5, 3), right and lower half
    assert _cells(*_positives(_rows((41, 25, 49, 33)), 8, 8, 8)) == [(0, 3, 5), (0, 3, 6), (0, 4, 5)]


def test_positives_stay_inside_the_grid():
    # centre (2, 2): cell (0, 0); both nearest neighbours lie outside
    assert _cells(*_positives(_rows((0, 0, 4, 4)), 8, 8, 8)) == [(0, 0, 0)]
    # centre (62, 7): cell (7, 0); the right neighbour is outside, the lower one inside
    assert _cells(*_positives(_rows((60, 2, 64, 12)), 8, 8, 8)) == [(0, 0, 7), (0, 1, 7)]


def test_one_target_per_cell_the_later_wins():
    a, b = (15, 7, 23, 15), (16, 8, 22, 14)  # same centre cell (2, 1) and neighbours
    ridx, gy, gx = _positives(_rows(a, b), 8, 8, 8)
    assert _cells(ridx, gy, gx) == [(1, 0, 2), (1, 1, 1), (1, 1, 2)]
    # in another image the same cells are other cells
    rows = torch.cat([_rows(a), _rows(a, image=1)])
    assert sorted(_cells(*_positives(rows, 8, 8, 8))) == [(0, 0, 2), (0, 1, 1), (0, 1, 2),
                                                          (1, 0, 2), (1, 1, 1), (1, 1, 2)]
    # overlapping but different cells: the shared one goes to the later target only
    c = (23, 7, 31, 15)  # centre (27, 11): cell (3, 1), left-upper half -> neighbours (2, 1), (3, 0)
    got = _cells(*_positives(_rows(a, c), 8, 8, 8))
    assert got == [(0, 0, 2), (0, 1, 1), (1, 0, 3), (1, 1, 2), (1, 1, 3)]


# --------------------------------------------------------------------------- the loss


def _targets():
    """Two 64-px images: a small banknote and a mid-sized nominal box; a small security box."""
    return [
        {"boxes": torch.tensor([[8.0, 8.0, 22.0, 20.0], [28.0, 26.0, 58.0, 54.0]]), "labels": torch.tensor([2, 8])},
        {"boxes": torch.tensor([[36.0, 10.0, 46.0, 18.0]]), "labels": torch.tensor([15])},
    ]


def test_loss_decreases_when_overfitting_a_tiny_batch():
    model = tiny_detector()
    g = torch.Generator().manual_seed(0)
    images, targets = torch.rand(2, 3, 64, 64, generator=g), _targets()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        loss, parts = detection_loss(model(images), targets, LAYOUT, image_size=64)
        assert torch.isfinite(loss) and all(torch.isfinite(p) for p in parts.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append((loss.item(), {k: v.item() for k, v in parts.items()}))
    first, last = history[0], history[-1]
    assert last[0] < 0.5 * first[0], [h[0] for h in history]
    # the objectness target is the IoU, which rises as boxes improve: only box and class must fall
    assert last[1]["box"] < 0.75 * first[1]["box"], (first[1], last[1])
    assert last[1]["cls"] < 0.1 * first[1]["cls"], (first[1], last[1])


def test_loss_parts_are_weighted_and_summed_per_image():
    model = tiny_detector()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    targets = _targets()
    total, parts = detection_loss(out, targets, LAYOUT, image_size=64)
    assert all(p.ndim == 0 and p > 0 for p in parts.values())
    w = LossWeights()
    assert (w.box, w.obj, w.cls) == (0.05, 1.0, 0.5)
    assert torch.allclose(total, 2 * (0.05 * parts["box"] + 1.0 * parts["obj"] + 0.5 * parts["cls"]))
    for weights, key in [(LossWeights(1, 0, 0), "box"), (LossWeights(0, 1, 0), "obj"), (LossWeights(0, 0, 1), "cls")]:
        only, same = detection_loss(out, targets, LAYOUT, image_size=64, weights=weights)
        assert torch.allclose(only, 2 * parts[key])
        assert all(torch.equal(same[k], parts[k]) for k in parts)  # weights change the sum, not the parts
    double, _ = detection_loss(out, targets, LAYOUT, 64, LossWeights(0.1, 2.0, 1.0))
    assert torch.allclose(double, 2 * total)


def test_empty_targets_give_only_the_objectness_loss():
    raw = _raw(LAYOUT, 64, batch=2)
    leaves = {g: [t.clone().index_fill_(1, torch.tensor([4]), -2.0).requires_grad_(True) for t in ts]
              for g, ts in raw.items()}
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    total, parts = detection_loss(leaves, empty, LAYOUT, image_size=64)
    assert parts["box"] == 0 and parts["cls"] == 0
    expected = sum(LEVEL_BALANCE) * torch.nn.functional.softplus(torch.tensor(-2.0))  # -log(1 - σ(-2)) per cell
    assert torch.allclose(parts["obj"], expected)
    total.backward()
    for ts in leaves.values():
        for t in ts:
            assert torch.all(t.grad[:, :4] == 0) and torch.all(t.grad[:, 5:] == 0)
            assert torch.all(t.grad[:, 4] > 0)  # pushed further towards "no object"
    # and from a real model output
    _, parts = detection_loss(tiny_detector()(torch.rand(2, 3, 64, 64)), empty, LAYOUT, image_size=64)
    assert parts["box"] == 0 and parts["cls"] == 0 and parts["obj"] > 0


def test_a_prediction_that_matches_its_targets_costs_nothing():
    # Every positive cell (centre + 2 neighbours) predicts its target exactly with objectness 1 and the
    # right class; every other cell says "nothing". Only the assignment the docs describe gets here.
    targets = [{"boxes": torch.tensor([[15.0, 7.0, 23.0, 15.0], [20.0, 24.0, 44.0, 52.0]]),
                "labels": torch.tensor([3, 15])}]
    raw = _raw(LAYOUT, 64)
    for gx, gy in [(2, 1), (1, 1), (2, 0)]:  # centre (19, 11) at stride 8, level 0 (longest side 8 <= 16)
        _put(raw, "banknote", 0, gx, gy, (15.0, 7.0, 23.0, 15.0), cls=3)
    for gx, gy in [(2, 2), (1, 2), (2, 1)]:  # centre (32, 38) at stride 16, level 1 (28 px: 16 < 28 <= 32)
        _put(raw, "security", 1, gx, gy, (20.0, 24.0, 44.0, 52.0), cls=1)
    total, parts = detection_loss(raw, targets, LAYOUT, image_size=64)
    assert parts["box"] < 1e-5 and parts["cls"] < 1e-6 and parts["obj"] < 1e-6, parts
    # one positive cell moved off its target: the box and objectness parts notice
    raw["security"][1][0, 0, 2, 2] += 1.0
    _, moved = detection_loss(raw, targets, LAYOUT, image_size=64)
    assert moved["box"] > 1e-3 and moved["obj"] > 1e-3
    # the same prediction one level up is wrong: nothing there is a positive
    raw = _raw(LAYOUT, 64)
    for gx, gy in [(1, 0), (0, 0), (1, 1)]:
        _put(raw, "banknote", 1, gx, gy, (15.0, 7.0, 23.0, 15.0), cls=3)
    banknote_only = [{"boxes": targets[0]["boxes"][:1], "labels": targets[0]["labels"][:1]}]
    _, wrong = detection_loss(raw, banknote_only, LAYOUT, image_size=64)
    assert wrong["obj"] > 1.0


def test_parts_have_their_documented_values():
    # three positives predicting a box of half the target's width around its centre: IoU 0.5, so the
    # objectness target is 0.5; class logits 0 give log 2 per class
    target = [{"boxes": torch.tensor([[16.0, 16.0, 32.0, 32.0]]), "labels": torch.tensor([0])}]  # centre (24, 24)
    layout = Layout.of({"banknote": 4})
    raw = _raw(layout, 64)
    cells = [(3, 3), (2, 3), (3, 2)]  # (x, y): centre (3.0, 3.0) cells -> cell (3, 3), neighbours left and up
    ridx, gy, gx = _positives(torch.tensor([[0, 0, 16.0, 16.0, 32.0, 32.0]]), 8, 8, 8)
    assert sorted(zip(gx.tolist(), gy.tolist())) == sorted(cells)
    for x, y in cells:
        _put(raw, "banknote", 0, x, y, (20.0, 16.0, 28.0, 32.0), cls=[], obj=0.0)
        raw["banknote"][0][0, 5:, y, x] = 0.0
    _, parts = detection_loss(raw, target, layout, image_size=64)
    # CIoU = 1 - IoU + (centre distance)² / diagonal² + α·v; same centres, aspect 1:2 against 1:1
    v = 4 / math.pi ** 2 * (math.atan(1.0) - math.atan(0.5)) ** 2
    assert parts["box"].item() == pytest.approx(0.5 + v / (0.5 + v) * v, abs=1e-5)  # mean over positives
    assert parts["cls"].item() == pytest.approx(math.log(2), abs=1e-5)  # mean over positives and classes
    h, w = 8, 8
    p = torch.tensor(0.5)  # sigmoid(0)
    bce_pos = -(0.5 * torch.log(p) + 0.5 * torch.log(1 - p))
    bce_neg = -torch.log(1 - torch.sigmoid(torch.tensor(OFF)))
    expected = LEVEL_BALANCE[0] * (3 * bce_pos + (h * w - 3) * bce_neg) / (h * w) \
        + (LEVEL_BALANCE[1] + LEVEL_BALANCE[2]) * bce_neg
    assert torch.allclose(parts["obj"], expected, rtol=1e-4)


# --------------------------------------------------------------------------- decoding


SMALL = Layout.of({"a": 2, "b": 3})


def test_a_known_cell_decodes_to_its_box_and_global_label():
    raw = _raw(SMALL, 64)
    _put(raw, "b", 1, gx=2, gy=1, box=(20.0, 10.0, 44.0, 30.0), cls=2)
    (det,) = decode(raw, SMALL, conf=0.25)
    assert isinstance(det, Detections)
    assert det.labels.tolist() == [2 + 2]  # group b starts at global id 2
    assert torch.allclose(det.boxes, torch.tensor([[20.0, 10.0, 44.0, 30.0]]), atol=1e-3)
    assert det.scores.item() == pytest.approx(1.0, abs=1e-6)
    # box_decode agrees cell by cell
    boxes = box_decode(raw["b"][1], 16)
    assert boxes.shape == (1, 4, 4, 4)
    assert torch.allclose(boxes[0, 1, 2], torch.tensor([20.0, 10.0, 44.0, 30.0]), atol=1e-3)
    # a zero logit is the cell centre and a 4-stride square: (σ(0)·4)² = 4 strides = 64 px at stride 16
    assert torch.allclose(boxes[0, 0, 0], torch.tensor([-24.0, -24.0, 40.0, 40.0]))


def test_scores_are_objectness_times_class_and_conf_filters():
    raw = _raw(SMALL, 64, batch=2)
    _put(raw, "a", 0, 1, 1, (4.0, 4.0, 16.0, 16.0), cls=0, obj=_logit(0.9))
    _put(raw, "a", 0, 6, 6, (44.0, 44.0, 56.0, 56.0), cls=1, obj=_logit(0.3))
    raw["a"][0][0, 5 + 1, 6, 6] = _logit(0.5)  # score 0.3 * 0.5
    (d0, d1) = decode(raw, SMALL, conf=0.1)
    assert sorted(d0.scores.tolist(), reverse=True) == pytest.approx([0.9, 0.15], abs=1e-5)
    assert len(d1.scores) == 0 and d1.boxes.shape == (0, 4)  # image 2 has nothing
    (d0, _) = decode(raw, SMALL, conf=0.2)
    assert d0.scores.tolist() == pytest.approx([0.9], abs=1e-5) and d0.labels.tolist() == [0]


def test_nms_removes_a_duplicate_of_the_same_class_only():
    raw = _raw(SMALL, 64)
    box = (16.0, 16.0, 40.0, 40.0)
    _put(raw, "a", 0, 3, 3, box, cls=0, obj=_logit(0.9))
    _put(raw, "a", 0, 4, 3, (17.0, 16.0, 41.0, 40.0), cls=0, obj=_logit(0.8))  # duplicate, same class
    _put(raw, "a", 1, 1, 1, box, cls=1, obj=_logit(0.7))  # same place, another class in the group
    _put(raw, "b", 1, 1, 1, box, cls=0, obj=_logit(0.6))  # same place, another group
    (det,) = decode(raw, SMALL, conf=0.25, iou=0.6)
    assert sorted(zip(det.labels.tolist(), [round(s, 4) for s in det.scores.tolist()])) == [
        (0, 0.9), (1, 0.7), (2, 0.6)]
    assert det.scores.tolist() == sorted(det.scores.tolist(), reverse=True)
    # a low IoU threshold keeps nothing more; a threshold above their IoU keeps both same-class boxes
    (det,) = decode(raw, SMALL, conf=0.25, iou=0.95)
    assert sorted(det.labels.tolist()) == [0, 0, 1, 2]


def test_one_cell_may_give_several_classes():
    raw = _raw(SMALL, 64)
    _put(raw, "b", 0, 4, 4, (28.0, 28.0, 40.0, 40.0), cls=[0, 2])
    (det,) = decode(raw, SMALL, conf=0.5)
    assert sorted(det.labels.tolist()) == [2, 4]
    assert torch.allclose(det.boxes[0], det.boxes[1])


def test_max_det_keeps_the_best():
    raw = _raw(SMALL, 64)
    for i in range(6):  # six separate boxes on the stride-8 grid, scores 0.4 .. 0.9
        _put(raw, "a", 0, i, i, (8.0 * i + 1, 8.0 * i + 1, 8.0 * i + 7, 8.0 * i + 7), cls=0,
             obj=_logit(0.4 + 0.1 * i))
    (det,) = decode(raw, SMALL, conf=0.1)
    assert len(det.scores) == 6
    (det,) = decode(raw, SMALL, conf=0.1, max_det=3)
    assert det.scores.tolist() == pytest.approx([0.9, 0.8, 0.7], abs=1e-5)
    (det,) = decode(raw, SMALL, conf=0.1, pre_nms=2)
    assert det.scores.tolist() == pytest.approx([0.9, 0.8], abs=1e-5)


def test_the_example_in_the_docs_runs(tmp_path, monkeypatch):
    text = (Path(__file__).resolve().parents[1] / "docs" / "detection.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", text, re.S)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    torch.save(torchvision.models.efficientnet_b0().state_dict(), tmp_path / "weights/efficientnet_b0.pt")
    ns = {"images": torch.rand(2, 3, 64, 64), "targets": _targets()}
    exec(compile(block, "docs/detection.md", "exec"), ns)  # noqa: S102 - our own docs
    assert torch.isfinite(ns["loss"]) and set(ns["parts"]) == {"box", "obj", "cls"}
    assert len(ns["dets"]) == 2 and all(isinstance(d, Detections) for d in ns["dets"])


def test_decode_of_a_model_output_is_well_formed():
    model = tiny_detector().eval()
    with torch.no_grad():
        dets = decode(model(torch.rand(3, 3, 64, 64)), LAYOUT, conf=0.0, max_det=50)
    assert len(dets) == 3
    for d in dets:
        assert d.boxes.shape == (50, 4) and d.scores.shape == (50,) and d.labels.shape == (50,)
        assert d.labels.min() >= 0 and d.labels.max() < 17 and d.labels.dtype == torch.int64


# --------------------------------------------------------------------------- the batched loss


def _random_outputs(g, batch, size, layout=LAYOUT):
    return {name: [torch.randn(batch, 5 + c, size // s, size // s, generator=g).requires_grad_(True) for s in STRIDES]
            for name, c in layout.groups}


@pytest.mark.parametrize("seed", range(6))
def test_batched_loss_equals_the_per_image_reference(seed):
    g = torch.Generator().manual_seed(seed)
    size = (64, 96, 128)[seed % 3]
    out = _random_outputs(g, 4, size)
    targets = random_targets(g, 4, size, most=25)
    leaves = [t for ts in out.values() for t in ts]
    want, want_parts = reference_loss(out, targets, LAYOUT, size, LossWeights(0.05, 1.0, 0.5))
    want_grads = torch.autograd.grad(want, leaves)
    for given in (targets, pad_targets(targets)):  # a list is padded at the loss entry
        got, parts = detection_loss(out, given, LAYOUT, size, LossWeights(0.05, 1.0, 0.5))
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got, want)
        for k in want_parts:
            assert torch.allclose(parts[k], want_parts[k], rtol=1e-5, atol=1e-5), (k, parts[k], want_parts[k])
        for a, b in zip(torch.autograd.grad(got, leaves), want_grads):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_batched_loss_of_a_batch_without_targets_equals_the_reference():
    g = torch.Generator().manual_seed(3)
    out = _random_outputs(g, 3, 64)
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}] * 3
    assert pad_targets(empty)["labels"].shape == (3, 0)
    got, parts = detection_loss(out, empty, LAYOUT, 64)
    want, _ = reference_loss(out, empty, LAYOUT, 64)
    assert torch.allclose(got, want, rtol=1e-6) and parts["box"] == 0 and parts["cls"] == 0


@pytest.mark.parametrize("seed", range(3))
def test_assignment_picks_the_reference_cells(seed):
    g = torch.Generator().manual_seed(seed)
    size = 96
    out = _random_outputs(g, 3, size)
    targets = random_targets(g, 3, size, most=40)  # crowded: many cells claimed twice
    heads = Heads.of(out, LAYOUT)
    a = assign(pad_targets(targets), LAYOUT, heads, size)
    got = set()
    for b, m, k in a.positive.nonzero().tolist():
        got.add((b, int(targets[b]["labels"][m]), m, int(a.y[b, m, k]), int(a.x[b, m, k])))
    want = set()
    for gi, (group, _) in enumerate(LAYOUT.groups):
        rows = _ref_group_targets(targets, LAYOUT, group)
        # the row's index inside its image's own target list
        own = [m for i, t in enumerate(targets) for m in range(len(t["labels"]))
               if LAYOUT.group_of(int(t["labels"][m]))[0] == group]
        levels = level_of(torch.maximum(rows[:, 4] - rows[:, 2], rows[:, 5] - rows[:, 3]), size)
        for li, s in enumerate(STRIDES):
            pick = (levels == li).nonzero()[:, 0]
            ridx, gy, gx = _positives(rows[pick], s, size // s, size // s)
            for r, y, x in zip(ridx.tolist(), gy.tolist(), gx.tolist()):
                row = int(pick[r])
                b = int(rows[row, 0])
                want.add((b, int(targets[b]["labels"][own[row]]), own[row], y, x))
    assert got == want and len(got) > 50


def test_the_loss_records_the_same_operations_whatever_the_batch_and_the_targets():
    assert_fixed_operations(lambda out, padded: detection_loss(out, padded, LAYOUT, 64), _random_outputs)


def test_ciou_and_pair_iou_equal_torchvision():
    g = torch.Generator().manual_seed(5)
    a = torch.rand(200, 4, generator=g) * 50
    b = torch.rand(200, 4, generator=g) * 50
    a = torch.cat([torch.minimum(a[:, :2], a[:, 2:]), torch.maximum(a[:, :2], a[:, 2:]) + 0.5], 1)
    b = torch.cat([torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:]) + 0.5], 1)
    assert torch.allclose(ciou_loss(a, b), torchvision.ops.complete_box_iou_loss(a, b), atol=1e-6)
    assert torch.allclose(pair_iou(a, b), torchvision.ops.box_iou(a, b).diagonal(), atol=1e-7)


def test_detection_collate_pads_the_targets_and_keeps_the_list():
    targets = _targets()
    images, kept, padded = detection_collate([(torch.zeros(3, 64, 64), t) for t in targets])
    assert images.shape == (2, 3, 64, 64) and kept == targets
    assert padded["boxes"].shape == (2, 2, 4) and padded["labels"].tolist() == [[2, 8], [15, -1]]
    assert torch.equal(padded["boxes"][1, 0], targets[1]["boxes"][0])


def test_channels_last_keeps_weights_and_inputs_nhwc_and_the_outputs():
    plain, nhwc = tiny_detector(), tiny_detector(channels_last=True)
    conv = next(p for p in nhwc.parameters() if p.ndim == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = plain.eval()(images), nhwc.eval()(images)
    for g in a:
        for x, y in zip(a[g], b[g]):
            assert torch.allclose(x, y, atol=1e-4)
    assert detector(GROUPS, width=16, backbone_width=8, channels_last=True).channels_last
    with pytest.raises(UserError, match="channels_last must be true or false"):
        detector(GROUPS, channels_last="yes")
