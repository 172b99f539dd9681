"""The detector recipe's factories and their wiring: data info filling the model, loss, evaluator and
callbacks; phased parameter groups; the YOLO loader on exported synthetic data; bad files counted."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest
import torch

from smartcash_fn.cli import main
from smartcash_fn.run import recipe as rc
from smartcash_fn.smartcash import scenes as rupiah
from smartcash_fn.run.build import OnDevice, build, filled_from, make_data, probe, to_device
from smartcash_fn.errors import DataError, RecipeError
from smartcash_fn.data import Finish, Start, epoch_data
from smartcash_fn.loop import fit
from smartcash_fn.replay import resume, verify
from smartcash_fn.smartcash.components import (DetectionLoss, Relabeled, detection, detection_metrics, detector,
                                     layer_order, rupiah_synthetic, yolo_dataset)
from smartcash_fn.smartcash.export import export_synthetic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "recipes" / "rupiah_synthetic.toml"
B4 = ROOT / "recipes" / "rupiah_efficientnet_b4.toml"
TINY = ROOT / "recipes" / "tiny.toml"
SMALL = ["data.params.train=8", "data.params.val=4", "data.params.size=64", "data.batch_size=4",
         "data.val_batch_size=4", "data.workers=0", "model.params.width=16", "model.params.backbone_width=8",
         "train.epochs=1", "schedule.warmup_steps=1"]
GROUPS = {"banknote": 7, "nominal": 7, "security": 3}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A small YOLO-format export of the synthetic scenes (10 scenes at 64 px: 7 train, 2 val, 1 test)."""
    return export_synthetic(tmp_path_factory.mktemp("yolo") / "rupiah", n=10, size=64, image_format="png")


# --------------------------------------------------------------------------- data factories


def test_synthetic_data_gives_scenes_and_the_info_the_other_factories_need():
    splits = rupiah_synthetic(train=6, val=3, size=64, seed=2)
    assert len(splits.train) == 6 and len(splits.val) == 3
    assert splits.train.split == "train" and splits.val.split == "val" and splits.train.seed == 2
    info = splits.info
    assert info["groups"] == GROUPS and info["image_size"] == 64
    assert info["class_names"] == rupiah.CLASSES and info["layers"]["security"] == ("l3_sign", "l3_text", "l3_thread")
    image, target = splits.val[1]
    assert image.shape == (3, 64, 64) and torch.equal(image, rupiah.render(2, "val", 1, 64)[0])
    images, targets, padded = info["collate_fn"]([splits.val[0], splits.val[1]])
    assert images.shape == (2, 3, 64, 64) and len(targets) == 2
    assert padded["labels"].shape[0] == 2  # the targets padded for the loss (detection_collate)


@pytest.mark.parametrize("kwargs, text", [
    ({"train": 0}, "train must be an integer >= 1"),
    ({"size": 16}, "size must be an integer >= 32"),
    ({"jitter": 2.0}, "jitter must be a number in [0, 1]"),
    ({"scenario": "foggy"}, "scenario 'foggy' is unknown"),
])
def test_synthetic_data_rejects_bad_arguments(kwargs, text):
    with pytest.raises(DataError, match=re.escape(text)):
        rupiah_synthetic(**kwargs)


def test_yolo_loader_reads_exported_synthetic_data(exported):
    splits = yolo_dataset(str(exported), size=64, augment=False)
    assert len(splits.train) == 7 and len(splits.val) == 2
    assert splits.info["groups"] == GROUPS and splits.info["class_names"] == rupiah.CLASSES
    assert splits.info["problems"] == ()
    image, target = splits.train[3]                     # the PNG export decodes to the rendered scene
    want_image, want = rupiah.render(0, "train", 3, 64)
    assert torch.equal(image, want_image)
    assert torch.equal(target["labels"], want["labels"])
    assert torch.allclose(target["boxes"], want["boxes"], atol=1e-3)


