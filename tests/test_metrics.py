"""Detection metrics against pycocotools, and the numbers built on them.

Every AP comparison builds the same scene twice: as tensors for
:mod:`smartcash_fn.smartcash.metrics` and as COCO json dicts for pycocotools'
``COCOeval`` (bbox, default params), and compares AP per class and IoU
threshold (from ``eval['precision']``, area 'all', maxDets 100) and the
summary ``stats[0]``/``stats[1]`` within 1e-4, as the metric promises. The
precision tables themselves are compared at 1e-12: the implementation does
pycocotools' float64 arithmetic, so they agree to the last bits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from smartcash_fn.smartcash import metrics as M
from smartcash_fn.callbacks import Monitor, early_stopping
from smartcash_fn.data import Batches, TensorData
from smartcash_fn.errors import DataError, StateError
from smartcash_fn.loop import Loop, Validation, fit
from smartcash_fn.optim import sgd
from smartcash_fn.state import TrainState
from smartcash_fn.step import classification_loss, make_step

CLASSES = ("001", "002", "005", "010", "020", "050", "100",
           "l2_001", "l2_002", "l2_005", "l2_010", "l2_020", "l2_050", "l2_100",
           "l3_sign", "l3_text", "l3_thread")
LAYERS = {"banknote": CLASSES[:7], "nominal": CLASSES[7:14], "security": CLASSES[14:]}
C = len(CLASSES)
TOL = 1e-4


# --------------------------------------------------------------------------- pycocotools reference


def coco_reference(dets, tgts, num_classes, max_dets=100):
    """pycocotools' evaluation of the same scene: (AP [T, C] with NaN for -1, precision [T, R, C], stats)."""
    images = [{"id": i + 1, "width": 2000, "height": 2000} for i in range(len(tgts))]
    anns = []
    for i, t in enumerate(tgts):
        for box, label in zip(torch.as_tensor(t.boxes).double().reshape(-1, 4).tolist(),
                              torch.as_tensor(t.labels).reshape(-1).tolist()):
            x1, y1, x2, y2 = box
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(label) + 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    results = []
    for i, d in enumerate(dets):
        for box, score, label in zip(torch.as_tensor(d.boxes).double().reshape(-1, 4).tolist(),
                                     torch.as_tensor(d.scores).double().reshape(-1).tolist(),
                                     torch.as_tensor(d.labels).reshape(-1).tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": i + 1, "category_id": int(label) + 1, "score": score,
                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    assert results, "pycocotools cannot load an empty result list; test that case without it"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    p = ev.eval["precision"][:, :, :, 0, -1]                     # area 'all', the largest maxDets
    absent = (p == -1).all(1)
    ap = np.where(absent, np.nan, p.mean(1))
    return ap, np.where(p == -1, np.nan, p), ev.stats


def assert_like_coco(dets, tgts, num_classes=C, max_dets=100):
    """AP per class and threshold, and the summary stats, within 1e-4 of pycocotools."""
    names = [f"c{i}" for i in range(num_classes)]
    report = M.evaluate(dets, tgts, names, max_dets=max_dets)
    ref_ap, ref_pr, stats = coco_reference(dets, tgts, num_classes, max_dets)
    ap = report.ap.numpy()
    assert np.array_equal(np.isnan(ap), np.isnan(ref_ap)), "classes without ground truth differ"
    np.testing.assert_allclose(ap, ref_ap, atol=TOL, rtol=0)
    np.testing.assert_allclose(report.pr.numpy(), ref_pr, atol=1e-12, rtol=0)
    if max_dets == 100:
        ref0 = stats[0] if stats[0] > -1 else math.nan
        ref1 = stats[1] if stats[1] > -1 else math.nan
        np.testing.assert_allclose([report.map, report.map50], [ref0, ref1], atol=TOL, rtol=0)
    return report


# --------------------------------------------------------------------------- scenes


def _boxes(g, n, lo, span, size_lo, size_span):
    xy = lo + torch.rand(n, 2, generator=g) * span
    wh = size_lo + torch.rand(n, 2, generator=g) * size_span
    return torch.cat([xy, xy + wh], 1)


def random_scene(seed, images=40, max_gt=8, max_det=60, classes=C, crowded=False, tie_scores=False,
                 empty_gt_every=0, empty_det_every=0):
    """Detections scattered around the ground truth (jittered, some with a wrong class) plus spurious ones."""
    g = torch.Generator().manual_seed(seed)
    dets, tgts = [], []
    for i in range(images):
        m = 0 if empty_gt_every and i % empty_gt_every == 0 else int(torch.randint(1, max_gt + 1, (1,), generator=g))
        gb = _boxes(g, m, 0, 60 if crowded else 800, 15, 60 if crowded else 250)
        gl = torch.randint(0, classes, (m,), generator=g)
        n = 0 if empty_det_every and i % empty_det_every == 0 else int(torch.randint(0, max_det + 1, (1,), generator=g))
        db = _boxes(g, n, 0, 800, 10, 250)
        dl = torch.randint(0, classes, (n,), generator=g)
        if m:
            src = torch.randint(0, m, (n,), generator=g)
            near = torch.rand(n, generator=g) < 0.7
            size = (gb[src, 2:] - gb[src, :2]).repeat(1, 2)
            jit = gb[src] + (torch.rand(n, 4, generator=g) - 0.5) * 0.5 * size
            jit = torch.cat([torch.minimum(jit[:, :2], jit[:, 2:]), torch.maximum(jit[:, :2], jit[:, 2:])], 1)
            db = torch.where(near[:, None], jit, db)
            dl = torch.where(near & (torch.rand(n, generator=g) < 0.85), gl[src], dl)
        sc = torch.rand(n, generator=g)
        if tie_scores:
            sc = (sc * 4).round() / 4
        dets.append(M.Detections(db, sc, dl))
        tgts.append(M.Targets(gb, gl))
    return dets, tgts


# --------------------------------------------------------------------------- equal to pycocotools


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scenes_match_pycocotools(seed):
    report = assert_like_coco(*random_scene(seed, images=25, max_det=40))
    assert 0.05 < report.map50 < 0.95                            # a scene with something to measure


def test_crowded_scenes_match_pycocotools():
    # dozens of heavily overlapping boxes of few classes per image: many candidates per gt
    assert_like_coco(*random_scene(10, images=12, max_gt=40, max_det=150, classes=3, crowded=True),
                     num_classes=3)


def test_images_without_ground_truth_or_detections_match_pycocotools():
    dets, tgts = random_scene(11, images=30, empty_gt_every=3, empty_det_every=4)
    assert any(t.labels.numel() == 0 for t in tgts) and any(d.scores.numel() == 0 for d in dets)
    assert_like_coco(dets, tgts)


def test_class_without_ground_truth_is_left_out_and_class_without_detections_scores_zero():
    dets, tgts = random_scene(12, images=20, classes=5)
    # class 5 has detections but no ground truth; class 6 has ground truth but no detections
    dets[0] = M.Detections(torch.cat([dets[0].boxes, torch.tensor([[5.0, 5.0, 50.0, 50.0]])]),
                           torch.cat([dets[0].scores, torch.tensor([0.99])]),
                           torch.cat([dets[0].labels, torch.tensor([5])]))
    tgts[1] = M.Targets(torch.cat([tgts[1].boxes, torch.tensor([[100.0, 100.0, 200.0, 180.0]])]),
                        torch.cat([tgts[1].labels, torch.tensor([6])]))
    report = assert_like_coco(dets, tgts, num_classes=8)
    assert torch.isnan(report.ap[:, 5]).all() and torch.isnan(report.ap[:, 7]).all()
    assert (report.ap[:, 6] == 0).all()
    assert "AP50/c5" not in report.metrics() and report.metrics()["AP50/c6"] == 0.0


def test_perfect_detections_score_one():
    _, tgts = random_scene(13, images=15)
    dets = [M.Detections(t.boxes.clone(), torch.linspace(0.9, 0.5, t.labels.numel()), t.labels.clone()) for t in tgts]
    report = assert_like_coco(dets, tgts)
    has = report.has_gt
    assert torch.equal(report.ap[:, has], torch.ones_like(report.ap[:, has]))
    assert report.map50 == 1.0 and report.map == 1.0
    assert torch.equal(report.precision[has], torch.ones(int(has.sum()), dtype=torch.float64))


def test_duplicate_detections_and_score_ties_match_pycocotools():
    dets, tgts = random_scene(14, images=25, tie_scores=True)
    # every detection twice, with the same score: the second copy of a true positive is a false positive
    dets = [M.Detections(d.boxes.repeat(2, 1), d.scores.repeat(2), d.labels.repeat(2)) for d in dets]
    assert_like_coco(dets, tgts)


def test_all_scores_equal_match_pycocotools():
    dets, tgts = random_scene(15, images=20)
    dets = [M.Detections(d.boxes, torch.full_like(d.scores, 0.5), d.labels) for d in dets]
    assert_like_coco(dets, tgts)


def test_more_detections_than_max_dets_match_pycocotools():
    dets, tgts = random_scene(16, images=6, max_gt=30, max_det=250, classes=2, crowded=True)
    assert max(int((d.labels == 0).sum()) for d in dets) > 100
    assert_like_coco(dets, tgts, num_classes=2, max_dets=100)
    assert_like_coco(dets, tgts, num_classes=2, max_dets=10)


def test_iou_tie_goes_to_the_last_ground_truth_as_in_pycocotools():
    # det 1 overlaps both gts with exactly the same IoU (2/3); pycocotools gives it the LAST one,
    # which leaves gt A for det 2 (IoU 1 with A, 0.43 with B): two true positives, AP 1
    tgts = [M.Targets(torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 14.0, 10.0]]), torch.tensor([0, 0]))]
    dets = [M.Detections(torch.tensor([[2.0, 0.0, 12.0, 10.0], [0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.9, 0.8]),
                         torch.tensor([0, 0]))]
    m = M.match_detections(dets, tgts, num_classes=1)
    assert m.gt[0].tolist() == [1, 0]
    report = assert_like_coco(dets, tgts, num_classes=1)
    assert report.ap50[0] == 1.0


def test_iou_exactly_at_a_threshold_matches():
    # IoU exactly 0.5 (50 / 100) matches at 0.5 and at nothing above, in both implementations
    tgts = [M.Targets(torch.tensor([[0.0, 0.0, 10.0, 5.0]]), torch.tensor([0]))]
    dets = [M.Detections(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.9]), torch.tensor([0]))]
    m = M.match_detections(dets, tgts, num_classes=1)
    assert m.matched[:, 0].tolist() == [True] + [False] * 9
    assert_like_coco(dets, tgts, num_classes=1)


