"""Every bad input is one ``error:`` line naming the file and key (or the path) and exit 2, never a traceback.

Each case is a real ``python -m smartcash_fn`` subprocess, ``check`` where
that is enough; a writer that cannot write (a full disk) no longer keeps the
checkpoint from being written.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import save_redigested
from smartcash_fn import checkpoint
from smartcash_fn.callbacks import checkpointing
from smartcash_fn.errors import OutputError
from smartcash_fn.events import writer
from smartcash_fn.loop import fit
from smartcash_fn.run import recipe as rc
from smartcash_fn.run.build import build

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"
SMALL = ["train.epochs=2", "schedule.warmup_steps=1", "data.params.samples=64", "data.params.val_samples=32",
         "loggers.tensorboard=false", "loggers.plots=false", "loggers.console=false"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "smartcash_fn", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def with_state(src: Path, dst: Path, **changes) -> Path:
    """A copy of checkpoint ``src`` with state keys replaced and the digest recomputed (digest-valid, malformed)."""
    obj = torch.load(src, weights_only=True)
    obj["state"].update(changes)
    return save_redigested(obj, dst)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("bad") / "run"
    built = build(rc.load(TINY, SMALL), run, quiet=True)
    fit(built.template, built.loop)
    return run / "checkpoints" / "epoch-0001.pt"


BIG = 2**63
CASES = {
    "out_in_proc": (["check", "r.toml", "--set", 'run.out="/proc/x"'], "run.out: /proc/x/r is inside /proc"),
    "out_a_file": (["check", "r.toml", "--set", 'run.out="afile"'], "is a file, so afile/r cannot be made"),
    "out_flag_in_proc": (["train", "r.toml", "--out", "/proc/x", "--quiet"], "error: --out /proc/x: /proc/x is "
                                                                              "inside /proc"),
    "epochs_2_63": (["check", "r.toml", "--set", f"train.epochs={BIG}"], "train.epochs: expected an integer, got "
                                                                         f"{BIG}, which does not fit in 64 bits"),
    "seed_2_63": (["check", "seed.toml"], f"error: seed.toml: run.seed: expected an integer, got {BIG}"),
    "samples_1e15": (["check", "r.toml", "--set", "data.params.samples=1e15"],
                     "error: --set data.params.samples=1e15: data.params.samples: synthetic: samples must be an "
                     "integer > 0, got 1000000000000000.0"),
    "samples_10_15": (["check", "r.toml", "--set", "data.params.samples=1000000000000000"],
                      "r.toml: data.use: synthetic: its parameters ask for more memory"),
    "hidden_1e14": (["check", "r.toml", "--set", "model.params.hidden=[100000000000000]"],
                    "r.toml: model.use: mlp: its parameters ask for more memory"),
    "deep_toml": (["check", "deep.toml"], "error: deep.toml: invalid TOML: arrays or tables nested too deep"),
    "lr_1e308": (["check", "r.toml", "--set", "optimizer.lr=1e308"], "optimizer.lr: expected a learning rate in "
                                                                     "[0, 1000], got 1e+308"),
    "progress_malformed": (["inspect", "CKPT_NO_STEP"], "the checkpoint's state is malformed (progress: expected "
                                                        "{epoch, step, batch}"),
    "progress_negative": (["resume", "CKPT_NEGATIVE", "--quiet"], "progress.step: expected an integer >= 0, got -7"),
    "progress_past_epoch": (["resume", "CKPT_PAST", "--quiet"], "progress.batch is 99, but an epoch of this recipe "
                                                                "has 2 batches"),
    # each error names the place the user wrote: the --set argument, the dotted key, the name as written
    "set_unknown_section": (["check", "r.toml", "--set", "trian.epochs=3"],
                            "error: --set trian.epochs=3: trian: unknown section; did you mean 'train'?"),
    "set_bad_model_param": (["check", "r.toml", "--set", 'model.params.hidden=[32,"a"]'],
                            'error: --set model.params.hidden=[32,"a"]: model.params.hidden: mlp: hidden must be an '
                            "array of integers > 0, got [32, 'a']"),
    "set_data_param_typo": (["check", "r.toml", "--set", "data.params.sizee=64"],
                            "error: --set data.params.sizee=64: data.params.sizee: synthetic takes no parameter "
                            "'sizee'"),
    "warmup_past_the_run": (["check", "r.toml", "--set", "schedule.warmup_steps=100"],
                            "error: --set schedule.warmup_steps=100: schedule.warmup_steps: warmup_cosine: "
                            "warmup_steps must be < total_steps"),
    "optimizer_key_value": (["check", "r.toml", "--set", "optimizer.betas=[0.9, 2.0]"],
                            "error: --set optimizer.betas=[0.9, 2.0]: optimizer.betas: adamw: betas[1] must be"),
    "yolo_without_data_yaml": (["check", "yolo.toml"], "error: yolo.toml: data.params.data_yaml: required by "
                                                       "yolo_dataset; add it to the recipe"),
    "yolo_data_yaml_not_there": (["check", "yolo.toml", "--set", 'data.params.data_yaml="nowhere/data.yaml"'],
                                 'error: --set data.params.data_yaml="nowhere/data.yaml": data.params.data_yaml: '
                                 "yolo_dataset: nowhere/data.yaml: no such data.yaml; give your dataset's (a "
                                 "data.yaml, or the folder holding it): --set data.params.data_yaml=PATH"),
    "epochs_0": (["train", "r.toml", "--quiet", "--set", "train.epochs=0"],
                 "error: --set train.epochs=0: train.epochs: expected an integer >= 1, got 0"),
    "eval_a_classifier": (["eval", "CKPT_TINY"], "last.pt: not a detector's checkpoint: its recipe trains "
                                                 "model.use = 'mlp'"),
    "predict_a_classifier": (["predict", "CKPT_TINY", "r.toml", "--out", "drawn"],
                             "last.pt: not a detector's checkpoint"),
    "export_into_a_full_folder": (["data", "export-synthetic", "--out", ".", "--n", "2", "--size", "64"],
                                  "folder exists and is not empty; choose a new folder, or pass --overwrite"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line(tmp_path, ckpt, case):
    argv, expected = CASES[case]
    shutil.copy(TINY, tmp_path / "r.toml")
    (tmp_path / "afile").write_text("")
    (tmp_path / "seed.toml").write_text(f'extends = "r.toml"\n[run]\nseed = {BIG}\n')
    (tmp_path / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "yolo.toml").write_text('[model]\nuse = "detector"\n[data]\nuse = "yolo_dataset"\n[train]\n'
                                        'epochs = 1\n')
    bad = {"CKPT_TINY": {}, "CKPT_NO_STEP": {"progress": {"epoch": 1, "batch": 0}},
           "CKPT_NEGATIVE": {"progress": {"epoch": 1, "step": -7, "batch": 99}},
           "CKPT_PAST": {"progress": {"epoch": 1, "step": 200, "batch": 99}}}
    for i, a in enumerate(argv):
        if a in bad:
            folder = tmp_path / "run" / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            argv = [*argv[:i], str(with_state(ckpt, folder / "last.pt", **bad[a])), *argv[i + 1:]]
    out = cli(*argv, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("error: ") and expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "runs").exists()


def test_a_writer_that_cannot_write_does_not_keep_the_checkpoint_from_being_written(tmp_path):
    built = build(rc.load(TINY, SMALL + ["train.epochs=1"]), None, quiet=True)

    def full_disk(state):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "plots" / "curves.png"))

    ckpts = tmp_path / "checkpoints"
    loop = built.loop.add(writer("epoch_end", full_disk, priority=100, name="plots"), checkpointing(ckpts))
    with pytest.raises(OutputError) as e:
        fit(built.template, loop)
    assert str(e.value).startswith(f"{tmp_path / 'plots' / 'curves.png'}: the 'plots' writer could not write at "
                                   "epoch_end (epoch 1, step 2): No space left on device")
    assert checkpoint.read(ckpts / "epoch-0001.pt")["state"]["progress"]["epoch"] == 1
