"""Every docstring example runs, or says why it cannot.

A docstring shows a short use after ``::``. Each such block is compiled; each
is then run in a small world (a tiny model, its state and loop, the shipped
recipes and a trained tiny run folder, in a temporary working folder) with the
names of its own module. An example may name something the world does not
have (a user's ``MyNet``, a detector's detections) — it is counted as
standalone-only — but one that runs must not raise.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import logging
import os
import shutil
import textwrap
import warnings
from pathlib import Path

import attrs
import pytest
from PIL import Image
import toolz
import torch
import torch.nn.functional as F
from torch import nn

import smartcash_fn as sf
from smartcash_fn import checkpoint
from smartcash_fn.cli import main
from smartcash_fn.run.build import build
from smartcash_fn.run.recipe import load

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "smartcash_fn"
NOT_PYTHON = ("smartcash-fn ", "[", "OUT/", "$ ")
DETECTOR = ["--set", "data.params.train=8", "--set", "data.params.val=4", "--set", "data.params.size=64",
            "--set", "train.epochs=1", "--set", "data.batch_size=4", "--set", "data.val_batch_size=4",
            "--set", "schedule.warmup_steps=1"]
BASICS = {"sf": sf, "torch": torch, "nn": nn, "F": F, "toolz": toolz, "attrs": attrs, "Path": Path,
          **{k: getattr(sf, k) for k in sf.__all__}}


def examples() -> list[tuple[str, str, str]]:
    """(module, owner, code) of every ``::`` block in the package's docstrings that is Python."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)):
                continue
            doc = ast.get_docstring(node, clean=True) or ""
            lines, i = doc.split("\n"), 0
            while i < len(lines):
                if not lines[i].rstrip().endswith("::"):
                    i += 1
                    continue
                j = i + 1
                while j < len(lines) and not lines[j].strip():
                    j += 1
                block = []
                while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                    block.append(lines[j])
                    j += 1
                code = textwrap.dedent("\n".join(block)).strip()
                if code and not code.startswith(NOT_PYTHON):
                    found.append((module, getattr(node, "name", "<module>"), code))
                i = j
    return found


EXAMPLES = examples()


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    """A working folder with the recipes and a trained tiny run, and names the examples use."""
    root = tmp_path_factory.mktemp("docstrings")
    shutil.copytree(REPO / "recipes", root / "recipes")
    before = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", "recipes/tiny.toml", "--out", "runs/tiny", "--quiet"]) == 0
        shutil.copytree(root / "runs" / "tiny", root / "runs" / "a")
        assert main(["train", "--out", "runs/rupiah_synthetic", "--quiet", *DETECTOR]) == 0
        assert main(["data", "export-synthetic", "--out", "datasets/rupiah", "--n", "20", "--size", "64",
                     "--quiet"]) == 0
        Image.new("RGB", (96, 64), (120, 90, 60)).save(root / "photo.jpg")
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)

        def make_model() -> nn.Module:
            return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))

        def loss_fn(apply, batch):
            xb, yb = batch
            return F.cross_entropy(apply(xb), yb)

        recipe = load("recipes/tiny.toml")
        built = build(recipe)
        state = built.template
        tree = checkpoint.to_tree(state)
        names = {
            "x": x, "y": y, "batch": (x, y), "make_model": make_model, "model": make_model(), "loss_fn": loss_fn,
            "state": state, "template": state, "loop": built.loop, "built": built, "recipe": recipe,
            "grads": {k: torch.zeros_like(v) for k, v in state.params.items()}, "params": state.params,
            "seed": 0, "epoch": 0, "tree": tree, "state_tree": tree, "ta": tree, "tb": tree,
        }
        yield root, names
    finally:
        os.chdir(before)


@contextlib.contextmanager
def process_state_kept():
    """Put back what an example may change for the whole process: loggers, torch's global switches, the environment.

    Examples show real uses — ``logger.addHandler(ConsoleHandler(...))``,
    ``use_deterministic(True, "cuda")`` — whose effect outlives them; without
    this, tests run after this file would see a console handler already in
    place or deterministic kernels switched on.
    """
    loggers = [logging.getLogger(), logging.getLogger("smartcash_fn")]
    kept = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    switches = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_num_threads(),
                torch.get_default_dtype(), torch.is_grad_enabled())
    environ = dict(os.environ)
    try:
        yield
    finally:
        for lg, handlers, level, propagate in kept:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
        deterministic, warn_only, cudnn_deterministic, benchmark, threads, dtype, grad = switches
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_deterministic, benchmark
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        os.environ.clear()
        os.environ.update(environ)


def test_there_are_examples_and_each_python_one_compiles():
    assert len(EXAMPLES) > 100
    bad = []
    for module, owner, code in EXAMPLES:
        try:
            compile(code, f"{module}.{owner}", "exec")
        except SyntaxError as e:
            bad.append(f"{module}.{owner}: {e.msg}: {code[:80]!r}")
    assert not bad, "\n".join(bad)


def test_docstring_examples_run(world):
    root, names = world
    ran, standalone, failed = [], [], []
    for module, owner, code in EXAMPLES:
        ns = {**BASICS, **vars(importlib.import_module(module)), **names}
        try:
            with process_state_kept(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(code, f"{module}.{owner}", "exec"), ns)
            ran.append(f"{module}.{owner}")
        except NameError as e:
            standalone.append(f"{module}.{owner}: {e}")
        except Exception as e:  # noqa: BLE001 - any other error is a broken example, unless it shows that error
            if type(e).__name__ in code:
                ran.append(f"{module}.{owner}")
                continue
            failed.append(f"{module}.{owner}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    print(f"docstring examples: {len(ran)} ran, {len(standalone)} name things outside the world")
    assert not failed, "\n".join(failed)
    assert len(ran) >= 60, f"only {len(ran)} examples ran"
