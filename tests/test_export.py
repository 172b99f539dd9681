"""Exporting a checkpoint's model: weights, TorchScript and ONNX give the checkpoint's outputs; every run
leaves a slim weights file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from smartcash_fn import checkpoint
from smartcash_fn.cli import EXPORT_FORMATS, main
from smartcash_fn.run import export as ex
from smartcash_fn.run.build import build
from smartcash_fn.run.commands import DEFAULT_RECIPE
from smartcash_fn.run.folders import find_checkpoint
from smartcash_fn.run.recipe import load

REPO = Path(__file__).resolve().parents[1]
DETECTOR = ["data.params.train=4", "data.params.val=2", "data.params.size=64", "data.batch_size=2",
            "data.val_batch_size=2", "schedule.warmup_steps=1", "train.epochs=1"]


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory, one_thread):
    """A detector checkpoint (the default recipe at 64 px, untrained weights: the round trip is what counts)."""
    run = tmp_path_factory.mktemp("det")
    built = build(load(DEFAULT_RECIPE, sets=DETECTOR), quiet=True)
    checkpoint.save(built.template, run / "checkpoints" / "best.pt")
    return run


def test_the_cli_offers_the_formats_export_writes():
    assert EXPORT_FORMATS == ex.FORMATS


@pytest.mark.parametrize("fmt", ["weights", "torchscript"])
def test_detector_export_reproduces_the_checkpoint(detector_run, fmt, tmp_path):
    found = find_checkpoint(detector_run, prefer=("best", "last"))
    built = build(load(DEFAULT_RECIPE, sets=DETECTOR), quiet=True)
    done = ex.export(found, built, fmt, tmp_path)
    assert done.checked and done.max_diff <= 1e-5 and done.path.is_file()
    meta = json.loads(done.meta_path.read_text())
    assert meta["outputs"][0] == "banknote.0" and len(meta["outputs"]) == 9
    assert meta["class_names"][:2] == ["001", "002"] and meta["image_size"] == 64
    assert meta["decoding"] == {"conf": 0.001, "iou": 0.6, "max_det": 100}
    images = torch.rand(2, 3, 64, 64)  # another batch size than the example: the batch axis is free
    state = built.template
    want = ex.Flat(ex.model_of(state)).eval()(images)
    if fmt == "torchscript":
        got = torch.jit.load(str(done.path))(images)
    else:
        model = ex.model_of(state)
        model.load_state_dict(torch.load(done.path, weights_only=True)["state_dict"])
        got = ex.Flat(model).eval()(images)
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))


def test_onnx_export_runs_in_onnxruntime(detector_run, tmp_path):
    pytest.importorskip("onnxruntime")
    found = find_checkpoint(detector_run)
    done = ex.export(found, build(load(DEFAULT_RECIPE, sets=DETECTOR), quiet=True), "onnx", tmp_path)
    assert done.checked and done.max_diff <= 1e-4


def test_export_command_writes_beside_the_run_and_every_run_leaves_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(REPO / "recipes" / "tiny.toml"), "--out", "run", "--quiet"]) == 0
    weights = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    ckpts = tmp_path / "run" / "checkpoints"
    final = checkpoint.read(ckpts / "final.pt" if (ckpts / "final.pt").exists() else ckpts / "last.pt")["state"]
    assert set(weights["state_dict"]) == set(final["params"]) | set(final["buffers"])
    assert all(torch.equal(weights["state_dict"][k], v) for k, v in final["params"].items())
    assert weights["data_info"] == {"in_features": 8, "classes": 3}
    capsys.readouterr()
    assert main(["export", "run", "--format", "torchscript"]) == 0
    out = capsys.readouterr().out
    assert "checked" in out and (tmp_path / "run" / "export" / "model.torchscript.pt").is_file()
    assert main(["export", "run", "--format", "pickle"]) == 2
