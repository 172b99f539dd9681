"""The detector on the command line, run as real subprocesses: train, eval, predict, data export-synthetic.

A short training run of the default recipe (tiny sizes through ``--set``)
beats the untrained model's mAP by a clear margin on the scenes it trained
on, both measured by ``smartcash-fn eval``; predictions are drawn and written as JSON; the YOLO
loader trains on an exported synthetic dataset (the EfficientNet-B4 recipe,
one step); bad input exits 2 naming the file and line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import end_table
from smartcash_fn import checkpoint
from smartcash_fn.run import recipe as rc
from smartcash_fn.smartcash import scenes as rupiah
from smartcash_fn.run.build import build

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "recipes" / "rupiah_synthetic.toml"
B4 = ROOT / "recipes" / "rupiah_efficientnet_b4.toml"
TINY_RUN = ["--set", "data.params.train=16", "--set", "data.params.val=8", "--set", "data.params.size=128",
            "--set", "data.batch_size=16", "--set", "data.val_batch_size=16", "--set", "data.workers=0",
            "--set", "model.params.width=32", "--set", "model.params.backbone_width=8",
            "--set", "train.epochs=100", "--set", "validation.every=25", "--set", "schedule.warmup_steps=5",
            "--set", "loggers.tensorboard=false"]
"""The default recipe shrunk to a 30-second run: 16 scenes at 128 px, 100 full-batch epochs."""


def cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "smartcash_fn", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out


def user_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: ")
    return out.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run of the default recipe at tiny sizes (:data:`TINY_RUN`) and an untrained checkpoint beside it."""
    work = tmp_path_factory.mktemp("detector")
    out = ok(cli("train", *TINY_RUN, "--out", "runs/tiny", cwd=work))
    (work / "train.out").write_text(out.stdout)
    (work / "train.err").write_text(out.stderr)
    recipe = rc.load(DEFAULT, sets=TINY_RUN[1::2])
    untrained = work / "untrained" / "untrained.pt"
    untrained.parent.mkdir()
    checkpoint.save(build(recipe).template, untrained)
    return work


@pytest.mark.slow
def test_training_beats_the_untrained_model_by_a_clear_margin(trained):
    """Measured on the 16 scenes it trained on: telling 17 classes apart on unseen scenes takes minutes, not seconds."""
    run = trained / "runs" / "tiny"
    assert (run / "checkpoints" / "best.pt").is_file()
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum("val/mAP50" in json.dumps(h) for h in history) == 4, "validated every 25 epochs"
    for name in ("pr_curves", "confusion_matrix", "val_samples", "curves"):  # curves.png: every metric's panel
        assert (run / "plots" / f"{name}.png").stat().st_size > 1000
    for name, ckpt in (("trained", run / "checkpoints" / "last.pt"), ("untrained", trained / "untrained" / "untrained.pt")):
        ok(cli("eval", str(ckpt), "--split", "train", "--n", "16", "--json", f"{name}.json", cwd=trained))
    got = json.loads((trained / "trained.json").read_text())
    base = json.loads((trained / "untrained.json").read_text())
    assert got["images"] == base["images"] == 16 and got["split"] == "train"
    assert base["overall"]["mAP50"] < 0.02
    assert got["overall"]["mAP50"] > base["overall"]["mAP50"] + 0.4, (got["overall"], base["overall"])
    assert got["overall"]["mAP50-95"] > base["overall"]["mAP50-95"] + 0.2
    for layer in ("banknote", "nominal", "security"):
        assert got["layers"][layer]["mAP50"] > base["layers"][layer]["mAP50"] + 0.2, layer


@pytest.mark.slow
def test_the_run_ends_with_evals_per_class_table_on_the_console_and_in_the_summary(trained):
    run = trained / "runs" / "tiny"
    out, err = (trained / "train.out").read_text(), (trained / "train.err").read_text()
    assert out == ""                                            # a run's facts and tables go to stderr
    table = end_table(err, 8, (run / "summary.md").read_text())
    # the same table `eval` prints for the params the run ended with, on the same validation scenes
    ended = "final.pt" if "restored the params of epoch" in err else "last.pt"
    said = ok(cli("eval", str(run / "checkpoints" / ended), "--n", "8", "--json", "ended.json", cwd=trained)).stdout
    assert table in said
    # the epoch table: a header, then a row per epoch, narrow; validation's columns from its first epoch (25)
    epoch_rows = [ln for ln in err.splitlines() if ln.split("/")[0].isdigit() and "/100 " in ln]
    assert len(epoch_rows) == 100 and max(len(ln) for ln in err.splitlines() if ln in epoch_rows) <= 120
    headers = [ln for ln in err.splitlines() if ln.startswith("epoch  ")]
    assert headers[0].split() == ["epoch", "train/loss", "took", "ETA"]
    # the monitored metric (the recipe's val/mAP50-95) first, with its best, then the other quality metric
    assert headers[1].split()[:4] == ["epoch", "train/loss", "val/mAP50-95", "val/mAP50"] and len(headers) == 2
    assert "(best " in epoch_rows[24] and "(best " not in epoch_rows[23]