def test_yolo_loader_augments_deterministically_per_sample(exported):
    splits = yolo_dataset(str(exported), size=64, augment={"degrees": 10.0, "scale": [0.8, 1.2]})
    a = splits.train.sample(2, torch.Generator().manual_seed(5))
    b = splits.train.sample(2, torch.Generator().manual_seed(5))
    c = splits.train.sample(2, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert not torch.equal(a[0], c[0])
    with pytest.raises(DataError, match="augment: unknown key 'rotate'"):
        yolo_dataset(str(exported), size=64, augment={"rotate": 3})
    with pytest.raises(DataError, match="yolo_dataset: augment: scale must be two numbers 0 < low <= high"):
        yolo_dataset(str(exported), size=64, augment={"scale": [0, 1]})


def test_classes_listed_out_of_layer_order_are_relabelled():
    ordered, layers, table = layer_order(["l3_sign", "001", "l2_001", "002"])
    assert ordered == ("001", "002", "l2_001", "l3_sign") and table == (3, 0, 2, 1)
    assert list(layers.items()) == [("banknote", ("001", "002")), ("nominal", ("l2_001",)), ("security", ("l3_sign",))]
    ds = Relabeled([(torch.zeros(3, 4, 4), {"boxes": torch.zeros(2, 4), "labels": torch.tensor([0, 2])})], table)
    assert ds[0][1]["labels"].tolist() == [3, 2]


def test_a_bad_label_line_is_skipped_and_listed_or_fails_naming_file_and_line(exported, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(exported.parent, data)
    yaml = data / "data.yaml"
    yaml.write_text(yaml.read_text().replace(str(exported.parent), str(data)))
    bad = data / "labels" / "train" / "train_000001.txt"
    bad.write_text(bad.read_text() + "3 0.5 0.5\n")
    lines = len(bad.read_text().splitlines())
    splits = yolo_dataset(str(yaml), size=64, augment=False)
    assert len(splits.info["problems"]) == 1 and len(splits.train) == 7
    assert f"{bad}:{lines}: expected 5 fields" in str(splits.info["problems"][0])
    with pytest.raises(DataError, match=f"{bad}:{lines}: expected 5 fields"):
        yolo_dataset(str(yaml), size=64, on_bad="fail")
    with pytest.raises(DataError, match="no such data.yaml"):
        yolo_dataset(str(tmp_path / "nowhere" / "data.yaml"))


# --------------------------------------------------------------------------- model, loss, evaluator


def test_loss_factory_and_evaluator_work_on_a_batch():
    splits = rupiah_synthetic(train=2, val=2, size=64)
    model = detector(GROUPS, width=16, backbone_width=8)
    images, targets, padded = splits.info["collate_fn"]([splits.train[0], splits.train[1]])
    loss_fn = detection(GROUPS, image_size=64, box=0.05, obj=1.0, cls=0.5)
    assert isinstance(loss_fn, DetectionLoss)
    loss, parts = loss_fn(model, (images, targets, padded))
    assert torch.allclose(loss_fn(model, (images, targets))[0], loss)  # a list is padded by the loss itself
    assert loss.ndim == 0 and torch.isfinite(loss) and set(parts) == {"box", "obj", "cls"}
    with pytest.raises(DataError, match="box must be a weight >= 0"):
        detection(GROUPS, 64, box=-1.0)
    model.eval()
    for per_class in (False, True):
        ev = detection_metrics(GROUPS, rupiah.CLASSES, rupiah.LAYERS, per_class=per_class)
        with torch.no_grad():
            out = ev.finish(ev.update(ev.init(), model, (images, targets)))
        assert {"mAP50", "mAP50-95", "mAP50/banknote", "mAP50-95/security"} <= set(out)
        assert any(k.startswith("AP50/") for k in out) == per_class


def test_info_fills_factories_by_parameter_name():
    info = {"groups": GROUPS, "image_size": 64, "class_names": rupiah.CLASSES, "collate_fn": None}
    assert filled_from(detection, {"box": 0.1}, info) == {"groups": GROUPS, "image_size": 64}
    assert filled_from(detection, {"image_size": 32}, info) == {"groups": GROUPS}


# --------------------------------------------------------------------------- recipes


def test_default_recipe_builds_the_detector_from_the_data_info():
    recipe = rc.load(DEFAULT, sets=SMALL)
    built = build(recipe)
    model = built.template.model
    security = model.head["security"]  # the decoupled head: 4 sides x 17 distance bins (from -1 stride), 3 classes
    assert set(model.head) == set(GROUPS) and (security.box[0][-1].out_channels, security.cls[0][-1].out_channels) \
        == (4 * 17, 3)
    assert recipe.checkpoint.monitor == "val/mAP50-95" and recipe.checkpoint.mode == "max"
    assert "clip(max_norm=10.0)" in built.step_text and "make_step(task_aligned)" in built.step_text
    loss = probe(built)
    assert loss == loss and loss > 0


def test_default_recipe_monitors_map50_95_and_stops_early_on_it():
    recipe = rc.load(DEFAULT)
    assert recipe.model.use == "detector" and recipe.data.use == "rupiah_synthetic"
    stop = next(c for c in recipe.callbacks if c.use == "early_stopping")
    assert stop.params["monitor"] == "val/mAP50-95" and stop.params["mode"] == "max"
    assert any(c.use == "detection_plots" for c in recipe.callbacks)
    assert recipe.train.precision == "auto"  # bf16 where the CPU computes it natively: more epochs in the budget


def test_b4_recipe_has_smartcash_training(tmp_path):
    recipe = rc.load(B4)
    assert recipe.model.params["backbone"] == "efficientnet_b4" and recipe.data.params["size"] == 640
    assert recipe.optimizer.use == "adamw" and recipe.schedule.use == "cosine" and recipe.train.clip == 10.0
    assert recipe.train.loss_params == {"box": 0.05, "obj": 1.0, "cls": 0.5}
    stop = next(c for c in recipe.callbacks if c.use == "early_stopping")
    assert (stop.params["patience"], stop.params["min_delta"], stop.params["monitor"]) == (15, 0.001, "val/mAP50")
    backbone, neck, head = recipe.optimizer.groups
    assert (backbone.prefix, backbone.frozen_epochs, backbone.lr) == ("backbone.", 5, 5e-6)
    assert (head.prefix, head.lr, head.after_epochs, head.lr_after) == ("head.", 1e-3, 5, 1e-4)
    assert (neck.lr, neck.after_epochs, neck.lr_after) == (1e-3, 5, 1e-4)


def test_the_yolo_recipe_is_the_default_on_a_data_yaml_and_trains(exported, tmp_path, one_thread):
    default = rc.load(ROOT / "recipes" / "rupiah_synthetic.toml")
    mine = rc.load(ROOT / "recipes" / "rupiah_yolo.toml")
    assert mine.model == default.model
    assert mine.schedule == attrs.evolve(default.schedule, use="warmup_linear")   # the same warmup, a straight decay
    assert mine.optimizer == attrs.evolve(default.optimizer, lr=0.006) and default.optimizer.lr == 0.002
    assert (mine.train.max_time, mine.train.loss) == (default.train.max_time, default.train.loss)
    assert (mine.train.max_time, mine.train.loss) == (600, "task_aligned")
    assert mine.train.loss_params == {**default.train.loss_params, "cls": 1.0}
    assert mine.data.use == "yolo_dataset" and mine.data.params["size"] == 256
    assert (mine.data.plain_epochs, default.data.plain_epochs) == (4, 0)  # the default's scenes have no augmentation
    out = tmp_path / "run"
    sets = [f"data.params.data_yaml={exported}", *SMALL[2:]]  # 64 px, a narrow model, one epoch
    assert main(["train", "rupiah_yolo", "--quiet", "--out", str(out), *(a for kv in sets for a in ("--set", kv))]) == 0
    assert (out / "checkpoints" / "last.pt").is_file() and "val/mAP50" in (out / "metrics.csv").read_text()


def test_the_last_planned_epochs_train_unaugmented_and_a_resume_switches_where_the_run_did(exported, tmp_path,
                                                                                            one_thread):
    sets = [f"data.params.data_yaml={exported}", *SMALL[2:], "train.epochs=3", "loggers.tensorboard=false",
            "loggers.plots=false", "loggers.console=false"]
    plain = rc.load(ROOT / "recipes" / "rupiah_yolo.toml", sets=[*sets, "data.plain_epochs=1"])
    built = build(plain, tmp_path / "run", quiet=True)
    assert isinstance(built.loop.data, Finish) and built.loop.data.epochs == 1
    assert built.loop.data.data.dataset.augment is not None and built.loop.data.last.dataset.augment is None
    assert "data: the last 1 epoch planned train without augmentation" in built.notes
    full = fit(built.template, built.loop)
    assert full.callbacks["time_budget"]["epochs"] == 3  # the budget planned all three: the third is plain
    # without the key the first two epochs are the same bits, the third is not
    other = build(rc.load(ROOT / "recipes" / "rupiah_yolo.toml", sets=[*sets, "data.plain_epochs=0"]),
                  tmp_path / "other", quiet=True)
    augmented = fit(other.template, other.loop)
    losses = [[e["train/loss"] for e in s.history.epochs] for s in (full, augmented)]
    assert losses[0][:2] == losses[1][:2] and losses[0][2] != losses[1][2], losses
    # resumed from the second epoch's checkpoint it trains the third on the plain samples again: the same bits
    again = build(plain, tmp_path / "again", quiet=True)
    resumed = resume(tmp_path / "run" / "checkpoints" / "epoch-0002.pt", again.loop, like=again.template)
    assert verify(resumed, full) is None, verify(resumed, full)


def test_the_first_planned_epochs_train_small_and_a_resume_switches_where_the_run_did(exported, tmp_path,
                                                                                      one_thread):
    sets = [f"data.params.data_yaml={exported}", *SMALL[2:], "train.epochs=3", "data.plain_epochs=1",
            "loggers.tensorboard=false", "loggers.plots=false", "loggers.console=false"]
    small = rc.load(ROOT / "recipes" / "rupiah_yolo.toml", sets=[*sets, "data.small_size=32", "data.small_share=0.3"])
    built = build(small, tmp_path / "run", quiet=True)
    data = built.loop.data
    assert isinstance(data, Finish) and isinstance(data.data, Start) and data.data.cost == 0.25  # (32 / 64)²
    assert (data.data.first.dataset.size, data.data.data.dataset.size, data.last.dataset.size) == (32, 64, 64)
    assert "data: the first 30% of the epochs planned train on 32-px images" in built.notes
    sizes = [next(iter(epoch_data(data, e, 3).batches(0, e)))[0].shape[-1] for e in range(3)]
    assert sizes == [32, 64, 64]  # epoch 0 small; 1 at the data's size, augmented; 2 plain
    full = fit(built.template, built.loop)
    assert full.callbacks["time_budget"]["epochs"] == 3
    # resumed from the first epoch's checkpoint it trains the rest at 64 px again: the same bits
    again = build(small, tmp_path / "again", quiet=True)
    resumed = resume(tmp_path / "run" / "checkpoints" / "epoch-0001.pt", again.loop, like=again.template)
    assert verify(resumed, full) is None, verify(resumed, full)
    # the keys' bad values are refused naming them
    for bad, key in ((["data.small_size=64"], "small_size.*not smaller than the data's image size 64"),
                     (["data.small_size=32", "data.small_share=0"], "small_share.*0 trains no epoch small")):
        with pytest.raises(RecipeError, match=rf"data\.{key}"):
            build(rc.load(ROOT / "recipes" / "rupiah_yolo.toml", sets=[*sets, *bad]), None, quiet=True)
    with pytest.raises(RecipeError, match=r"data\.small_size.*has no image size"):
        build(rc.load(TINY, sets=["data.small_size=8"]), None, quiet=True)


def test_plain_epochs_of_data_without_augmentation_is_refused_naming_the_key(tmp_path):
    with pytest.raises(RecipeError, match=r"data\.plain_epochs.*cannot take the augmentation off a tuple"):
        build(rc.load(TINY, sets=["data.plain_epochs=1"]), None, quiet=True)


PHASED = """
extends = "{tiny}"
[optimizer]
lr = 0.01
[[optimizer.groups]]
prefix = "0."
frozen_epochs = 1
lr = 0.001
[[optimizer.groups]]
prefix = "2."
lr = 0.01
after_epochs = 1
lr_after = 0.001
[train]
epochs = 2
[schedule]
use = "constant"
warmup_steps = 0
"""


def test_phased_groups_freeze_then_train_and_switch_lr_after_the_epochs(tmp_path):
    import attrs

    path = tmp_path / "phased.toml"
    path.write_text(PHASED.format(tiny=TINY.as_posix()))
    built = build(rc.load(path, sets=["callbacks=[]", "loggers.console=false"]))
    template, at = built.template, built.batches                    # one epoch of updates
    one = fit(template, attrs.evolve(built.loop, epochs=1))
    assert torch.equal(one.params["0.weight"], template.params["0.weight"])        # frozen in epoch 1
    assert not torch.equal(one.params["2.weight"], template.params["2.weight"])
    two = fit(template, built.loop)
    assert not torch.equal(two.params["0.weight"], one.params["0.weight"])          # trains in epoch 2
    opt, params = template.optimizer, template.params
    state = opt.init(params)
    assert opt.lrs(state)["2"] == pytest.approx(0.01) and not opt.trains_in(state)("0.weight")
    zeros = {k: torch.zeros_like(v) for k, v in params.items() if not k.startswith("0.")}
    for _ in range(at):
        params, state = opt.update(zeros, state, params)
    assert opt.trains_in(state)("0.weight")                                         # the switch is due
    params, state = opt.update({k: torch.zeros_like(v) for k, v in params.items()}, state, params)
    lrs = opt.lrs(state)
    assert lrs["2"] == pytest.approx(0.001) and lrs["0"] == pytest.approx(0.001) and lrs["default"] == 0.01


@pytest.mark.parametrize("group, text", [
    ('prefix = "2."\nlr_after = 0.1\n', "optimizer.groups[0].after_epochs: after_epochs and lr_after go together"),
    ('prefix = "2."\nafter_epochs = 2\n', "optimizer.groups[0].lr_after: after_epochs and lr_after go together"),
    ('prefix = "2."\nfrozen = true\nfrozen_epochs = 2\n', "optimizer.groups[0].frozen: a frozen group takes no lr"),
    ('prefix = "2."\nfrozen_epochs = 1\nafter_epochs = 2\nlr_after = 0.1\n',
     "optimizer.groups[0].after_epochs: give frozen_epochs or after_epochs, not both"),
])
def test_phased_groups_reject_inconsistent_keys(tmp_path, group, text):
    path = tmp_path / "bad.toml"
    path.write_text(f'extends = "{TINY.as_posix()}"\n[[optimizer.groups]]\n{group}')
    with pytest.raises(RecipeError, match=re.escape(text)):
        build(rc.load(path))


def test_batches_move_to_the_recipe_device():
    batch = (torch.zeros(2, 3), [{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.int64)}], "x")
    moved = to_device(batch, "meta")
    assert moved[0].device.type == "meta" and moved[1][0]["boxes"].device.type == "meta" and moved[2] == "x"
    data = OnDevice(make_data(rc.load(TINY))[0], "meta")
    assert len(data) == 8 and next(iter(data.batches(0, 0)))[0].device.type == "meta"
    tiny = make_data(rc.load(TINY))[0]
    on = OnDevice(Finish(tiny, attrs.evolve(tiny, shuffle=False), 1), "meta")  # a wrapper passes the plan on
    assert on.for_epoch(7, 8).data.shuffle is False and on.for_epoch(6, 8).data.shuffle is True
    if not torch.cuda.is_available():
        with pytest.raises(RecipeError, match=r"run.device: CUDA is not available here"):
            build(rc.load(TINY, sets=["run.device=cuda"]))
    with pytest.raises(RecipeError, match=r"run.device: not a device"):
        build(rc.load(TINY, sets=["run.device=toaster"]))


def test_skipped_bad_files_are_counted_in_the_run_summary(exported, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(exported.parent, data)
    yaml = data / "data.yaml"
    yaml.write_text(yaml.read_text().replace(str(exported.parent), str(data)))
    (data / "labels" / "val" / "val_000000.txt").write_text("0 0.5 0.5 2.0 0.3\n")       # box outside the image
    (data / "labels" / "train" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")         # label without an image
    recipe = rc.load(DEFAULT, sets=SMALL + ["data.use=yolo_dataset", f"data.params={{data_yaml = '{yaml}', "
                                                                      "size = 64, augment = false}",
                                            "loggers.tensorboard=false", "loggers.plots=false",
                                            "loggers.console=false", "callbacks=[]"])
    run = tmp_path / "run"
    built = build(recipe, run)
    assert any("2 bad files or label lines skipped" in n for n in built.notes)
    fit(built.template, built.loop)
    summary = (run / "summary.md").read_text()
    assert "## Data" in summary and "2 data problems (bad files or label lines skipped, label files missing)" in summary
    listed = (run / "data-problems.txt").read_text().splitlines()
    assert len(listed) == 2 and any("orphan.txt" in line and "missing image" in line for line in listed)
    assert any("val_000000.txt:1: box outside the image" in line for line in listed)


def test_plot_pieces_draw_boxes_and_make_figures():
    from smartcash_fn.smartcash.plots import draw_boxes, report_figures, samples_figure
    from smartcash_fn.smartcash.metrics import Detections, evaluate

    image = torch.zeros(3, 32, 32)
    truth = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "labels": torch.tensor([0])}
    dets = Detections(torch.tensor([[5.0, 5.0, 21.0, 21.0], [0.0, 0.0, 8.0, 8.0]]), torch.tensor([0.9, 0.1]),
                      torch.tensor([0, 15]))
    drawn = draw_boxes(image, dets, truth, rupiah.CLASSES, rupiah.LAYERS, conf=0.25, scale=2)
    assert drawn.dtype == torch.uint8 and drawn.shape == (3, 64, 64)
    assert drawn[:, 8, 20].tolist() == [255, 255, 255]                 # the true box's top edge, scaled 2x
    assert drawn[:, 10, 30].tolist() == [255, 59, 48]                  # the banknote prediction, red
    assert drawn[:, 1, 1].tolist() == [0, 0, 0]                        # the low-score prediction is not drawn
    fig = samples_figure([drawn, drawn, drawn])
    assert len(fig.axes) == 3
    report = evaluate([dets], [truth], rupiah.CLASSES, rupiah.LAYERS)
    names = [n for n, _ in report_figures(report)]
    assert names == ["pr_curves", "f1_curve", "p_curve", "r_curve", "confusion_matrix"]


def test_box_labels_are_readable_text_on_a_filled_background():
    from smartcash_fn.smartcash.metrics import Detections
    from smartcash_fn.smartcash.plots import draw_boxes, label_size

    image = torch.full((3, 256, 256), 0.5)
    dets = Detections(torch.tensor([[60.0, 120.0, 200.0, 220.0]]), torch.tensor([0.9]), torch.tensor([0]))
    drawn = draw_boxes(image, dets, None, rupiah.CLASSES, rupiah.LAYERS, conf=0.25)
    band = drawn[:, 122:135, 62:112]                                     # the label: inside the box's top left
    red = ((band[0] == 255) & (band[1] == 59) & (band[2] == 48)).sum()   # its background, the layer's colour
    light = (band > 200).all(0).sum()                                    # its white text
    assert red > band[0].numel() // 4 and light > 40
    assert label_size((640, 640)) == 16 and label_size((64, 64)) == 10


def test_a_detection_run_ends_with_the_per_class_table_on_the_console_and_in_the_summary(tmp_path):
    import io

    from conftest import end_table
    from smartcash_fn.report.console import console_logging

    recipe = rc.load(DEFAULT, sets=SMALL + ["loggers.tensorboard=false", "loggers.plots=false",
                                            "callbacks=[{use = 'detection_table'}]"])
    run = tmp_path / "run"
    built = build(recipe, run)
    said = io.StringIO()
    with console_logging(said):
        fit(built.template, built.loop)
    assert "\nfinished 1 epoch (2 steps) in " in said.getvalue()
    end_table(said.getvalue(), 4, (run / "summary.md").read_text())


def test_the_end_table_and_the_end_plots_share_one_pass_over_the_validation_data(tmp_path):
    import attrs

    from smartcash_fn.smartcash.components import Decoder
    from smartcash_fn.smartcash.detection import Layout
    from smartcash_fn.smartcash.plots import detection_plots
    from smartcash_fn.smartcash.table import detection_table, final_detections

    recipe = rc.load(DEFAULT, sets=SMALL + ["loggers.tensorboard=false", "loggers.plots=false", "callbacks=[]"])
    run = tmp_path / "run"
    built = build(recipe, run)
    val, info = built.loop.validation.data, built.template.data_info
    passes = []

    class Counted:
        """The validation data, counting the passes over it."""

        def __len__(self):
            return len(val)

        def batches(self, *args):
            passes.append(args)
            return val.batches(*args)

    counted = Counted()
    decoder = Decoder(Layout.of(info["groups"]))
    first = final_detections(built.template, counted, decoder)
    assert final_detections(built.template, counted, decoder) is first and len(passes) == 1
    final_detections(built.template, counted, Decoder(Layout.of(info["groups"]), conf=0.5))
    assert len(passes) == 2  # another decoder, another pass
    # a whole run: the table and the plots at its end run the model over the validation data once
    ends = (*detection_table(counted, info["groups"], info["class_names"], info.get("layers")),
            *detection_plots(run, counted, info["groups"], info["class_names"], info.get("layers"), samples=0,
                             tensorboard=False))
    passes.clear()
    fit(built.template, attrs.evolve(built.loop, callbacks=built.loop.callbacks + ends))
    assert len(passes) == 1 and (run / "plots" / "pr_curves.png").is_file()