@st.composite
def integer_scenes(draw):
    """Small scenes on an integer grid: exact IoU ties, IoUs exactly on thresholds, duplicate boxes, tied scores."""
    n_images, classes = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    box = st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(1, 8), st.integers(1, 8))
    dets, tgts = [], []
    for _ in range(n_images):
        gts = draw(st.lists(st.tuples(box, st.integers(0, classes - 1)), max_size=5))
        gb = torch.tensor([[x, y, x + w, y + h] for (x, y, w, h), _ in gts], dtype=torch.float32).reshape(-1, 4)
        gl = torch.tensor([c for _, c in gts], dtype=torch.int64)
        ds = draw(st.lists(st.tuples(box, st.integers(0, classes - 1), st.sampled_from([0.2, 0.5, 0.7, 0.9])),
                           max_size=7))
        db = torch.tensor([[x, y, x + w, y + h] for (x, y, w, h), _, _ in ds], dtype=torch.float32).reshape(-1, 4)
        dl = torch.tensor([c for _, c, _ in ds], dtype=torch.int64)
        sc = torch.tensor([s for _, _, s in ds], dtype=torch.float32)
        dets.append(M.Detections(db, sc, dl))
        tgts.append(M.Targets(gb, gl))
    return dets, tgts, classes


@settings(max_examples=60, deadline=None)
@given(integer_scenes())
def test_integer_grid_scenes_match_pycocotools(scene):
    dets, tgts, classes = scene
    if sum(d.scores.numel() for d in dets) == 0:
        report = M.evaluate(dets, tgts, [str(c) for c in range(classes)])
        assert all((report.ap[:, c] == 0).all() if report.num_gt[c] else torch.isnan(report.ap[:, c]).all()
                   for c in range(classes))
        return
    assert_like_coco(dets, tgts, num_classes=classes)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans())