@pytest.mark.slow
def test_eval_prints_tables_and_writes_json_per_class_layer_and_scenario(trained):
    run = trained / "runs" / "tiny"
    out = ok(cli("eval", str(run), "--scenario", "low_light", "--n", "10", cwd=trained))       # its best.pt
    assert "scenario" in out.stdout and "low_light" in out.stdout and "ms per image" in out.stdout
    report = json.loads((run / "eval-val-low_light.json").read_text())
    assert report["checkpoint"].endswith("best.pt") and report["images"] == 10 and report["split"] == "val"
    assert set(report["overall"]) >= {"precision", "recall", "F1", "mAP50", "mAP50-95"}
    assert set(report["layers"]) == {"banknote", "nominal", "security"}
    assert set(report["classes"]) == set(rupiah.CLASSES) and report["classes"]["l3_text"]["layer"] == "security"
    assert list(report["scenarios"]) == ["low_light"] and report["scenarios"]["low_light"]["images"] == 10
    assert report["inference_ms_per_image"] > 0
    # the boxes apart from the classes: each layer one class, so at least as many hits as by class
    boxes = report["boxes_by_layer"]
    assert set(boxes["layers"]) == {"banknote", "nominal", "security"} and "boxes by layer" in out.stdout
    for layer, row in boxes["layers"].items():
        assert row["gt"] == report["layers"][layer]["gt"] and row["dets"] <= report["layers"][layer]["dets"]
    ok(cli("eval", str(run), "--split", "test", "--n", "15", "--json", "test.json", cwd=trained))
    mixed = json.loads((trained / "test.json").read_text())
    assert mixed["split"] == "test" and sum(s["images"] for s in mixed["scenarios"].values()) == 15


