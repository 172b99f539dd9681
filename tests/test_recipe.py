"""Recipes, the registry and build, in process: loading, merging, overrides, errors, the TOML writer, the reference."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import attrs
import pytest
import tomli
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smartcash_fn import checkpoint, environment
from smartcash_fn.run import recipe as rc
from smartcash_fn.run import registry
from smartcash_fn.run.build import build, describe, probe
from smartcash_fn.errors import RecipeError, StateError
from smartcash_fn.loop import fit

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"

MINIMAL = """
[model]
use = "mlp"
[model.params]
hidden = [8]
[data]
use = "synthetic"
batch_size = 16
[data.params]
samples = 64
val_samples = 16
features = 4
classes = 3
[train]
epochs = 1
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(RecipeError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- loading


def test_tiny_recipe_loads_with_its_file_name_as_run_name():
    r = rc.load(TINY)
    assert r.run.name == "tiny"
    assert r.model.use == "mlp" and r.data.use == "synthetic"
    assert r.train.epochs == 3 and r.checkpoint.every_epochs == 1
    assert [c.use for c in r.callbacks] == ["nan_guard", "early_stopping"]
    assert r.callbacks[1].params == {"monitor": "val/loss", "patience": 5}


def test_default_recipe_is_the_synthetic_detector_recipe_shipped_in_the_package():
    from smartcash_fn.run.commands import DEFAULT_RECIPE

    assert DEFAULT_RECIPE.parent.parent.name == "smartcash_fn"           # inside the package: in the wheel too
    assert (TINY.parent / "rupiah_synthetic.toml").resolve() == DEFAULT_RECIPE.resolve()  # recipes/ links to it
    default = rc.to_dict(rc.load(DEFAULT_RECIPE))
    assert default["run"]["name"] == "rupiah_synthetic"
    assert default["model"]["use"] == "detector" and default["data"]["use"] == "rupiah_synthetic"


def test_extends_merges_tables_key_by_key_and_replaces_arrays(tmp_path):
    write(tmp_path, "base.toml", MINIMAL + """
    [optimizer]
    lr = 0.5
    weight_decay = 0.1
    [[callbacks]]
    use = "nan_guard"
    [[callbacks]]
    use = "record_steps"
    """)
    sub = tmp_path / "sub"
    sub.mkdir()
    child = write(sub, "child.toml", """
    extends = "../base.toml"
    [optimizer]
    lr = 0.25
    [model.params]
    dropout = 0.1
    [[callbacks]]
    use = "memory_cleanup"
    """)
    r = rc.load(child)
    assert r.optimizer.lr == 0.25 and r.optimizer.weight_decay == 0.1      # sibling key kept
    assert r.model.params == {"hidden": [8], "dropout": 0.1}               # nested table merged
    assert [c.use for c in r.callbacks] == ["memory_cleanup"]              # array replaced whole
    assert r.train.epochs == 1 and r.run.name == "child"


def test_extends_array_merges_in_order(tmp_path):
    write(tmp_path, "a.toml", MINIMAL + "[optimizer]\nlr = 0.1\nmomentum = 0.5\nuse = \"sgd\"\n")
    write(tmp_path, "b.toml", "[optimizer]\nlr = 0.2\n")
    top = write(tmp_path, "top.toml", 'extends = ["a.toml", "b.toml"]\n')
    r = rc.load(top)
    assert (r.optimizer.use, r.optimizer.lr, r.optimizer.momentum) == ("sgd", 0.2, 0.5)


def test_extends_names_a_built_in_recipe_unless_a_file_nearby_has_that_name(tmp_path):
    child = write(tmp_path, "mine.toml", 'extends = "rupiah_yolo"\n[data.params]\ndata_yaml = "d/data.yaml"\n')
    r = rc.load(child)
    assert (r.data.use, r.optimizer.lr, r.train.loss_params["cls"]) == ("yolo_dataset", 0.006, 1.0)
    assert r.data.params["data_yaml"] == "d/data.yaml" and r.data.params["size"] == 256 and r.run.name == "mine"
    write(tmp_path, "rupiah_yolo", MINIMAL)  # a file of that name beside the recipe is the one meant
    assert rc.load(child).model.use == "mlp"
    msg = error_of(rc.load, write(tmp_path, "typo.toml", 'extends = "rupiah_yol"\n'))
    assert "typo.toml: extends: no recipe file 'rupiah_yol' beside it and no built-in recipe of that name; " \
           "did you mean 'rupiah_yolo'?" in msg


def test_a_table_naming_another_component_leaves_the_base_parameters_behind(tmp_path):
    write(tmp_path, "base.toml", MINIMAL.replace("[train]\n", '[train]\nloss = "cross_entropy"\n'
                                                             'loss_params = {label_smoothing = 0.1}\n')
          + '[optimizer]\nuse = "sgd"\nlr = 0.1\nparams = {dampening = 0.1}\n')
    swapped = write(tmp_path, "swapped.toml", """
    extends = "base.toml"
    [model]
    use = "cnn"
    [data]
    use = "my.module:data"
    [data.params]
    rows = 5
    [train]
    loss = "my.module:loss"
    """)
    r = rc.load(swapped)
    assert r.model.params == {} and r.data.params == {"rows": 5} and r.train.loss_params == {}
    assert r.data.batch_size == 16 and r.train.epochs == 1          # the tables' own keys are inherited
    assert r.optimizer.params == {"dampening": 0.1}                  # a component kept keeps its parameters
    same = write(tmp_path, "same.toml", 'extends = "base.toml"\n[model]\nuse = "mlp"\n[model.params]\ndropout = 0.1\n')
    assert rc.load(same).model.params == {"hidden": [8], "dropout": 0.1}
    # --set of a component's name: the recipe's parameters go, those set beside it stay, in either order
    for sets in (['data.use="my.module:data"', "data.params.rows=5"], ["data.params.rows=5", 'data.use="my.module:data"']):
        assert rc.load(tmp_path / "base.toml", sets=sets).data.params == {"rows": 5}
    assert rc.load(tmp_path / "base.toml", sets=['data.use="synthetic"']).data.params["samples"] == 64
    # errors about the new component's keys name where they were set
    msg = error_of(rc.load, tmp_path / "base.toml", sets=['model.use="cnn"', "model.params=3"])
    assert msg.startswith("--set model.params=3: model.params:"), msg


def test_another_schedule_leaves_every_key_of_the_base_schedule_behind(tmp_path):
    child = write(tmp_path, "linear.toml", 'extends = "rupiah_synthetic"\n'
                                          '[schedule]\nuse = "one_cycle"\nanneal = "linear"\n')
    r = rc.load(child)      # the default's warmup_steps and warmup_share, which one_cycle refuses, are gone
    assert (r.schedule.use, r.schedule.anneal, r.schedule.warmup_steps, r.schedule.warmup_share) == \
        ("one_cycle", "linear", 0, None)
    assert r.optimizer.lr == 0.002                                   # the other tables are as they were
    plain = write(tmp_path, "plain.toml", 'extends = "rupiah_synthetic"\n')
    for sets in (['schedule.use="one_cycle"', "schedule.pct_start=0.1"],
                 ["schedule.pct_start=0.1", 'schedule.use="one_cycle"']):
        s = rc.load(plain, sets=sets).schedule
        assert (s.use, s.pct_start, s.warmup_steps, s.warmup_share) == ("one_cycle", 0.1, 0, None)


def test_error_in_an_inherited_key_names_the_file_that_set_it(tmp_path):
    write(tmp_path, "base.toml", MINIMAL + "[optimizer]\nlr = \"fast\"\n")
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[train]\nepochs = 2\n')
    msg = error_of(rc.load, child)
    assert "base.toml: optimizer.lr: expected a number, got \"fast\"" in msg
    assert "child.toml" not in msg


def test_extends_cycle_is_an_error_naming_the_chain(tmp_path):
    write(tmp_path, "a.toml", 'extends = "b.toml"\n')
    write(tmp_path, "b.toml", 'extends = "c.toml"\n')
    write(tmp_path, "c.toml", 'extends = "a.toml"\n')
    msg = error_of(rc.load, tmp_path / "a.toml")
    assert "extends: cycle" in msg and msg.count("a.toml") >= 2 and "b.toml" in msg and "c.toml" in msg


def test_extends_self_and_missing_base(tmp_path):
    assert "cycle" in error_of(rc.load, write(tmp_path, "self.toml", 'extends = "self.toml"\n'))
    msg = error_of(rc.load, write(tmp_path, "orphan.toml", 'extends = "nowhere.toml"\n'))
    assert msg.startswith(str(tmp_path / "orphan.toml")) or "orphan.toml: extends" in msg
    assert "nowhere.toml" in msg and "no such recipe file" in msg
    msg = error_of(rc.load, write(tmp_path, "badext.toml", "extends = 3\n"))
    assert "badext.toml: extends: expected a recipe file name" in msg


def test_missing_file_and_invalid_toml(tmp_path):
    msg = error_of(rc.load, tmp_path / "none.toml")
    assert "none.toml" in msg and "no such recipe file" in msg
    msg = error_of(rc.load, write(tmp_path, "broken.toml", "[train\nepochs = 1\n"))
    assert "broken.toml: invalid TOML" in msg and "line 1" in msg


# --------------------------------------------------------------------------- --set


def test_set_overrides_values_read_as_toml(tmp_path):
    base = write(tmp_path, "r.toml", MINIMAL + "[[callbacks]]\nuse = \"early_stopping\"\npatience = 3\n")
    r = rc.load(base, sets=["train.epochs=5", "optimizer.betas=[0.8, 0.9]", "run.name=big-run",
                            "callbacks.0.patience=7", "train.precision=\"bf16\"", "model.params.dropout=0.2"])
    assert r.train.epochs == 5 and r.optimizer.betas == (0.8, 0.9)
    assert r.run.name == "big-run" and r.callbacks[0].params["patience"] == 7
    assert r.train.precision == "bf16" and r.model.params["dropout"] == 0.2


def test_set_errors_name_the_set_argument(tmp_path):
    base = write(tmp_path, "r.toml", MINIMAL)
    assert error_of(rc.load, base, sets=["train.epochs"]).startswith("--set train.epochs: expected KEY=VALUE")
    msg = error_of(rc.load, base, sets=["train.epochs=five"])
    assert msg == '--set train.epochs=five: train.epochs: expected an integer, got "five"'
    msg = error_of(rc.load, base, sets=["optimizer.lrr=0.1"])
    assert msg == "--set optimizer.lrr=0.1: optimizer.lrr: unknown key; did you mean 'lr'?"
    assert "no index 4" in error_of(rc.load, base, sets=["callbacks.4.patience=1"])
    assert "is not a table" in error_of(rc.load, base, sets=["train.epochs.x=1"])


# --------------------------------------------------------------------------- validation messages


@pytest.mark.parametrize("extra, expected", [
    ("[optimizer]\nlrr = 0.1\n", "r.toml: optimizer.lrr: unknown key; did you mean 'lr'?"),
    ("[trian]\nepochs = 2\n", "r.toml: trian: unknown section; did you mean 'train'?"),
    ("[schedule]\nwarmup_step = 2\n", "r.toml: schedule.warmup_step: unknown key; did you mean 'warmup_steps'?"),
    ("[optimizer]\nlr = true\n", "r.toml: optimizer.lr: expected a number, got true"),
    ("[data]\nworkers = 1.5\n", "r.toml: data.workers: expected an integer, got 1.5"),
    ("[run]\nname = 7\n", "r.toml: run.name: expected a string, got 7"),
    ("[train]\nprecision = \"fp61\"\n", "r.toml: train.precision: expected one of \"fp32\", \"bf16\", \"fp16\", "
                                         "\"auto\", got \"fp61\"; did you mean 'fp16'?"),
    ("[optimizer]\nbetas = [0.9]\n", "r.toml: optimizer.betas: expected an array of 2 numbers, got an array of 1"),
    ("[train]\naccumulate = 0\n", "r.toml: train.accumulate: expected an integer >= 1, got 0"),
    ("[train]\nema = 1.0\n", "r.toml: train.ema: expected a number in [0, 1) (0 is off), got 1.0"),
    ("[[optimizer.groups]]\nlr = 0.1\n", "r.toml: optimizer.groups[0].prefix: missing required key"),
    ("loggers = 3\n", "r.toml: loggers: expected a table, got 3"),
    ("[[callbacks]]\nuse = \"nan_guard\"\nevent = \"epoch_ends\"\n",
     "r.toml: callbacks[0].event: expected one of"),
])
def test_validation_messages_name_file_and_dotted_key(tmp_path, extra, expected):
    # keys set here go on top of MINIMAL; TOML forbids redefining a table, so merge through extends
    write(tmp_path, "base.toml", MINIMAL)
    path = write(tmp_path, "r.toml", 'extends = "base.toml"\n' + extra)
    msg = error_of(rc.load, path)
    assert msg.startswith(expected) or expected in msg, msg


def test_missing_required_section_and_key(tmp_path):
    path = write(tmp_path, "r.toml", "[model]\nuse = \"mlp\"\n[train]\nclip = 1.0\n")
    msg = error_of(rc.load, path)
    assert "r.toml: data: missing required section [data]" in msg
    assert "r.toml: train.epochs: missing required key; add it to the recipe" in msg


def test_all_problems_are_reported_together(tmp_path):
    write(tmp_path, "base.toml", MINIMAL)
    path = write(tmp_path, "r.toml", 'extends = "base.toml"\n[optimizer]\nlrr = 1\n[train]\nepochs = "x"\n')
    lines = error_of(rc.load, path).splitlines()
    assert len(lines) == 2 and "optimizer.lrr" in lines[0] and "train.epochs" in lines[1]


def test_component_parameters_are_checked_against_signatures(tmp_path):
    write(tmp_path, "base.toml", MINIMAL)
    cases = [
        ("[[train.steps]]\nuse = \"clip\"\nmax_nrom = 1.0\n",
         "train.steps[0].max_nrom: clip takes no parameter 'max_nrom'; did you mean 'max_norm'?"),
        ("[[train.steps]]\nuse = \"clip\"\n", "train.steps[0].max_norm: required by clip; add it"),
        ("[[train.steps]]\nuse = \"clipp\"\n", "train.steps[0].use: unknown step 'clipp'; did you mean 'clip'?"),
        ("[model.params]\nwidth = 3\n", "model.params.width: mlp takes no parameter 'width'"),
        ("[[callbacks]]\nuse = \"early_stoping\"\n", "callbacks[0].use: unknown callback 'early_stoping'; did you "
                                                     "mean 'early_stopping'?"),
        ("[[callbacks]]\nuse = \"early_stopping\"\npatiense = 3\n", "callbacks[0].patiense: early_stopping takes "
                                                                   "no parameter 'patiense'"),
        ("[optimizer]\nuse = \"adam\"\nmomentum = 0.9\n", "optimizer.momentum: adam takes no 'momentum'"),
        ("[schedule]\nuse = \"cosine\"\ngamma = 0.5\n", "schedule.gamma: cosine takes no 'gamma'"),
        ("[schedule]\nuse = \"step\"\n", "schedule.step_size: schedule 'step' needs this key"),
        ("[train]\nclip = 1.0\n[[train.steps]]\nuse = \"clip\"\nmax_norm = 2.0\n",
         "train.clip: given twice: here and as train.steps[0] (clip)"),
        ("[train]\nprecision = \"bf16\"\n[[train.steps]]\nuse = \"fp16\"\n", "train.precision: given twice"),
        ("[train]\nprecision = \"auto\"\n[[train.steps]]\nuse = \"bf16\"\n", "train.precision: auto, and a "
                                                                              "precision given as train.steps[0]"),
        ("[validation]\nuse_ema = true\n", "validation.use_ema: there are no EMA params"),
        ("[train]\nloss = \"nopkg_here.losses:focal\"\n", "train.loss: cannot import 'nopkg_here.losses:focal': "
                                                          "no module named 'nopkg_here'"),
        ("[train]\nloss = \"smartcash_fn.step:clasification_loss\"\n",
         "train.loss: cannot import 'smartcash_fn.step:clasification_loss': 'smartcash_fn.step' has no attribute "
         "'clasification_loss'; did you mean 'classification_loss'?"),
        ("[[optimizer.groups]]\nprefix = \"0.\"\nname = \"default\"\n", "optimizer.groups[0].name: the label "
                                                                        "'default' is taken"),
        ("[schedule]\nuse = \"warmup_cosine\"\nwarmup_steps = 100\n", "schedule.warmup_steps: warmup_cosine: "
                                                                      "warmup_steps must be < total_steps"),
    ]
    for extra, expected in cases:
        path = write(tmp_path, "r.toml", 'extends = "base.toml"\n' + extra)
        msg = error_of(lambda: build(rc.load(path)))
        assert msg.startswith("r.toml: ") or msg.startswith(str(path)), msg
        assert expected in msg, (extra, msg)


def test_probe_turns_a_shape_mistake_into_a_recipe_error(tmp_path):
    write(tmp_path, "base.toml", MINIMAL)
    path = write(tmp_path, "r.toml", 'extends = "base.toml"\n[model.params]\nin_features = 5\n')
    built = build(rc.load(path))
    msg = error_of(probe, built)
    assert "a trial step on the first training batch failed" in msg and "model.params" in msg


# --------------------------------------------------------------------------- registry


def test_registry_resolves_short_names_and_import_paths():
    from smartcash_fn import optim, step

    assert registry.resolve("optimizer", "adamw", "x") is optim.adamw
    assert registry.resolve("step", "smartcash_fn.step:clip", "x") is step.clip
    assert registry.resolve("loss", "smartcash_fn.step:classification_loss", "x") is step.classification_loss
    assert set(registry.names("schedule")) == {"constant", "step", "multistep", "cosine", "warmup_cosine",
                                               "warmup_linear", "one_cycle"}
    for kind, table in registry.builtins().items():       # every built-in resolves
        for name in table:
            assert callable(registry.resolve(kind, name, "x"))


def test_registry_errors():
    msg = error_of(registry.resolve, "optimizer", "sgdd", "f.toml: optimizer.use")
    assert msg.startswith("f.toml: optimizer.use: unknown optimizer 'sgdd'; did you mean 'sgd'?")
    assert "sgd, adam, adamw" in msg
    msg = error_of(registry.resolve, "loss", "mypkg.losses.focal", "f.toml: train.loss")
    assert "'mypkg.losses:focal'" in msg
    assert "not an import path" in error_of(registry.import_path, "a:b:c", "w")
    msg = error_of(registry.resolve, "loss", "smartcash_fn.nope:x", "f.toml: train.loss")
    assert msg.startswith("f.toml: train.loss: cannot import") and "no module named 'smartcash_fn.nope'" in msg


def test_import_of_a_module_that_raises_is_a_recipe_error(tmp_path, monkeypatch):
    (tmp_path / "broken_mod_for_recipe.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    msg = error_of(registry.import_path, "broken_mod_for_recipe:f", "f.toml: train.loss")
    assert "importing module 'broken_mod_for_recipe' failed: RuntimeError: boom at import" in msg


# --------------------------------------------------------------------------- build


def test_build_composes_convenience_keys_outermost_with_precision_first(tmp_path):
    write(tmp_path, "base.toml", MINIMAL)
    path = write(tmp_path, "r.toml", """extends = "base.toml"
    [train]
    precision = "fp16"
    accumulate = 2
    clip = 1.0
    ema = 0.9
    [[train.steps]]
    use = "smartcash_fn.step:clip"
    max_norm = 5.0
    """.replace("\n    ", "\n"))
    built = build(rc.load(path))
    assert built.step_text == ("compose(fp16(), accumulate(every=2), clip(max_norm=1.0), ema(decay=0.9), "
                               "smartcash_fn.step:clip(max_norm=5.0))(make_step(cross_entropy))")
    # fp16 is outermost, so clipping sees the unscaled gradients: the recorded norm is small, not ~65536x
    batch = next(iter(built.loop.data.batches(0, 0, 0)))
    s = built.loop.step(built.loop.step(built.template, batch), batch)
    assert s.extras["loss_scale"]["scale"] == 2.0 ** 16
    assert 0 < float(s.metrics["grad_norm"]) < 100
    assert "ema" in s.extras and s.opt_state["count"] == 1


def test_schedule_total_steps_is_derived_from_epochs_batches_and_accumulation(tmp_path):
    write(tmp_path, "base.toml", MINIMAL)
    path = write(tmp_path, "r.toml", 'extends = "base.toml"\n[train]\nepochs = 3\naccumulate = 2\n'
                                     '[schedule]\nuse = "cosine"\n')
    from smartcash_fn.run.build import make_schedule

    built = build(rc.load(path))
    assert built.batches == 4 and built.updates == 6          # 64 samples / 16 = 4 batches; 3 * 4 / 2
    schedule_for, updates = make_schedule(rc.load(path, sets=["schedule.min_lr=1e-4"]), batches=4)
    sched = schedule_for(1e-3)
    assert updates == 6 and sched(0) == 1e-3 and sched(6) == 1e-4
    assert schedule_for(1e-2)(6) == pytest.approx(1e-3)         # min_lr scales with a group's lr
    built2 = build(rc.load(path, sets=["schedule.total_steps=50"]))
    assert built2.updates == 50


def test_warmup_share_caps_a_warmup_longer_than_a_short_run(tmp_path):
    from smartcash_fn.run.build import make_schedule, replan_for, warmup_of

    write(tmp_path, "base.toml", MINIMAL)  # 4 batches an epoch
    path = write(tmp_path, "r.toml", 'extends = "base.toml"\n[train]\nepochs = 5\n[optimizer]\nlr = 0.001\n'
                                     '[schedule]\nuse = "warmup_cosine"\nwarmup_steps = 100\nwarmup_share = 0.25\n')
    recipe = rc.load(path)
    built = build(recipe)  # without the share: "warmup_steps must be < total_steps" (above)
    assert built.updates == 20
    assert "schedule: the run has 20 updates, so the warmup takes 5 (warmup_share 0.25) where warmup_steps " \
           "says 100" in built.notes
    lr = lambda opt, k: opt.lrs_at(k, 1.0)[""]  # noqa: E731
    opt = built.template.optimizer
    assert lr(opt, 0) == 0.0 and lr(opt, 2) == pytest.approx(0.001 * 2 / 5) and lr(opt, 5) == 0.001
    assert lr(opt, 20) == 0.0                    # and it still decays to the end of the run
    # a run long enough keeps its warmup_steps, and says nothing
    long = build(rc.load(path, sets=["train.epochs=200"]))
    assert long.updates == 800 and lr(long.template.optimizer, 50) == pytest.approx(0.0005)
    assert not [n for n in long.notes if n.startswith("schedule:")]
    # a time budget's shorter plan: the replanned schedule caps its warmup at the same share
    schedule_for, _ = make_schedule(rc.load(path, sets=["train.epochs=200"]), batches=4)
    planned = replan_for(rc.load(path, sets=["train.epochs=200"]), schedule_for, batches=4)(long.template, 3)
    assert lr(planned.optimizer, 3) == 0.001 and lr(planned.optimizer, 12) == 0.0   # 12 updates: warmup 3
    assert (warmup_of(100, 0.25, 1200), warmup_of(100, 0.25, 50), warmup_of(100, 0.25, 3)) == (100, 12, 0)
    assert "schedule.warmup_share: cosine has no warmup to cap" in error_of(
        lambda: build(rc.load(path, sets=['schedule.use="cosine"', "schedule.warmup_share=0.25"])))
    for bad in ("0", "1", "1.5"):
        assert "schedule.warmup_share" in error_of(lambda: rc.load(path, sets=[f"schedule.warmup_share={bad}"]))


def test_param_groups_freeze_and_scale_the_lr(tmp_path):
    write(tmp_path, "base.toml", MINIMAL)
    path = write(tmp_path, "r.toml", """extends = "base.toml"
    [optimizer]
    use = "sgd"
    lr = 0.1
    [[optimizer.groups]]
    prefix = "0."
    frozen = true
    [[optimizer.groups]]
    prefix = "2."
    name = "head"
    lr = 0.0
    """.replace("\n    ", "\n"))
    built = build(rc.load(path))
    s0 = built.template
    batch = next(iter(built.loop.data.batches(0, 0, 0)))
    s1 = built.loop.step(s0, batch)
    assert s1.params["0.weight"] is s0.params["0.weight"]             # frozen: the very same tensor
    assert torch.equal(s1.params["2.weight"], s0.params["2.weight"])  # lr 0 for the head group
    assert set(s1.opt_state) == {"default", "0", "head"}


def with_user_module(tmp_path: Path, monkeypatch, module: str, code: str, train: str) -> Path:
    """A recipe extending MINIMAL whose ``train`` table (and what follows it) names parts of ``module``,
    written beside it from ``code`` and importable."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(tmp_path))
    write(tmp_path, "base.toml", MINIMAL)
    return write(tmp_path, "r.toml", 'extends = "base.toml"\n[train]\n' + textwrap.dedent(train))


def test_late_loss_params_change_the_loss_from_a_share_of_the_plan(tmp_path, monkeypatch):
    path = with_user_module(tmp_path, monkeypatch, "late_parts_for_recipe", """
        import torch
        import torch.nn.functional as F

        def scaled(scale=1.0, shift=0.0):
            def loss(apply, batch):
                x, y = batch
                return scale * F.cross_entropy(apply(x), y) + shift, {"scale": torch.tensor(float(scale))}
            return loss
    """, """
        epochs = 4
        loss = "late_parts_for_recipe:scaled"
        loss_params = {scale = 1.0}
        late_loss_params = {scale = 0.25}
        late_from = 0.5
    """)
    built = build(rc.load(path))
    assert "late_switch(make_step(late_parts_for_recipe:scaled), make_step(late_parts_for_recipe:scaled(scale=0.25))" \
        in describe(built)
    assert "train: from 50% of the epochs planned the loss takes scale = 0.25" in built.notes
    whole = fit(built.template, built.loop)
    assert whole.history.series("train/scale") == [1.0, 1.0, 0.25, 0.25]  # epochs 0-1 early, 2-3 late
    # stopped mid-run (before the switch, and after it), saved and loaded: the bits of the run that never stopped
    for to_step in (6, 11):
        part = fit(built.template, built.loop, to_step=to_step)
        checkpoint.save(part, tmp_path / f"at{to_step}.pt")
        resumed = fit(checkpoint.load(tmp_path / f"at{to_step}.pt", like=built.template), built.loop)
        for k in whole.params:
            assert torch.equal(resumed.params[k], whole.params[k]), (to_step, k)
    # without the late keys: every epoch at the first weights, and other params
    off = build(rc.load(path, ["train.late_loss_params={}"]))
    plain = fit(off.template, off.loop)
    assert plain.history.series("train/scale") == [1.0] * 4 and "late_switch" not in describe(off)
    assert any(not torch.equal(plain.params[k], whole.params[k]) for k in whole.params)
    # refusals: a key the loss does not take, a share outside [0, 1], a step factory of one's own
    msg = error_of(build, rc.load(path, ["train.late_loss_params={scael = 0.5}"]))
    assert "train.late_loss_params.scael" in msg and "did you mean 'scale'" in msg
    assert "train.late_from" in error_of(rc.load, path, ["train.late_from=1.5"])
    msg = error_of(build, rc.load(path, ['train.step="late_parts_for_recipe:scaled"']))
    assert "train.late_loss_params" in msg and "train.step" in msg


def test_user_components_by_import_path(tmp_path, monkeypatch):
    path = with_user_module(tmp_path, monkeypatch, "user_parts_for_recipe", """
        import torch.nn.functional as F
        from smartcash_fn.events import Callback

        SEEN = []

        def loss(apply, batch):
            x, y = batch
            return F.cross_entropy(apply(x), y), {"double": 2 * F.cross_entropy(apply(x), y)}

        def count_epochs(state):
            SEEN.append(state.progress.epoch)
            return state

        def marker(tag):
            return Callback("training_end", lambda s: SEEN.append(tag) or s, name="marker")

        def halve():
            import attrs
            def transform(inner):
                return attrs.evolve(inner, update=lambda s, g: inner.update(s, {k: v / 2 for k, v in g.items()}))
            return transform
    """, """
        epochs = 2
        loss = "user_parts_for_recipe:loss"
        [[train.steps]]
        use = "user_parts_for_recipe:halve"
        [[callbacks]]
        use = "user_parts_for_recipe:count_epochs"
        event = "epoch_end"
        priority = 5
        [[callbacks]]
        use = "user_parts_for_recipe:marker"
        tag = "end"
    """)
    import user_parts_for_recipe as user

    built = build(rc.load(path))
    names = {(c.event, c.name, c.priority) for c in built.loop.callbacks}
    assert ("epoch_end", "count_epochs", 5) in names and ("training_end", "marker", 0) in names
    state = fit(built.template, built.loop)
    assert user.SEEN == [1, 2, "end"]
    assert "double" in state.metrics and state.progress.epoch == 2
    # a plain state -> state function without an event says how to fix it
    path = write(tmp_path, "r2.toml", 'extends = "base.toml"\n[[callbacks]]\nuse = "user_parts_for_recipe:count_epochs"\n')
    msg = error_of(lambda: build(rc.load(path)))
    assert "r2.toml: callbacks[0].use:" in msg and "add event = " in msg


def test_tiny_recipe_builds_and_describes_itself():
    built = build(rc.load(TINY))
    text = describe(built)
    assert "compose(clip(max_norm=10.0))(make_step(cross_entropy))" in text
    assert "early_stopping" in text and "nan_guard" in text
    assert math.isfinite(probe(built))


def test_validation_keys_choose_the_epochs_and_the_precision():
    """`first` and `last` add epochs to `every`'s; `precision = "train"` validates under the step's autocast."""
    from smartcash_fn.loop import Validation, validate
    sets = ["train.epochs=5", "train.precision=\"bf16\"", "validation.every=9", "validation.first=true",
            "validation.last=2", "validation.precision=\"train\"", "loggers.console=false"]
    built = build(rc.load(TINY, sets=sets))
    v = built.loop.validation
    assert (v.every, v.first, v.last, v.autocast) == (9, True, 2, torch.bfloat16)
    assert "validation: every 9 epochs, the first and the last 2, 2 batches, bfloat16" in describe(built)
    state = fit(built.template, built.loop)
    assert [e["epoch"] for e in state.history.epochs if "val/acc" in e] == [0, 3, 4]
    # the same params validated in float32: the metrics agree to bf16's rounding, and the loss is not equal
    full = validate(state, attrs.evolve(v, autocast=None))
    low = validate(state, v)
    assert low["val/acc"] == pytest.approx(full["val/acc"], abs=0.02)
    assert low["val/loss"] == pytest.approx(full["val/loss"], rel=0.02) and low["val/loss"] != full["val/loss"]
    # fp32 training validates in float32 whatever validation.precision says; so does the default
    assert build(rc.load(TINY, sets=['validation.precision="train"'])).loop.validation.autocast is None
    assert build(rc.load(TINY, sets=['train.precision="bf16"'])).loop.validation.autocast is None
    assert "validation: every 3 epochs, the last, 2 batches" in describe(
        build(rc.load(TINY, sets=["validation.every=3", "validation.last=1"])))
    # every = 0 is never, whatever first and last say
    assert build(rc.load(TINY, sets=["validation.every=0", "validation.first=true",
                                     "validation.last=2"])).loop.validation is None
    msg = error_of(lambda: rc.load(TINY, sets=['validation.precision="bf16"']))
    assert 'validation.precision: expected one of "fp32", "train", got "bf16"' in msg
    # which epochs a Validation validates, and what it refuses
    data = [(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))]
    due = Validation(data, every=4, first=True, last=3).due
    assert [e for e in range(17) if due(e, 17)] == [0, 3, 7, 11, 14, 15, 16]
    assert [e for e in range(5) if Validation(data, every=9, last=1).due(e, 5)] == [4]
    assert not any(Validation(data, every=0, first=True, last=5).due(e, 5) for e in range(5))
    for bad in ({"every": -1}, {"last": 1.5}, {"last": True}, {"autocast": torch.float32}):
        with pytest.raises(StateError, match="Validation: "):
            Validation(data, **bad)


@pytest.mark.parametrize("native, step, note", [
    ("this CPU has avx512_bf16", "compose(bf16(), clip(max_norm=10.0))", "precision auto: bf16, this CPU has "
                                                                         "avx512_bf16"),
    (None, "compose(clip(max_norm=10.0))", "precision auto: fp32, cpu does not compute bf16 natively"),
])
def test_precision_auto_is_bf16_only_where_the_device_computes_it_natively(monkeypatch, native, step, note):
    asked = []
    monkeypatch.setattr(environment, "native_bf16", lambda device: asked.append(str(device)) or native)
    built = build(rc.load(TINY, sets=['train.precision="auto"']))
    assert built.step_text.startswith(step + "(make_step(") and note in built.notes and asked[0] == "cpu"
    assert math.isfinite(probe(built))
    # the state carries what auto resolved to: a resume or replay elsewhere trains in the same precision
    assert built.template.recipe["train"]["precision"] == ("bf16" if native else "fp32")


def test_cpu_flags_and_native_bf16_read_linux_cpuinfo(tmp_path):
    x86 = write(tmp_path, "x86", "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    arm = write(tmp_path, "arm", "processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert "avx512_bf16" in environment.cpu_flags(str(x86)) and "bf16" in environment.cpu_flags(str(arm))
    assert environment.cpu_flags(str(tmp_path / "absent")) == frozenset()
    assert environment.native_bf16("cpu", environment.cpu_flags(str(x86))) == "this CPU has avx512_bf16"
    assert environment.native_bf16("cpu", frozenset({"avx2", "amx_bf16"})) == "this CPU has amx_bf16"
    assert environment.native_bf16("cpu", frozenset({"avx2", "avx512f"})) is None  # bf16 emulated: slower
    assert environment.native_bf16("meta") is None


@pytest.mark.slow
def test_compile_true_trains(tmp_path):
    write(tmp_path, "base.toml", MINIMAL)
    path = write(tmp_path, "r.toml", 'extends = "base.toml"\n[train]\ncompile = true\n')
    built = build(rc.load(path))
    state = fit(built.template, built.loop)
    assert state.progress.epoch == 1 and math.isfinite(state.history.last()["train/loss"])


def test_a_loss_torch_compile_cannot_compile_is_refused_naming_train_compile(tmp_path):
    from torch._dynamo.exc import InternalTorchDynamoError

    write(tmp_path, "base.toml", MINIMAL)
    path = write(tmp_path, "r.toml", 'extends = "base.toml"\n[train]\ncompile = true\n')
    built = build(rc.load(path))

    def uncompilable(state, batch):
        raise InternalTorchDynamoError("AttributeError: no attribute 'tp_descr_get_impl'")

    with pytest.raises(RecipeError, match=r"r\.toml: train\.compile: torch\.compile could not compile the loss "
                                          r"function \(InternalTorchDynamoError: .*set train\.compile = false"):
        probe(attrs.evolve(built, loop=attrs.evolve(built.loop, step=uncompilable)))
    # the same failure without compile is the model's, the data's or the loss's
    plain = build(rc.load(path, sets=["train.compile=false"]))
    with pytest.raises(RecipeError, match="a trial step on the first training batch failed"):
        probe(attrs.evolve(plain, loop=attrs.evolve(plain.loop, step=uncompilable)))


# --------------------------------------------------------------------------- TOML writer


def test_resolved_recipe_round_trips_through_toml(tmp_path):
    r = rc.load(TINY, sets=["optimizer.betas=[0.8, 0.99]", "checkpoint.monitor=\"val \\\"q\\\" \\\\ \\t é\""])
    text = rc.to_toml(r, header="resolved\nsecond line")
    assert text.startswith("# resolved\n# second line\n")
    again = rc.loads(text)
    assert again == r and rc.to_dict(again) == rc.to_dict(r)
    path = rc.write(r, tmp_path / "recipe.toml")
    assert rc.load(path) == r


plain_keys = st.text(min_size=1, max_size=8)
plain_scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False), st.text(max_size=12))
plain_values = st.recursive(
    plain_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(plain_keys, inner, max_size=3)),
    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(plain_keys, plain_values, max_size=5))
def test_dumps_is_read_back_by_tomli(table):
    assert tomli.loads(rc.dumps(table)) == table


def test_dumps_quotes_keys_that_are_not_bare():
    table = {"0\n": {"a b": 1}, "x": {"0\n": [], "q\"uote": "v"}, "ok-key_1": True}
    assert tomli.loads(rc.dumps(table)) == table


def test_dumps_writes_special_floats_and_arrays_of_tables():
    text = rc.dumps({"a": {"x": math.inf, "y": -math.inf}, "b": [{"c": 1}, {"c": 2, "d": {"e": "f"}}]})
    back = tomli.loads(text)
    assert back["a"] == {"x": math.inf, "y": -math.inf} and back["b"][1]["d"] == {"e": "f"}
    assert "[[b]]" in text
    assert math.isnan(tomli.loads(rc.dumps({"n": math.nan}))["n"])


# --------------------------------------------------------------------------- reference


def test_readme_reference_is_in_sync_with_the_schema():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert rc.with_reference(readme) == readme, (
        "README.md's recipe reference is stale; run: python -m smartcash_fn.run.recipe --update-readme")


def test_reference_lists_every_key():
    ref = rc.reference()
    import attrs

    def keys(cls, prefix):
        for f in attrs.fields(cls):
            if f.metadata.get("internal") or f.name == "params" and cls in rc._INLINE:
                continue
            item = f.type.__args__[0] if getattr(f.type, "__origin__", None) is tuple else None
            if attrs.has(f.type):
                yield from keys(f.type, f"{prefix}{f.name}.")
            elif item is not None and attrs.has(item):
                yield from keys(item, f"{prefix}{f.name}[].")
            else:
                yield f"{prefix}{f.name}"

    listed = list(keys(rc.Recipe, ""))
    assert len(listed) > 60
    for key in listed:
        assert f"`{key}`" in ref, key
    for kind, table in registry.builtins().items():
        for name in table:
            assert f"`{name}`" in ref


def test_empty_tables_inside_params_are_kept(tmp_path):
    write(tmp_path, "base.toml", MINIMAL)
    path = write(tmp_path, "r.toml", 'extends = "base.toml"\n[data.params.extra]\n')
    r = rc.load(path)
    assert r.data.params["extra"] == {}
    d = rc.to_dict(r)
    assert d["data"]["params"]["extra"] == {} and "params" not in d["optimizer"]
    assert rc.loads(rc.to_toml(r)) == r