def test_random_float_scenes_match_pycocotools(seed, crowded):
    assert_like_coco(*random_scene(seed, images=5, max_gt=10, max_det=40, classes=4, crowded=crowded),
                     num_classes=4)


# --------------------------------------------------------------------------- edge cases without pycocotools


def test_no_detections_at_all_gives_zero_ap():
    _, tgts = random_scene(20, images=5)
    empty = [M.Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))] * 5
    report = M.evaluate(empty, tgts, CLASSES, LAYERS)
    assert report.map50 == 0.0 and report.map == 0.0
    assert report.metrics()["recall"] == 0.0 and report.metrics()["precision"] == 0.0


def test_no_ground_truth_at_all_leaves_the_means_out():
    dets, _ = random_scene(21, images=3)
    none = [M.Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))] * 3
    report = M.evaluate(dets, none, CLASSES, LAYERS)
    assert math.isnan(report.map50) and math.isnan(report.map)
    assert report.metrics() == {}
    assert M.evaluate([], [], CLASSES, LAYERS).metrics() == {}


def _iou_by_hand(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if inter > 0 else 0.0


def test_box_iou_agrees_with_the_textbook_formula():
    g = torch.Generator().manual_seed(3)
    a, b = _boxes(g, 12, 0, 100, 1, 60), _boxes(g, 9, 0, 100, 1, 60)
    expected = torch.tensor([[_iou_by_hand(x, y) for y in b.double().tolist()] for x in a.double().tolist()],
                            dtype=torch.float64)
    assert (expected > 0).sum() > 10 and (expected == 0).sum() > 10
    np.testing.assert_allclose(M.box_iou(a, b).numpy(), expected.numpy(), atol=1e-12, rtol=0)
    assert M.box_iou(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 0.0, 15.0, 10.0]])).item() \
        == pytest.approx(1 / 3)
    # degenerate boxes: zero area, IoU 0 (not NaN)
    assert M.box_iou(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, 1.0, 1.0]])).item() == 0.0


