"""Plots: metric curves (train beside val, the best epoch marked), confusion matrices, PR curves, PNG files."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.image import imread

import smartcash_fn as sf
from conftest import make_mlp, tiny_xy
from smartcash_fn.report import plots
from smartcash_fn.events import Callback
from smartcash_fn.report.plots import (
    BEST_GID,
    confusion_matrix_figure,
    curves_figure,
    metric_group,
    metric_groups,
    plot_curves,
    pr_curve_figure,
    save_figures,
    write_curves,
)

GOLD = (255, 215, 0)  # the best-epoch star's fill


def history(n=5):
    return sf.History(epochs=tuple(
        {"epoch": i, "step": 4 * (i + 1), "train/loss": 1.0 / (i + 1), "lr": 0.01 * 0.5**i,
         "val/loss": 1.2 / (i + 1), "val/acc": [0.2, 0.5, 0.8, 0.7, 0.6][i % 5]}
        for i in range(n)))


def best_of(h, monitor="val/acc", epoch=2):
    return sf.Best(monitor=monitor, mode="max", value=h.epochs[epoch][monitor], epoch=epoch, step=4 * (epoch + 1),
                   params={}, buffers={}, metrics=dict(h.epochs[epoch]))


def gold_pixels(path):
    img = np.round(imread(path)[..., :3] * 255).astype(int)
    return int((np.abs(img - np.array(GOLD)).max(axis=-1) <= 2).sum())


def test_metric_groups_pair_train_with_val():
    assert metric_group("train/loss") == ("loss", "train")
    assert metric_group("val/mAP50") == ("mAP50", "val")
    assert metric_group("lr/backbone") == ("lr", "lr/backbone")
    assert metric_group("grad_norm") == ("grad_norm", "grad_norm")
    h = sf.History(epochs=({"epoch": 0, "step": 1, "train/loss": 1.0, "lr": 0.1, "note": "x"},
                           {"epoch": 1, "step": 2, "train/loss": 0.5, "val/loss": 0.6, "lr/head": 0.2}))
    assert metric_groups(h) == {"loss": ["train/loss", "val/loss"], "lr": ["lr", "lr/head"]}


def test_curves_figure_draws_train_and_val_together_and_marks_the_best_epoch():
    h = history()
    fig = curves_figure(h, best_of(h))
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert list(axes) == ["loss", "lr", "acc"]
    data = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()))
            for ln in axes["loss"].lines if ln.get_gid() != BEST_GID}
    assert data == {"train": ([1, 2, 3, 4, 5], [1.0 / (i + 1) for i in range(5)]),
                    "val": ([1, 2, 3, 4, 5], [1.2 / (i + 1) for i in range(5)])}
    for ax in fig.axes:  # a dashed line at the best epoch (the third) in every panel
        vlines = [ln for ln in ax.lines if ln.get_gid() == BEST_GID and ln.get_linestyle() == "--"]
        assert [list(v.get_xdata()) for v in vlines] == [[3, 3]]
    stars = [ln for ln in axes["acc"].lines if ln.get_gid() == BEST_GID and ln.get_marker() == "*"]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [([3], [0.8])]
    assert not [ln for ln in axes["loss"].lines if ln.get_marker() == "*"]
    assert axes["lr"].get_yscale() == "linear"
    assert "best val/acc 0.8 at epoch 3" in fig.get_suptitle()


def test_curves_figure_without_best_or_epochs():
    fig = curves_figure(history(), None)
    assert not [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == BEST_GID]
    empty = curves_figure(sf.History())
    assert [t.get_text() for t in empty.axes[0].texts] == ["no epoch metrics yet"]


def test_pngs_are_valid_and_show_the_best_star(tmp_path):
    h = history()
    assert [p.name for p in write_curves(tmp_path / "one", h, best_of(h))] == ["curves.png"]  # no duplicates
    paths = write_curves(tmp_path / "with", h, best_of(h), per_metric=True)
    assert sorted(p.name for p in paths) == ["acc.png", "curves.png", "loss.png", "lr.png"]
    for p in paths:
        img = imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300 and img.shape[2] in (3, 4)
    assert gold_pixels(tmp_path / "with" / "acc.png") > 30
    assert gold_pixels(tmp_path / "with" / "curves.png") > 30
    assert gold_pixels(tmp_path / "with" / "loss.png") == 0
    write_curves(tmp_path / "without", h, None, per_metric=False)
    assert gold_pixels(tmp_path / "without" / "curves.png") == 0


def with_lrs(opt, base_lr):
    return SimpleNamespace(init=opt.init, update=opt.update, trains=opt.trains,
                           lrs=lambda opt_state, scale: {"": base_lr * scale})


def small_fit(epochs, *callbacks):
    x, y = tiny_xy(32)
    loop = sf.Loop(step=sf.make_step(sf.classification_loss), data=sf.TensorData((x, y), 16), epochs=epochs,
                   validation=sf.Validation(sf.TensorData((x, y), 32)), callbacks=callbacks)
    return sf.fit(sf.TrainState.create(make_mlp, with_lrs(sf.adamw(1e-2), 1e-2), seed=0), loop)


def test_plot_curves_callback_writes_pngs_at_its_epochs_and_at_the_end(tmp_path):
    seen = []

    def probe(state):
        seen.append((state.progress.epoch, (tmp_path / "plots" / "curves.png").exists()))
        return state

    state = small_fit(2, sf.keep_best(sf.Monitor("val/acc", "max")),
                      plot_curves(tmp_path, every_epochs=2, per_metric=True), Callback("epoch_end", probe, priority=601))
    assert seen == [(1, False), (2, True)]
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["acc.png", "curves.png", "loss.png", "lr.png"]
    assert state.best is not None and gold_pixels(tmp_path / "plots" / "acc.png") > 30
    assert imread(tmp_path / "plots" / "loss.png").shape[2] in (3, 4)


def test_plot_curves_by_default_draws_when_drawing_is_cheap_next_to_the_epochs(tmp_path, monkeypatch):
    clock = [0.0]

    def perf_counter():
        clock[0] += 0.1  # drawing "takes" 0.1 s
        return clock[0]

    drawn = []
    monkeypatch.setattr(plots, "time", SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(plots, "write_curves", lambda folder, h, best, per_metric, lr: drawn.append(len(h.epochs)))

    def wait(state):  # the fourth epoch is long: 5 s, far over 20 x 0.1 s
        if state.progress.epoch == 4:
            clock[0] += 5.0
        return state

    small_fit(4, Callback("epoch_end", wait, priority=599), plot_curves(tmp_path))
    # epoch 1: never (one point a curve); 2: first drawing; 3: too soon; 4: after the long wait; then the final one
    assert drawn == [2, 4, 4]


def test_plot_curves_rejects_bad_arguments():
    with pytest.raises(sf.StateError, match="every_epochs must be None or an int >= 0, got -1"):
        plot_curves("runs/x", every_epochs=-1)
    with pytest.raises(sf.StateError, match="run_dir must be a path"):
        plot_curves(None)


# --------------------------------------------------------------------------- classes


def test_confusion_matrix_figure_normalizes_rows():
    fig = confusion_matrix_figure([[3, 1, 0], [0, 4, 0], [0, 0, 0]], ["001", "002", "005"])
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), [[0.75, 0.25, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert [t.get_text() for t in ax.texts] == ["0.75", "0.25", "0.00", "0.00", "1.00", "0.00", "0.00", "0.00", "0.00"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["001", "002", "005"]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    counts = confusion_matrix_figure(np.array([[3, 1], [2, 4]]), ["a", "b"], normalize=False)
    assert [t.get_text() for t in counts.axes[0].texts] == ["3", "1", "2", "4"]


def test_confusion_matrix_figure_errors():
    with pytest.raises(sf.DataError, match=r"2 class names for a 3 x 3 matrix"):
        confusion_matrix_figure(np.eye(3), ["a", "b"])
    with pytest.raises(sf.DataError, match=r"must be square \(n x n\), got shape \(2, 3\)"):
        confusion_matrix_figure(np.ones((2, 3)), ["a", "b"])


def test_pr_curve_figure_per_class_and_mean(tmp_path):
    r = np.linspace(0, 1, 11)
    curves = {"a": (r[::-1], (1 - r**2)[::-1]), "b": (r, 1 - r)}  # "a" given in falling recall: sorted
    fig = pr_curve_figure(curves, ap={"a": 0.6, "b": 0.5}, grid=11)
    ax = fig.axes[0]
    assert [ln.get_label() for ln in ax.lines] == ["a 0.600", "b 0.500", "all classes mAP 0.550"]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), r)
    np.testing.assert_allclose(ax.lines[2].get_ydata(), ((1 - r**2) + (1 - r)) / 2)
    (path,) = save_figures([("pr curve", fig)], tmp_path)
    assert path.name == "pr_curve.png" and imread(path).ndim == 3
    with pytest.raises(sf.DataError, match=r"class 'a' has 3 recall and 2 precision values"):
        pr_curve_figure({"a": ([0, 0.5, 1], [1, 0.5])})
    with pytest.raises(sf.DataError, match="non-empty mapping"):
        pr_curve_figure({})


def test_curves_have_whole_epoch_ticks_and_every_series_is_labelled():
    h = sf.History(epochs=tuple({"epoch": e, "train/loss": 1.0 / (e + 1), "val/acc": 0.5 + e / 10} for e in range(3)))
    fig = curves_figure(h)
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        legend = ax.get_legend()
        assert legend is not None and [t.get_text() for t in legend.get_texts()] in (["train"], ["val"])


def test_class_colours_are_distinct_for_seventeen_classes():
    from smartcash_fn.report.plots import class_colours

    assert len(set(class_colours(17))) == 17 and len(set(class_colours(25))) == 25


TINY = sf.__file__.rsplit("/", 2)[0] + "/recipes/tiny.toml"
PLATEAU = 'callbacks=[{use = "reduce_on_plateau", monitor = "val/loss", factor = 0.5, patience = 0, threshold = 10.0}]'


@pytest.mark.parametrize("sets", [[], ["train.accumulate=2"], [PLATEAU, "schedule.min_lr=0.001"]],
                         ids=["plain", "accumulate", "plateau"])
def test_lr_series_is_the_rate_of_every_update_on_an_epoch_axis(sets):
    from smartcash_fn.events import writer
    from smartcash_fn.report.plots import lr_series
    from smartcash_fn.run.build import build
    from smartcash_fn.run.recipe import load

    recipe = load(TINY, ["train.epochs=3", "schedule.warmup_steps=3", "data.params.samples=128",
                         "loggers.console=false", *sets])
    built = build(recipe, quiet=True)
    seen = {}  # step -> the rate the next update uses, as the optimizer says it (after any epoch-end change)

    def rec(state):
        seen[state.progress.step] = state.optimizer.lrs(state.opt_state, state.lr_scale)[""]
        return state

    events = ("training_start", "batch_end", "epoch_start", "training_end")
    state = sf.fit(built.template, built.loop.add(*(writer(e, rec, name=f"rec_{e}") for e in events)))
    xs, ys = lr_series(state)["lr"]
    per_update = 2 if "train.accumulate=2" in sets else 1
    assert len(xs) == 3 * 4 // per_update + 1 and xs[0] == 0.0 and xs[-1] == 3.0   # 4 batches an epoch
    steps = [round(x * 4) for x in xs]
    assert steps == list(range(0, 13, per_update))
    assert ys == pytest.approx([seen[s] for s in steps], rel=1e-12, abs=0)
    assert ys[0] < ys[1] < ys[2] and max(ys) == pytest.approx(0.01)           # the warm-up shows
    if PLATEAU in sets:
        assert state.lr_scale < 1.0                                          # the plateau did lower the rate
    # the lr panel draws the updates, one line, on whole-epoch ticks
    fig = curves_figure(state.history, state.best, lr=lr_series(state))
    ax = next(a for a in fig.axes if a.get_title() == "lr")
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() != BEST_GID]
    assert list(line.get_xdata()) == xs and line.get_label() == "lr"
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_lr_series_needs_an_optimizer_that_says_its_rates():
    from smartcash_fn.report.plots import lr_series

    state = small_fit(1)                  # a stand-in optimizer with lrs but no lrs_at
    assert lr_series(state) is None and curves_figure(state.history, lr=None).axes


def test_confidence_figure_draws_each_class_faint_the_mean_bold_and_the_best_f1():
    from smartcash_fn.report.plots import class_colours, confidence_figure

    conf = np.linspace(0, 1, 101)
    rows = {f"c{i}": np.clip(1 - np.abs(conf - i / 20), 0, 1) for i in range(17)}
    rows["empty"] = np.full_like(conf, np.nan)                          # no ground truth: left out
    fig = confidence_figure(conf, rows, "F1", best=0.4)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_gid() != BEST_GID]
    assert len(lines) == 18 and lines[-1].get_linewidth() > 2 * lines[0].get_linewidth()
    assert len({tuple(ln.get_color()) for ln in lines[:-1]}) == 17 and lines[0].get_color() == class_colours(17)[0]
    mean = np.mean([rows[f"c{i}"] for i in range(17)], axis=0)
    assert lines[-1].get_label() == f"all classes {np.interp(0.4, conf, mean):.3f} at conf 0.400"
    assert [ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_gid() == BEST_GID] == [0.4]
    assert ax.get_xlabel() == "confidence" and ax.get_ylabel() == "F1"
    p = confidence_figure(conf, rows, "precision", best=0.4).axes[0]
    assert p.get_lines()[-1].get_label().endswith("at conf 0.400 (best F1)")
    with pytest.raises(sf.DataError, match="none has ground truth"):
        confidence_figure(conf, {"x": np.full_like(conf, np.nan)}, "F1")
    with pytest.raises(sf.DataError, match="class 'a' has 3 values for 101 thresholds"):
        confidence_figure(conf, {"a": [0.1, 0.2, 0.3]}, "F1")
