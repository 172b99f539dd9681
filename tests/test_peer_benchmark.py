"""The peer side-by-side's conversion of Ultralytics predictions loses nothing; its use of Ultralytics' metric.

``benchmarks/peer_ultralytics.py`` turns the peer's ``Results.boxes``
(xyxy, conf, cls in the peer's class order) into our Detections. A known
prediction set, converted, must score with our evaluator what pycocotools
gives on the peer's own predictions (classes matched by name, independently
of the conversion). Ultralytics is not installed here: its ``ap_per_class``
is replaced by a fake that records what it was given::

    dets = [peer_detections(fake_boxes, class_table(PEER_NAMES, "fake.pt"))]
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peer_ultralytics as P  # noqa: E402
from smartcash_fn.smartcash import metrics as M  # noqa: E402
from smartcash_fn.smartcash import scenes as rupiah  # noqa: E402

pycocotools = pytest.importorskip("pycocotools")

PEER_NAMES = {i: n for i, n in enumerate(reversed(rupiah.CLASSES))}  # the peer's own class order


def _known_set(seed: int, images: int = 12):
    """Targets (our class ids) and the peer's raw predictions per image: boxes near targets, some false."""
    g = torch.Generator().manual_seed(seed)
    targets, raw = [], []
    for _ in range(images):
        k = int(torch.randint(0, 6, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * 150
        wh = torch.rand(k, 2, generator=g) * 60 + 8
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, len(rupiah.CLASSES), (k,), generator=g)
        targets.append(M.Targets(boxes, labels))
        n = int(torch.randint(0, 12, (1,), generator=g))
        pick = torch.randint(0, max(k, 1), (n,), generator=g)
        near = boxes[pick] if k else torch.rand(n, 4, generator=g) * 100
        jitter = (torch.rand(n, 4, generator=g) - 0.5) * 16
        pb = near + jitter
        pb = torch.cat([torch.minimum(pb[:, :2], pb[:, 2:]), torch.maximum(pb[:, :2], pb[:, 2:]) + 1], 1)
        ours = labels[pick] if k else torch.zeros(n, dtype=torch.long)
        wrong = torch.rand(n, generator=g) < 0.2
        ours = torch.where(wrong, torch.randint(0, len(rupiah.CLASSES), (n,), generator=g), ours)
        peer_cls = torch.tensor([len(rupiah.CLASSES) - 1 - int(c) for c in ours], dtype=torch.float32)
        raw.append(SimpleNamespace(xyxy=pb.float(), conf=torch.rand(n, generator=g).float(), cls=peer_cls))
    return targets, raw


def _pycocotools_on_peer(targets, raw) -> tuple[float, float]:
    """mAP50-95 and mAP50 by pycocotools on the peer's own predictions, categories matched by class name."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat = {n: i + 1 for i, n in enumerate(sorted(rupiah.CLASSES))}  # an id order of its own
    anns, results = [], []
    for i, t in enumerate(targets):
        for (x1, y1, x2, y2), c in zip(t.boxes.double().tolist(), t.labels.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat[rupiah.CLASSES[c]],
                         "iscrowd": 0, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    for i, r in enumerate(raw):
        for (x1, y1, x2, y2), s, c in zip(r.xyxy.double().tolist(), r.conf.double().tolist(), r.cls.tolist()):
            results.append({"image_id": i + 1, "category_id": cat[PEER_NAMES[int(c)]], "score": s,
                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i + 1, "width": 300, "height": 300} for i in range(len(targets))],
                      "annotations": anns, "categories": [{"id": v, "name": k} for k, v in cat.items()]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_converting_the_peer_predictions_loses_nothing(seed):
    targets, raw = _known_set(seed)
    table = P.class_table(PEER_NAMES, "fake.pt")
    dets = [P.peer_detections(r, table) for r in raw]
    assert sum(len(d.scores) for d in dets) == sum(len(r.conf) for r in raw)  # nothing dropped
    for d, r in zip(dets, raw):
        assert torch.equal(d.boxes, r.xyxy) and torch.equal(d.scores, r.conf)
    report = M.evaluate(dets, targets, rupiah.CLASSES, rupiah.LAYERS, max_dets=100)
    coco_map, coco_map50 = _pycocotools_on_peer(targets, raw)
    assert report.map == pytest.approx(coco_map, abs=1e-6) and report.map50 == pytest.approx(coco_map50, abs=1e-6)
    assert 0.05 < report.map50 < 0.95  # a set that tests something


def test_a_peer_with_other_classes_is_refused():
    with pytest.raises(P.BenchError, match="not rupiah.CLASSES"):
        P.class_table({0: "cat", 1: "dog"}, "fake.pt")


def test_ultralytics_matching_takes_pairs_by_iou_and_each_once():
    target = M.Targets(torch.tensor([[0.0, 0, 10, 10], [20.0, 0, 30, 10]]), torch.tensor([0, 0]))
    dets = M.Detections(torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 9], [20.0, 0, 30, 5.7], [40.0, 0, 50, 10]]),
                        torch.tensor([0.1, 0.9, 0.5, 0.8]), torch.tensor([0, 0, 0, 0]))
    tp = P.match_like_ultralytics(dets, target)
    # detection 0 (IoU 1) takes target 0 although detection 1 scores higher (COCO would give it to 1)
    assert tp[:, 0].tolist() == [True, False, True, False]
    assert tp[2].tolist() == [True, True] + [False] * 8  # IoU 0.57: a true positive at 0.5 and 0.55 only
    other_class = M.Detections(dets.boxes[:1], dets.scores[:1], torch.tensor([3]))
    assert not P.match_like_ultralytics(other_class, target).any()


def test_ultralytics_scores_hand_their_metric_the_matched_set():
    seen = {}

    def fake_ap_per_class(tp, conf, pred_cls, target_cls):
        seen.update(tp=tp, conf=conf, pred_cls=pred_cls, target_cls=target_cls)
        ap = np.tile(np.linspace(0.9, 0.45, 10), (2, 1))
        return None, None, None, None, None, ap, np.array([0, 3])

    targets, raw = _known_set(4, images=3)
    table = P.class_table(PEER_NAMES, "fake.pt")
    dets = [P.peer_detections(r, table) for r in raw]
    got = P.ultralytics_scores(dets, targets, ap_per_class=fake_ap_per_class)
    n = sum(len(d.scores) for d in dets)
    assert seen["tp"].shape == (n, 10) and seen["conf"].shape == (n,) and seen["pred_cls"].shape == (n,)
    assert seen["target_cls"].shape == (sum(len(t.labels) for t in targets),)
    assert got == pytest.approx({"mAP50": 0.9, "mAP50-95": 0.675})


def test_the_peer_trains_with_the_epochs_a_time_budget_user_leaves(tmp_path, monkeypatch):
    """``time=`` replans the epochs, but Ultralytics' optimizer ``auto`` is picked from them first: with 1,000
    epochs its 8.4 line picked MuSGD, 7x slower a step on a CPU than the AdamW a user giving ``time=`` gets."""
    calls = {}

    class FakeYOLO:
        def __init__(self, cfg):
            calls["cfg"] = cfg

        def add_callback(self, event, fn):
            calls["callback"] = event

        def train(self, **kwargs):
            calls["train"] = kwargs
            save = tmp_path / "train"
            (save / "weights").mkdir(parents=True)
            (save / "weights" / "best.pt").write_bytes(b"")
            self.trainer = SimpleNamespace(save_dir=str(save), epoch=5, optimizer=torch.optim.AdamW([torch.zeros(1)]))

    fake = SimpleNamespace(YOLO=FakeYOLO, settings=SimpleNamespace(update=lambda d: None))
    monkeypatch.setitem(sys.modules, "ultralytics", fake)
    facts = P.train_peer(tmp_path / "data.yaml", 256, 10.0, 16, "ram", tmp_path, lambda text: None)
    assert "epochs" not in calls["train"] and calls["train"]["time"] == pytest.approx(10 / 60)
    assert calls["train"]["pretrained"] is False and calls["cfg"] == "yolov8n.yaml"
    assert facts["optimizer"] == "AdamW" and facts["epochs"] == 6