def test_inputs_as_mappings_tuples_and_other_records_give_the_same_report():
    @attrs.frozen
    class OtherDetections:              # a record of another module with the same field names
        boxes: torch.Tensor
        scores: torch.Tensor
        labels: torch.Tensor

    dets, tgts = random_scene(22, images=6)
    a = M.evaluate(dets, tgts, CLASSES)
    b = M.evaluate([{"boxes": d.boxes, "scores": d.scores, "labels": d.labels} for d in dets],
                   [(t.boxes.tolist(), t.labels.tolist()) for t in tgts], CLASSES)
    c = M.evaluate([OtherDetections(d.boxes, d.scores, d.labels) for d in dets],
                   [{"boxes": t.boxes, "labels": t.labels} for t in tgts], CLASSES)
    for other in (b, c):
        np.testing.assert_array_equal(a.ap.numpy(), other.ap.numpy())
        assert torch.equal(a.confusion, other.confusion)


# --------------------------------------------------------------------------- P/R/F1, confusion, layers


def _small_scene():
    """Image 0: gt 001 found (0.9), gt 002 confused as 005 (0.8), a spurious 010 (0.7), a weak 001 duplicate
    (0.1, below conf). Image 1: gt l3_sign missed, a found l2_001 (0.6)."""
    t0 = M.Targets(torch.tensor([[0.0, 0.0, 100.0, 50.0], [200.0, 0.0, 300.0, 50.0]]), torch.tensor([0, 1]))
    d0 = M.Detections(torch.tensor([[2.0, 0.0, 100.0, 50.0], [200.0, 2.0, 300.0, 50.0], [400.0, 400.0, 450.0, 430.0],
                                    [0.0, 0.0, 98.0, 50.0]]),
                      torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([0, 2, 3, 0]))
    t1 = M.Targets(torch.tensor([[10.0, 10.0, 30.0, 20.0], [50.0, 50.0, 90.0, 70.0]]), torch.tensor([14, 7]))
    d1 = M.Detections(torch.tensor([[50.0, 50.0, 90.0, 71.0]]), torch.tensor([0.6]), torch.tensor([7]))
    return [d0, d1], [t0, t1]