@pytest.mark.slow
def test_predict_draws_boxes_and_writes_detections(trained, tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        image = rupiah.scene(0, "train", i, 128).image           # scenes the model trained on
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(photos / f"note{i}.png")
    single = tmp_path / "single.jpg"                               # another size than the model's input
    Image.fromarray(rupiah.scene(0, "train", 5, 160).image.permute(1, 2, 0).numpy()).save(single)
    out = ok(cli("predict", str(trained / "runs" / "tiny" / "checkpoints" / "last.pt"), str(photos), str(single),
                 "--out", str(tmp_path / "pred"), "--conf", "0.05", cwd=trained))
    assert out.stdout.count("detection(s)") == 3
    found = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert [Path(r["image"]).name for r in found["images"]] == ["note0.png", "note1.png", "single.jpg"]
    for r in found["images"]:
        drawn = Image.open(r["output"])
        assert drawn.size == (r["width"], r["height"])
        for d in r["detections"]:
            assert d["class"] in rupiah.CLASSES and d["score"] >= 0.05
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= r["width"] and 0 <= y1 <= y2 <= r["height"]
    assert sum(len(r["detections"]) for r in found["images"]) > 0


@pytest.mark.slow
def test_export_then_train_the_b4_recipe_one_step_on_it(tmp_path):
    out = ok(cli("data", "export-synthetic", "--out", "data", "--n", "3", "--size", "64", "--quiet", cwd=tmp_path))
    yaml = tmp_path / "data" / "data.yaml"
    assert yaml.is_file() and "data.yaml" in out.stdout
    assert len(list((tmp_path / "data" / "images" / "train").iterdir())) == 2
    sets = ["run.device=cpu", f"data.params.data_yaml={yaml}", "data.params.size=64", "data.batch_size=2",
            "data.val_batch_size=2", "data.workers=0", "train.epochs=1", "model.params.width=16",
            "loggers.tensorboard=false", "loggers.plots=false", "loggers.console=false", "callbacks=[]"]
    out = ok(cli("train", str(B4), *[a for s in sets for a in ("--set", s)], "--out", "b4", cwd=tmp_path))
    assert "1 epoch of 1 batch -> b4" in out.stderr
    state = checkpoint.read(tmp_path / "b4" / "checkpoints" / "last.pt")["state"]
    assert state["progress"]["step"] == 1 and "val/mAP50" in state["history"]["epochs"][0]
    assert state["opt_state"]["backbone"]["phase"] == 0                 # the backbone is still frozen


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """``smartcash-fn ARGS`` in this process (no interpreter start-up): exit status, stdout, stderr."""
    from smartcash_fn.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(capsys, *args: str) -> str:
    code, _, err = run_main(capsys, *args)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, (code, err)
    return err


def test_bad_data_input_exits_2_naming_the_file_and_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = refused(capsys, "train", str(DEFAULT), "--set", "data.use=yolo_dataset",
                  "--set", "data.params={data_yaml = 'missing/data.yaml'}")
    assert ("--set data.params={data_yaml = 'missing/data.yaml'}: data.params.data_yaml: yolo_dataset: "
            "missing/data.yaml: no such data.yaml") in err                  # the key that names the file
    code, out, _ = run_main(capsys, "data", "export-synthetic", "--out", "data", "--n", "4", "--size", "64")
    assert code == 0 and "4/4 scenes" in out
    label = tmp_path / "data" / "labels" / "train" / "train_000001.txt"
    label.write_text(label.read_text() + "2 0.5 0.5 0.1 zero\n")
    line = len(label.read_text().splitlines())
    err = refused(capsys, "train", str(DEFAULT), "--set", "data.use=yolo_dataset",
                  "--set", "data.params={data_yaml = 'data/data.yaml', size = 64, on_bad = 'fail'}")
    assert f"{label}:{line}: not numbers" in err
    assert not (tmp_path / "runs").exists()
    assert "data: folder exists and is not empty" in refused(capsys, "data", "export-synthetic", "--out", "data",
                                                              "--n", "4")
    assert "n must be an integer >= 1" in refused(capsys, "data", "export-synthetic", "--out", "d2", "--n", "0")


def test_eval_and_predict_refuse_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert "no such checkpoint file or run folder" in refused(capsys, "eval", "nowhere.pt")
    recipe = rc.load(DEFAULT, sets=["data.params.size=64", "model.params.width=16", "model.params.backbone_width=8"])
    ckpt = tmp_path / "x.pt"
    checkpoint.save(build(recipe).template, ckpt)
    assert "scenario 'fog' is unknown" in refused(capsys, "eval", str(ckpt), "--scenario", "fog")
    assert "no such data.yaml" in refused(capsys, "eval", str(ckpt), "--data", "none/data.yaml")
    assert "no_such.jpg: no such image file or folder" in refused(capsys, "predict", str(ckpt), "no_such.jpg",
                                                                   "--out", "p")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert "broken.png: unreadable image" in refused(capsys, "predict", str(ckpt), "broken.png", "--out", "p")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "detections.json").write_text("{}")
    assert "not empty" in refused(capsys, "predict", str(ckpt), "broken.png", "--out", "done")   # kept as it was
    assert (tmp_path / "done" / "detections.json").read_text() == "{}"


def test_eval_on_a_yolo_dataset_and_a_dataset_that_does_not_fit(tmp_path, monkeypatch, capsys):
    from smartcash_fn.smartcash.export import export_synthetic

    monkeypatch.chdir(tmp_path)
    yaml = export_synthetic(tmp_path / "data", n=6, size=64, image_format="png")
    recipe = rc.load(DEFAULT, sets=["data.params.size=64", "model.params.width=16", "model.params.backbone_width=8"])
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    checkpoint.save(build(recipe).template, run / "last.pt")
    code, out, _ = run_main(capsys, "eval", str(tmp_path / "run"), "--data", str(yaml), "--split", "test")
    assert code == 0 and "data.yaml test split: 1 images" in out
    report = json.loads((tmp_path / "run" / "eval-test.json").read_text())
    assert report["images"] == 1 and report["scenarios"] == {} and set(report["layers"]) == {"banknote", "nominal",
                                                                                             "security"}
    assert "--scenario low_light: scenarios are the synthetic data's" in refused(
        capsys, "eval", str(tmp_path / "run"), "--data", str(yaml), "--scenario", "low_light")
    three = tmp_path / "three.yaml"
    three.write_text(yaml.read_text().replace("nc: 17", "nc: 3").split("names:")[0] + "names: ['001', '002', '005']\n")
    err = refused(capsys, "eval", str(tmp_path / "run"), "--data", str(three))
    assert "does not fit the model" in err and "three.yaml has 3 classes" in err


def test_tensorboard_off_in_the_loggers_means_no_event_files_from_the_detection_plots_either(trained):
    run = trained / "runs" / "tiny"  # TINY_RUN sets loggers.tensorboard = false; the recipe keeps detection_plots
    assert (run / "plots" / "confusion_matrix.png").is_file() and (run / "plots" / "pr_curves.png").is_file()
    assert not (run / "tensorboard").exists()
