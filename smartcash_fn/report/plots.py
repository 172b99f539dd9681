"""Plots: metric curves over epochs, confusion matrices, precision-recall and confidence curves, as matplotlib figures.

The figure functions are pure — data in, a ``matplotlib.figure.Figure`` out,
drawn by the Agg backend without pyplot, so nothing depends on a display or
on pyplot's global figure list. :func:`plot_curves` is the callback that
saves the curves as PNGs under ``run_dir/plots``::

    loop = loop.add(plot_curves("runs/a"))              # runs/a/plots/curves.png: every panel in one
    fig = curves_figure(state.history, state.best)       # the same figure, in hand
    confusion_matrix_figure(matrix, ["001", "002", "005"]).savefig("cm.png")

Epochs are numbered from 1 on every axis, as the checkpoint files are
(``epoch-0003.pt`` holds the third epoch).
"""

from __future__ import annotations

import bisect
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import attrs

from .._files import ensure_folder, write_atomic
from ..errors import DataError, StateError
from ..events import Callback, writer
from ..state import Best, History, TrainState
from .values import fmt_value, number

SPLITS = ("train", "val", "test")
_SKIP = ("epoch", "step")
BEST_GID = "best"


# --------------------------------------------------------------------------- metric groups


def metric_group(key: str) -> tuple[str, str]:
    """The panel a metric key is drawn in and its label there: ``(group, label)``.

    ``train/loss`` and ``val/loss`` share the panel ``loss`` (labels ``train``
    and ``val``); ``lr`` and ``lr/head`` share ``lr``; any other key is its own::

        metric_group("val/mAP50")   # ("mAP50", "val")
    """
    head, _, rest = key.partition("/")
    if rest and head in SPLITS:
        return rest, head
    if head == "lr":
        return "lr", key
    return key, key


def metric_groups(history: History) -> dict[str, list[str]]:
    """The numeric epoch-record keys of ``history`` grouped into panels, in first-seen order.

    ``metric_groups(state.history)`` gives ``{"loss": ["train/loss", "val/loss"], "acc": ["val/acc"], "lr": ["lr"]}``.
    """
    groups: dict[str, list[str]] = {}
    for rec in history.epochs:
        for k, v in rec.items():
            if k in _SKIP or number(v) is None:
                continue
            g, _ = metric_group(k)
            keys = groups.setdefault(g, [])
            if k not in keys:
                keys.append(k)
    return groups