def test_confusion_matrix_layout():
    dets, tgts = _small_scene()
    cm = M.confusion_matrix(dets, tgts, num_classes=C, conf=0.25)
    bg = C
    expected = torch.zeros(C + 1, C + 1, dtype=torch.int64)
    expected[0, 0] = 1          # 001 found
    expected[1, 2] = 1          # true 002 predicted 005
    expected[bg, 3] = 1         # spurious 010: background row
    expected[7, 7] = 1          # l2_001 found
    expected[14, bg] = 1        # l3_sign missed: background column
    assert torch.equal(cm, expected)
    # a lower confidence lets the weak duplicate in: a second 001 on an already matched gt is spurious
    cm = M.confusion_matrix(dets, tgts, num_classes=C, conf=0.05)
    assert int(cm[bg, 0]) == 1 and int(cm[0, 0]) == 1


def test_precision_recall_f1_at_conf():
    dets, tgts = _small_scene()
    report = M.evaluate(dets, tgts, CLASSES, LAYERS, conf=0.25)
    p, r, f1 = report.precision, report.recall, report.f1
    assert (p[0], r[0], f1[0]) == (1.0, 1.0, 1.0)             # 001
    assert (p[1], r[1], f1[1]) == (0.0, 0.0, 0.0)             # 002: confused, no detection of it
    assert r[14] == 0.0 and p[7] == 1.0                        # l3_sign missed, l2_001 found
    has = report.has_gt.tolist()
    assert has == [i in (0, 1, 7, 14) for i in range(C)]      # 005 and 010 have detections only
    met = report.metrics()
    assert met["precision"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert met["recall"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert met["F1"] == pytest.approx(0.5)


def test_confusion_diagonal_equals_true_positives_and_sums_are_counts():
    dets, tgts = random_scene(30, images=40)
    report = M.evaluate(dets, tgts, CLASSES, conf=0.3)
    cm = report.confusion
    m = M.match_detections(dets, tgts, C)
    sure = m.scores >= 0.3
    tp = torch.bincount(m.labels[sure & m.matched[0]], minlength=C)
    assert torch.equal(cm.diagonal()[:C], tp)
    assert torch.equal(cm[:C].sum(1), report.num_gt)                          # every gt once
    assert torch.equal(cm[:, :C].sum(0), torch.bincount(m.labels[sure], minlength=C))   # every kept detection once
    assert int(cm[C, C]) == 0
    # precision and recall read off the matrix
    has = report.has_gt
    col, row = cm[:, :C].sum(0).double(), cm[:C].sum(1).double()
    np.testing.assert_allclose(report.recall[has].numpy(), (tp.double() / row)[has].numpy(), rtol=1e-15)
    np.testing.assert_allclose(report.precision[col > 0].numpy(), (tp.double() / col)[col > 0].numpy(), rtol=1e-15)


def test_layer_means_and_metric_names():
    dets, tgts = random_scene(31, images=30)
    report = M.evaluate(dets, tgts, CLASSES, LAYERS)
    met = report.metrics()
    for layer, names in LAYERS.items():
        idx = [CLASSES.index(n) for n in names if report.num_gt[CLASSES.index(n)] > 0]
        assert met[f"mAP50/{layer}"] == pytest.approx(float(report.ap50[idx].mean()))
        assert met[f"mAP50-95/{layer}"] == pytest.approx(float(report.ap.mean(0)[idx].mean()))
    assert met["mAP50"] == pytest.approx(np.mean([met[f"AP50/{n}"] for n in CLASSES if f"AP50/{n}" in met]))
    assert {"mAP50", "mAP50-95", "precision", "recall", "F1"} <= set(met)
    assert all(isinstance(v, float) and not math.isnan(v) for v in met.values())
    table = report.table()
    assert "l3_thread" in table and "security" in table and table.splitlines()[-1].startswith("all")
    curves = report.pr_curves()
    assert set(curves) == {n for c, n in enumerate(CLASSES) if report.num_gt[c] > 0}


# --------------------------------------------------------------------------- bad input


def test_bad_input_gets_clear_errors():
    good_d = M.Detections(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.5]), torch.tensor([0]))
    good_t = M.Targets(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0]))
    flipped = M.Targets(torch.tensor([[10.0, 0.0, 0.0, 10.0]]), torch.tensor([0]))
    with pytest.raises(DataError, match=r"targets: image 1 .*x2 < x1"):
        M.evaluate([good_d, good_d], [good_t, flipped], CLASSES)
    with pytest.raises(DataError, match=r"detections: image 0 has label 17, outside 0..16"):
        M.evaluate([M.Detections(good_d.boxes, good_d.scores, torch.tensor([17]))], [good_t], CLASSES)
    with pytest.raises(DataError, match=r"2 images of detections but 1 of targets"):
        M.evaluate([good_d, good_d], [good_t], CLASSES)
    with pytest.raises(DataError, match=r"detections\[0\]: boxes \(1, 3\)"):
        M.evaluate([M.Detections(torch.zeros(1, 3), good_d.scores, good_d.labels)], [good_t], CLASSES)
    with pytest.raises(DataError, match=r"targets\[0\]: a mapping of targets needs .* labels missing"):
        M.evaluate([good_d], [{"boxes": good_t.boxes}], CLASSES)
    with pytest.raises(DataError, match="score that is not finite"):
        M.evaluate([M.Detections(good_d.boxes, torch.tensor([math.nan]), good_d.labels)], [good_t], CLASSES)
    with pytest.raises(StateError, match=r"layers\['banknote'\] names '999'"):
        M.evaluate([good_d], [good_t], CLASSES, {"banknote": ("001", "999")})
    with pytest.raises(StateError, match="conf must be a number in"):
        M.evaluate([good_d], [good_t], CLASSES, conf=1.5)
    with pytest.raises(StateError, match="max_dets must be an int >= 1"):
        M.evaluate([good_d], [good_t], CLASSES, max_dets=0)


