"""A built run's footprint: parameter counts (frozen ones too), input, FLOPs and checkpoint size."""

from __future__ import annotations

from smartcash_fn.run.build import build
from smartcash_fn.run.commands import DEFAULT_RECIPE
from smartcash_fn.run.footprint import footprint
from smartcash_fn.run.library import path_of
from smartcash_fn.run.recipe import load


def test_the_tiny_mlp_counts_what_it_holds():
    fp = footprint(build(load(path_of("tiny")), quiet=True))
    # 8 -> 32 -> 3: (8*32 + 32) + (32*3 + 3)
    assert fp.params == fp.trained == 8 * 32 + 32 + 32 * 3 + 3
    assert fp.input == (1, 8)
    assert fp.flops == 2 * (8 * 32 + 32 * 3)          # two FLOPs per multiply-add of the two matmuls
    assert "params 387 (trained 387)" in fp.text() and "input 1x8" in fp.text() and "KiB" in fp.text()


def test_a_frozen_backbone_is_counted_apart(one_thread):
    sets = ["run.device=cpu", "model.params.backbone=efficientnet_b0", "data.use=rupiah_synthetic",
            "data.params={train = 4, val = 2, size = 64}", "data.batch_size=2", "data.val_batch_size=2",
            "data.workers=0"]
    built = build(load(path_of("rupiah_efficientnet_b4"), sets=sets), quiet=True)
    fp = footprint(built, count_flops=False)
    parts = {n: (c, t) for n, c, t in fp.parts}
    assert parts["backbone"][1] is False and parts["head"][1] is True      # the first phase freezes the backbone
    assert fp.params - fp.trained == parts["backbone"][0]
    assert "backbone" in fp.text() and "frozen" in fp.text()
    assert any("trains from scratch" in n for n in built.notes)
    assert not any("trains from scratch" in n for n in build(load(DEFAULT_RECIPE), quiet=True).notes)


def test_summary_md_shows_the_model_counted_once(tmp_path):
    from smartcash_fn.loop import fit

    built = build(load(path_of("tiny"), sets=["train.epochs=1", "loggers.console=false", "loggers.plots=false",
                                              "loggers.tensorboard=false"]), tmp_path, quiet=True)
    assert footprint(built) is footprint(built) is built.footprint()   # the start of training and the summary share it
    fit(built.template, built.loop)
    text = (tmp_path / "summary.md").read_text()
    model = text[text.index("## Model"):text.index("## Recipe")]
    assert "| parameters | 387 |" in model and "| trained at the start | 387 |" in model
    assert "| input (one sample) | 1x8 |" in model and "| FLOPs of one forward pass | 704 FLOPs |" in model
    assert "| checkpoint at the start | 4.5 KiB |" in model and "frozen" not in model


def test_rows_say_which_parts_are_frozen(one_thread):
    sets = ["run.device=cpu", "model.params.backbone=efficientnet_b0", "data.use=rupiah_synthetic",
            "data.params={train = 4, val = 2, size = 64}", "data.batch_size=2", "data.val_batch_size=2",
            "data.workers=0"]
    rows = dict(footprint(build(load(path_of("rupiah_efficientnet_b4"), sets=sets), quiet=True),
                          count_flops=False).rows())
    assert rows["`backbone`"].endswith("frozen at the start") and rows["`head`"].endswith(", trained at the start")
    assert "frozen at the start" in rows and "FLOPs of one forward pass" not in rows