def _series(history: History, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, rec in enumerate(history.epochs):
        y = number(rec.get(key))
        if y is None:
            continue
        e = number(rec.get("epoch"))
        xs.append((i if e is None else e) + 1)
        ys.append(y)
    return xs, ys


# --------------------------------------------------------------------------- the learning rate of every update

Series = tuple[list[float], list[float]]
"""A curve: its x values (epochs) and its y values."""


def _updates(opt_state: Any) -> int:
    """The updates an optimizer state has applied: its largest ``count`` (every optimizer here keeps one)."""
    if not isinstance(opt_state, Mapping):
        return 0
    own = opt_state.get("count")
    counts = [own] if isinstance(own, int) and not isinstance(own, bool) else []
    return max(counts + [_updates(v) for v in opt_state.values()] + [0])


def _epoch_scales(history: History, lrs_at: Any, per_update: float) -> tuple[list[float], list[float]]:
    """Each epoch record's step and the ``lr_scale`` its epoch trained with (recorded lr / the schedule's).

    A plateau callback changes ``lr_scale`` after an epoch's record is made, so
    an epoch trains at the scale its own record shows; where the schedule's
    rate is 0 there (the end of a cosine) the scale cannot be read, and the
    epoch before it lends its own.
    """
    steps, scales, scale = [], [], 1.0
    for rec in history.epochs:
        s = number(rec.get("step"))
        if s is None:
            continue
        for label, unscaled in lrs_at(round(s / per_update), 1.0).items():
            y = number(rec.get("lr" if label == "" else f"lr/{label}"))
            if y is not None and unscaled > 0:
                scale = y / unscaled
                break
        steps.append(s)
        scales.append(scale)
    return steps, scales


def lr_series(state: TrainState, points: int = 2000) -> dict[str, Series] | None:
    """The learning rate of every update of the run so far, on an epoch axis: ``{"lr": (epochs, rates)}``
    (``"lr/<group>"`` per parameter group), or None when the optimizer cannot say (no ``lrs_at``).

    The schedule is a pure function of the update count, so the rates come
    from ``state.optimizer.lrs_at`` (nothing is recorded per step); update
    ``k`` sits at ``k x steps per update / batches per epoch``, so the end of
    epoch ``e`` is at ``e``, where its epoch record's ``lr`` is drawn. Each
    epoch's ``lr_scale`` (reduce on plateau) comes from its record. At most
    ``points`` updates are drawn, evenly spaced::

        curves_figure(state.history, state.best, lr=lr_series(state))
    """
    lrs_at = getattr(state.optimizer, "lrs_at", None)
    updates, steps, batches = _updates(state.opt_state), state.progress.step, state.run.batches
    if lrs_at is None or not updates or not steps or not batches:
        return None
    per_update = steps / updates  # batches per update: gradient accumulation
    ends, scales = _epoch_scales(state.history, lrs_at, per_update)
    stride = max(1, math.ceil(updates / points))
    out: dict[str, Series] = {}
    for k in [*range(0, updates, stride), updates]:
        at = k * per_update
        i = bisect.bisect_right(ends, at)
        scale = scales[i] if i < len(scales) else state.lr_scale
        for label, lr in lrs_at(k, scale).items():
            xs, ys = out.setdefault("lr" if label == "" else f"lr/{label}", ([], []))
            xs.append(at / batches)
            ys.append(float(lr))
    return out or None


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


# --------------------------------------------------------------------------- curves


def _draw_group(ax: Any, history: History, group: str, keys: Sequence[str], best: Best | None,
                lr: Mapping[str, Series] | None = None) -> None:
    many = len(history.epochs) > 40
    lr = lr or {}
    for key in keys:
        _, label = metric_group(key)
        if key in lr:  # every update's rate: a warm-up shows
            ax.plot(*lr[key], linewidth=1.5, label=label)
            continue
        xs, ys = _series(history, key)
        ax.plot(xs, ys, marker=None if many else "o", markersize=3, linewidth=1.5, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.set_title(group)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
    ax.grid(True, alpha=0.3)
    values = [y for k in keys for y in (lr[k][1] if k in lr else _series(history, k)[1]) if math.isfinite(y)]
    if group == "lr" and values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")
    if best is not None:
        bx = best.epoch + 1
        ax.axvline(bx, linestyle="--", linewidth=1, color="0.45", gid=BEST_GID)
        if best.monitor in keys:
            ax.plot([bx], [best.value], linestyle="none", marker="*", markersize=14, color="gold",
                    markeredgecolor="black", zorder=5, gid=BEST_GID,
                    label=f"best {fmt_value(best.value)} (epoch {bx})")
    if len(keys) > 1 or metric_group(keys[0])[1] != group or (best is not None and best.monitor in keys):
        ax.legend(fontsize=8)  # every series says what it is (train, val), also alone in its panel


def curves_figure(history: History, best: Best | None = None, groups: Mapping[str, Sequence[str]] | None = None,
                  lr: Mapping[str, Series] | None = None) -> Any:
    """A figure of the metric curves over epochs: one panel per metric, train beside val.

    With ``best`` (``state.best``) every panel has a dashed line at the best
    epoch and the monitored metric's panel a star at its value (artists with
    ``gid="best"``). ``groups`` picks panels (default :func:`metric_groups`);
    ``lr`` (:func:`lr_series`) draws the learning rate of every update rather
    than one point per epoch::

        curves_figure(state.history, state.best, lr=lr_series(state)).savefig("curves.png")
    """
    groups = dict(metric_groups(history) if groups is None else groups)
    n = max(len(groups), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _figure(4.2 * cols, 3.2 * rows)
    if not groups:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no epoch metrics yet", ha="center", va="center")
        ax.set_axis_off()
        return fig
    for i, (group, keys) in enumerate(groups.items()):
        _draw_group(fig.add_subplot(rows, cols, i + 1), history, group, keys, best, lr)
    if best is not None and any(best.monitor in keys for keys in groups.values()):
        fig.suptitle(f"best {best.monitor} {fmt_value(best.value)} at epoch {best.epoch + 1}", fontsize=11)
    return fig


def _safe_name(group: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", group).strip("_") or "metric"


def save_figure(figure: Any, path: str | os.PathLike) -> Path:
    """Save ``figure`` as a PNG at ``path`` atomically (:func:`~smartcash_fn._files.write_atomic`) and release it.

    ``save_figure(curves_figure(state.history), "runs/a/plots/curves.png")``
    """
    try:
        return write_atomic(path, lambda f: figure.savefig(f, format="png"))
    finally:
        figure.clear()


def write_curves(folder: str | os.PathLike, history: History, best: Best | None = None,
                 per_metric: bool = False, lr: Mapping[str, Series] | None = None) -> list[Path]:
    """Write ``curves.png`` (all panels) and, with ``per_metric``, one ``<metric>.png`` per panel.

    ``write_curves("runs/a/plots", state.history, state.best, lr=lr_series(state))`` returns the paths written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [save_figure(curves_figure(history, best, lr=lr), folder / "curves.png")]
    if per_metric:
        for group, keys in metric_groups(history).items():
            fig = curves_figure(history, best, {group: keys}, lr=lr)
            paths.append(save_figure(fig, folder / f"{_safe_name(group)}.png"))
    return paths


def plot_curves(run_dir: str | os.PathLike, every_epochs: int | None = None, per_metric: bool = False,
                priority: int = 600, name: str = "plot_curves") -> tuple[Callback, ...]:
    """Callbacks saving the metric curves as PNGs in ``run_dir/plots``, the best epoch marked.

    ``curves.png`` holds every panel and, with ``per_metric``, ``loss.png``,
    ``acc.png``, ``lr.png``... one each; the learning rate is drawn for every
    update (:func:`lr_series`), so a warm-up shows; the best epoch comes from
    ``state.best`` (its monitor and epoch). They are always written at
    ``training_end``; during the run every ``every_epochs`` epochs (0: never),
    or by default at an epoch end from the second on, once the time since the
    last drawing is at least 20 times what drawing took, so plots cost at most
    about 5% of a run whose epochs are short, and are fresh after each epoch of
    a long one (:func:`curves_due`)::

        loop = loop.add(keep_best(Monitor("val/acc", "max")), plot_curves("runs/a"))
    """
    if every_epochs is not None and (not isinstance(every_epochs, int) or isinstance(every_epochs, bool)
                                     or every_epochs < 0):
        raise StateError(f"{name}: every_epochs must be None or an int >= 0, got {every_epochs!r}")
    if not isinstance(run_dir, (str, os.PathLike)):
        raise StateError(f"{name}: run_dir must be a path (str or os.PathLike), got {type(run_dir).__name__}")
    folder = Path(run_dir) / "plots"
    clock = _Clock()  # wall time lives here, never in the state

    def write(state: TrainState) -> None:
        t0 = time.perf_counter()
        ensure_folder(folder, name)
        write_curves(folder, state.history, state.best, per_metric, lr_series(state))
        clock.done = time.perf_counter()
        clock.took = clock.done - t0

    def start(state: TrainState) -> TrainState:
        clock.done, clock.took = (time.perf_counter() if every_epochs is None else None), 0.0
        return state

    def epoch_end(state: TrainState) -> TrainState:
        if curves_due(state.progress.epoch, every_epochs, clock.done, clock.took, time.perf_counter()):
            write(state)
        return state

    def end(state: TrainState) -> TrainState:
        if state.history.epochs:
            write(state)
        return state

    return (
        writer("training_start", start, priority=priority, name=name),
        writer("epoch_end", epoch_end, priority=priority, name=name),
        writer("training_end", end, priority=priority + 450, name=name),
    )


@attrs.define
class _Clock:
    """When the curves were last drawn and how long drawing took (wall time, kept by the callback)."""

    done: float | None = None
    took: float = 0.0


def curves_due(epoch: int, every_epochs: int | None, done: float | None, took: float, now: float) -> bool:
    """Whether the curves are drawn at this epoch end: every ``every_epochs``, or (None) from the second epoch on,
    once the time since the last drawing ``done`` is at least 20 times what drawing ``took``.

    By time, the first epoch is never drawn: its curves are single points, and its end is what a
    :func:`~smartcash_fn.callbacks.time_budget` times, so a first drawing (seconds, with matplotlib's import)
    would be counted into the plan as part of every epoch.
    ``curves_due(4, 2, None, 0.0, now)`` is True; ``curves_due(3, None, now - 1.0, 0.1, now)`` is False.
    """
    if every_epochs is not None:
        return bool(every_epochs) and epoch % every_epochs == 0
    return epoch >= 2 and (done is None or now - done >= 20 * took)


# --------------------------------------------------------------------------- classes


def _as_array(x: Any, what: str) -> Any:
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=float)
    except (TypeError, ValueError) as e:
        raise DataError(f"{what}: expected numbers, got {type(x).__name__} ({e})") from None


def confusion_matrix_figure(matrix: Any, class_names: Sequence[str], normalize: bool = True,
                            title: str = "Confusion matrix") -> Any:
    """A heat map of a confusion matrix (rows: true class, columns: predicted class).

    ``matrix`` is ``n x n`` counts (tensor, array or nested lists) and
    ``class_names`` its ``n`` names (add ``"background"`` yourself for a
    detector's missed and spurious boxes). With ``normalize`` each row is
    divided by its total, so the diagonal reads as per-class recall::

        fig = confusion_matrix_figure(cm, ["001", "002", "005"], normalize=True)
    """
    import numpy as np

    m = _as_array(matrix, "confusion_matrix_figure: matrix")
    names = [str(c) for c in class_names]
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise DataError(f"confusion_matrix_figure: matrix must be square (n x n), got shape {tuple(m.shape)}")
    if len(names) != m.shape[0]:
        raise DataError(f"confusion_matrix_figure: {len(names)} class names for a {m.shape[0]} x {m.shape[0]} "
                        "matrix; give one name per row")
    if normalize:
        totals = m.sum(axis=1, keepdims=True)
        m = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    n = m.shape[0]
    side = max(4.0, 0.45 * n + 2.5)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(m.max()), 1.0)
    image = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=90 if n > 8 else 45, ha="center" if n > 8 else "right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (normalized)" if normalize else title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                v = m[i, j]
                text = f"{v:.2f}" if normalize else f"{v:.0f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7 if n > 12 else 9,
                        color="white" if v > vmax / 2 else "black")
    return fig


def _sorted_curve(recall: Any, precision: Any, name: str) -> tuple[Any, Any]:
    import numpy as np

    r = _as_array(recall, f"pr_curve_figure: recall of {name!r}").reshape(-1)
    p = _as_array(precision, f"pr_curve_figure: precision of {name!r}").reshape(-1)
    if r.shape != p.shape:
        raise DataError(f"pr_curve_figure: class {name!r} has {r.size} recall and {p.size} precision values; "
                        "give one precision per recall")
    order = np.argsort(r, kind="stable")
    return r[order], p[order]


def pr_curve_figure(curves: Mapping[str, tuple[Any, Any]], ap: Mapping[str, float] | None = None,
                    title: str = "Precision-recall", grid: int = 101) -> Any:
    """Precision-recall curves per class and their mean over classes, AP in the legend when given.

    ``curves`` maps a class name to ``(recall, precision)`` arrays; the mean
    curve averages the classes' precision interpolated on ``grid`` recall
    points; ``ap`` maps class names to average precision (the mean is the mAP)::

        pr_curve_figure({"001": (r1, p1), "002": (r2, p2)}, ap={"001": 0.91, "002": 0.84})
    """
    import numpy as np

    if not isinstance(curves, Mapping) or not curves:
        raise DataError("pr_curve_figure: curves must be a non-empty mapping class name -> (recall, precision)")
    fig = _figure(6.5, 5.0)
    ax = fig.add_subplot()
    xs = np.linspace(0.0, 1.0, grid)
    stacked = []
    show_each = len(curves) <= 20
    colours = class_colours(len(curves))
    for (name, pair), colour in zip(curves.items(), colours):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise DataError(f"pr_curve_figure: curves[{name!r}] must be a pair (recall, precision)")
        r, p = _sorted_curve(pair[0], pair[1], name)
        if r.size:
            stacked.append(np.interp(xs, r, p, left=p[0], right=0.0))
        label = f"{name} {ap[name]:.3f}" if ap and name in ap else str(name)
        ax.plot(r, p, linewidth=1, alpha=0.8, color=colour, label=label if show_each else None)
    if stacked:
        mean_ap = f" mAP {sum(ap.values()) / len(ap):.3f}" if ap else ""
        ax.plot(xs, np.mean(stacked, axis=0), linewidth=2.5, color="black", label=f"all classes{mean_ap}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return fig


def confidence_figure(conf: Any, curves: Mapping[str, Any], metric: str, best: float | None = None,
                      title: str | None = None) -> Any:
    """A metric (``"F1"``, ``"precision"``, ``"recall"``) of each class against the confidence threshold: each class
    faint in its own colour (:func:`class_colours`), their mean bold; ``best`` (the threshold where the mean F1
    peaks) is a dashed line, the mean's value there in the legend.

    ``curves`` maps a class name to its values at the thresholds ``conf``; a
    class whose values are all NaN (no ground truth) is left out::

        confidence_figure(np.linspace(0, 1, 101), {"001": f1_a, "002": f1_b}, "F1", best=0.31)
    """
    import numpy as np

    x = _as_array(conf, "confidence_figure: conf").reshape(-1)
    rows = {}
    for name, values in curves.items():
        y = _as_array(values, f"confidence_figure: {metric} of {name!r}").reshape(-1)
        if y.shape != x.shape:
            raise DataError(f"confidence_figure: class {name!r} has {y.size} values for {x.size} thresholds; "
                            "give one value per threshold")
        if not np.isnan(y).all():
            rows[str(name)] = y
    if not rows:
        raise DataError("confidence_figure: no class has values (none has ground truth)")
    fig = _figure(6.5, 5.0)
    ax = fig.add_subplot()
    show_each = len(rows) <= 20
    for (name, y), colour in zip(rows.items(), class_colours(len(rows))):
        ax.plot(x, y, linewidth=1, alpha=0.45, color=colour, label=name if show_each else None)
    mean = np.mean(np.stack(list(rows.values())), axis=0)
    label = "all classes"
    if best is not None and math.isfinite(best):
        at = float(np.interp(best, x, mean))
        label += f" {at:.3f} at conf {best:.3f}" + ("" if metric == "F1" else " (best F1)")
        ax.axvline(best, linestyle="--", linewidth=1, color="0.45", gid=BEST_GID)
    ax.plot(x, mean, linewidth=2.5, color="black", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} against confidence")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left" if metric != "recall" else "upper right")
    return fig


def class_colours(n: int) -> list[Any]:
    """``n`` distinct colours, one per class: matplotlib's 20-colour ``tab20`` up to 20, then evenly spaced hues.

    ``class_colours(17)`` gives 17 different RGBA tuples (ten colours repeated, the old cycle, made 17
    classes share colours).
    """
    from matplotlib import colormaps

    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def save_figures(items: Iterable[tuple[str, Any]], folder: str | os.PathLike) -> list[Path]:
    """Save ``(name, figure)`` pairs as ``folder/<name>.png``; the paths written.

    ``save_figures([("confusion", confusion_matrix_figure(cm, names))], "runs/a/plots")``
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [save_figure(fig, folder / f"{_safe_name(name)}.png") for name, fig in items]