# --------------------------------------------------------------------------- in the training loop


def _detection_batches(dets, tgts, per_batch=4):
    """Batches (images, per-image targets, per-image canned detections) for a fake detector."""
    out = []
    for i in range(0, len(tgts), per_batch):
        n = len(tgts[i:i + per_batch])
        out.append((torch.zeros(n, 8), [{"boxes": t.boxes, "labels": t.labels} for t in tgts[i:i + per_batch]],
                    dets[i:i + per_batch]))
    return out


def _decode(apply, batch):
    images, _, canned = batch
    apply(images)                                   # the model runs; its output is not used by this fake
    return canned


def test_evaluator_alone_equals_evaluate():
    dets, tgts = random_scene(40, images=18)
    ev = M.detection_evaluator(_decode, CLASSES, LAYERS)
    acc = ev.init()
    for batch in _detection_batches(dets, tgts):
        acc = ev.update(acc, lambda x: x, batch)
    assert ev.finish(acc) == M.evaluate(dets, tgts, CLASSES, LAYERS).metrics()


def test_collect_gathers_every_image_for_the_full_report():
    dets, tgts = random_scene(43, images=10)
    got_d, got_t = M.collect_detections(_decode, lambda x: x, _detection_batches(dets, tgts))
    assert len(got_d) == len(got_t) == 10
    assert all(torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels) for a, b in zip(got_t, tgts))
    assert torch.equal(M.evaluate(got_d, got_t, CLASSES).confusion, M.evaluate(dets, tgts, CLASSES).confusion)


def test_detection_metrics_flow_into_history_and_drive_early_stopping():
    from conftest import make_mlp, tiny_xy

    dets, tgts = random_scene(41, images=12)
    x, y = tiny_xy()
    state = TrainState.create(make_mlp, sgd(0.1), seed=0)
    ev = M.detection_evaluator(_decode, CLASSES, LAYERS)
    loop = Loop(step=make_step(classification_loss), data=TensorData((x, y), 16), epochs=6,
                validation=Validation(Batches(_detection_batches(dets, tgts)), ev))
    out = fit(state, loop.add(early_stopping(Monitor("val/mAP50-95/banknote", "max"), patience=2)))
    expected = M.evaluate(dets, tgts, CLASSES, LAYERS).metrics()
    last = out.history.last()
    assert last["val/mAP50"] == expected["mAP50"] and last["val/AP50/l3_sign"] == expected["AP50/l3_sign"]
    # the fake detector never improves: the monitored layer mAP stalls, the run stops after 1 + 2 epochs
    assert len(out.history.series("val/mAP50-95/banknote")) == 3 and out.stop is not None


def test_evaluator_batch_convention_errors():
    dets, tgts = random_scene(42, images=4)
    ev = M.detection_evaluator(lambda apply, batch: batch[2][:1], CLASSES)
    with pytest.raises(DataError, match="decode gave detections for 1 images but the batch has targets for 4"):
        ev.update(ev.init(), lambda x: x, _detection_batches(dets, tgts)[0])
    with pytest.raises(DataError, match="targets must be a sequence with one entry per image"):
        M.batch_targets((torch.zeros(2, 3), torch.zeros(5, 6)))
    with pytest.raises(DataError, match=r"expected \(images, targets, ...\)"):
        M.batch_targets(torch.zeros(2, 3))
    assert M.batch_targets({"images": None, "targets": [1, 2]}) == [1, 2]


# --------------------------------------------------------------------------- the benchmark runs


def test_benchmark_quick_mode_runs_and_agrees(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "map_eval.py"
    spec = importlib.util.spec_from_file_location("map_eval", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--images", "40", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and "agree" in out


def test_confidence_curves_count_what_passes_each_threshold():
    box = [0.0, 0.0, 10.0, 10.0]
    far = [50.0, 50.0, 60.0, 60.0]
    # class 0: two gts; detections 0.9 (hit), 0.6 (miss), 0.3 (hit). class 1: no gt. class 2: one gt, no detection
    dets = [M.Detections(torch.tensor([box, far, [20.0, 20.0, 30.0, 30.0], far]),
                         torch.tensor([0.9, 0.6, 0.3, 0.8]), torch.tensor([0, 0, 0, 1]))]
    tgts = [M.Targets(torch.tensor([box, [20.0, 20.0, 30.0, 30.0], box]), torch.tensor([0, 0, 2]))]
    curves = M.evaluate(dets, tgts, ("a", "b", "c")).by_conf
    at = {round(float(c), 3): i for i, c in enumerate(curves.conf)}
    p, r, f1 = curves.precision[0], curves.recall[0], curves.f1[0]
    assert (float(p[at[0.2]]), float(r[at[0.2]])) == (2 / 3, 1.0)        # all three pass
    assert (float(p[at[0.5]]), float(r[at[0.5]])) == (0.5, 0.5)          # 0.9 and 0.6
    assert (float(p[at[0.7]]), float(r[at[0.7]])) == (1.0, 0.5)          # 0.9 alone
    assert (float(p[at[0.95]]), float(r[at[0.95]]), float(f1[at[0.95]])) == (1.0, 0.0, 0.0)  # none: precision 1
    assert float(f1[at[0.2]]) == pytest.approx(0.8)
    assert torch.isnan(curves.f1[1]).all() and torch.isnan(curves.precision[1]).all()     # no gt: no curve
    assert (curves.recall[2] == 0).all() and (curves.f1[2] == 0).all()                   # gt, never found
    conf, best = curves.best()
    assert best == pytest.approx(0.4) and 0.0 <= conf <= 0.3          # mean of a's 0.8 and c's 0 where all pass
    assert curves.mean(curves.f1)[at[0.5]] == pytest.approx(0.25)


LAYERS3 = {"banknote": ("001", "002"), "security": ("l3_sign",)}


def test_by_layer_scores_the_boxes_whatever_class_of_the_layer_they_name():
    names = ("001", "002", "l3_sign")
    targets = [{"boxes": torch.tensor([[10.0, 10, 110, 60], [20, 20, 30, 30]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[0.0, 0, 100, 100]]), "labels": torch.tensor([1])}]
    # image 0: the note named 002 (wrong class, right place) and again as 001 two pixels lower; the feature exact
    # image 1: the note found as 002, its box a fifth too wide (IoU 0.83)
    dets = [{"boxes": torch.tensor([[10.0, 10, 110, 60], [10, 12, 110, 62], [20, 20, 30, 30]]),
             "scores": torch.tensor([0.9, 0.75, 0.8]), "labels": torch.tensor([1, 0, 2])},
            {"boxes": torch.tensor([[0.0, 0, 120, 100]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([1])}]
    nothing = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    dets, targets = dets + [nothing], targets + [{"boxes": torch.zeros(0, 4), "labels": nothing["labels"]}]
    per_class = M.evaluate(dets, targets, names, LAYERS3).metrics()
    boxes = M.by_layer(dets, targets, names, LAYERS3).metrics()
    # by class, 002 has a false positive above its one hit; by layer the wrong name is a hit and its twin is merged
    assert per_class["AP50/002"] < 1.0
    assert boxes["AP50/banknote"] == pytest.approx(1.0) and boxes["AP50/security"] == pytest.approx(1.0)
    # the wide box passes IoU 0.50 to 0.80 and fails the 3 thresholds above, where half the notes are found at
    # precision 1 (51 of COCO's 101 recall points)
    assert boxes["AP50-95/banknote"] == pytest.approx((7 + 3 * 51 / 101) / 10, abs=1e-9)
    assert boxes["AP50-95/security"] == pytest.approx(1.0)
    assert set(k for k in boxes if k.startswith("AP50/")) == {"AP50/banknote", "AP50/security"}


def test_by_layer_refuses_a_class_in_no_layer_and_what_evaluate_refuses():
    names = ("001", "002", "l3_sign")
    one = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}]
    with pytest.raises(StateError, match="l3_sign"):
        M.by_layer([], [], names, {"banknote": ("001", "002")})
    with pytest.raises(DataError, match="2 images of detections but 1 of targets"):
        M.by_layer([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}] * 2, one,
                   names, LAYERS3)
    with pytest.raises(DataError, match="label 3"):
        M.by_layer([{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.5]),
                     "labels": torch.tensor([3])}], one, names, LAYERS3)
