"""Detection plots of a trained detector: PR curves, the confusion matrix and sample images with boxes.

:func:`detection_plots` is the callback a detector recipe names; at the end
of training (and, if asked, every few epochs) it runs the model over the
validation data and writes, to ``run_dir/plots`` and to TensorBoard:

- ``pr_curves.png`` — precision-recall per class at IoU 0.5, AP in the legend;
- ``f1_curve.png``, ``p_curve.png``, ``r_curve.png`` — F1, precision and
  recall at IoU 0.5 against the confidence threshold, per class and their
  mean, the threshold of the best mean F1 marked: where to set ``conf``;
- ``confusion_matrix.png`` — rows true, columns predicted, a background row
  and column for missed and spurious boxes, each row normalized;
- ``val_samples.png`` — validation images, true boxes in white, predictions
  coloured by layer with their class and score.

The pieces are pure functions too::

    image = draw_boxes(images[0], dets[0], targets[0], rupiah.CLASSES)     # uint8 [3, H, W]
    samples_figure([image, ...]).savefig("samples.png")
    loop = loop.add(detection_plots("runs/a", val_data, groups, rupiah.CLASSES, rupiah.LAYERS))
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .._files import ensure_folder
from ..errors import StateError
from ..events import Callback, writer
from ..report.plots import confidence_figure, confusion_matrix_figure, pr_curve_figure, save_figure
from ..report.sinks import tensorboard_figures
from ..state import TrainState
from .components import Decoder
from .detection import Layout
from .metrics import DetectionReport, Detections, as_detections, as_targets, evaluate
from .table import final_detections

LAYER_COLOURS = {"banknote": "#ff3b30", "nominal": "#ffcc00", "security": "#34c759"}
"""Box colour of a prediction by its class's layer (others are cyan)."""

TRUTH_COLOUR = "#ffffff"


def _as_uint8(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def draw_boxes(image: torch.Tensor, detections: Any = None, target: Any = None,
               class_names: Sequence[str] = (), layers: Mapping[str, Sequence[str]] | None = None,
               conf: float = 0.25, width: int = 2, scale: int = 1) -> torch.Tensor:
    """``image`` (float in [0, 1] or uint8, ``[3, H, W]``) with true boxes (white, thin) and predictions drawn.

    Predictions scoring at least ``conf`` are labelled ``"<class> <score>"``
    and coloured by layer (:data:`LAYER_COLOURS`); ``scale`` enlarges a small
    image (nearest pixel) first, so the labels stay readable::

        drawn = draw_boxes(images[0], Detections(boxes, scores, labels), {"boxes": b, "labels": l}, CLASSES)
    """
    from torchvision.utils import draw_bounding_boxes

    out = _as_uint8(image)
    if scale > 1:
        out = out.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
        if detections is not None:
            d = as_detections(detections)
            detections = Detections(d.boxes.detach().float() * scale, d.scores, d.labels)
        if target is not None:
            t = as_targets(target)
            target = {"boxes": t.boxes.detach().float() * scale, "labels": t.labels}
    layer_of = {n: layer for layer, names in (layers or {}).items() for n in names}

    def name(i: int) -> str:
        return class_names[i] if 0 <= i < len(class_names) else str(i)

    if target is not None:
        t = as_targets(target)
        if len(t.boxes):
            out = draw_bounding_boxes(out, t.boxes.detach().float().cpu(), colors=TRUTH_COLOUR, width=1)
    if detections is not None:
        d = as_detections(detections)
        keep = d.scores.detach().cpu() >= conf
        boxes, scores, labels = d.boxes.detach().float().cpu()[keep], d.scores.cpu()[keep], d.labels.cpu()[keep]
        if len(boxes):
            texts = [f"{name(int(c))} {float(s):.2f}" for c, s in zip(labels, scores)]
            colours = [LAYER_COLOURS.get(layer_of.get(name(int(c)), ""), "#00c7ff") for c in labels]
            out = draw_bounding_boxes(out, boxes, labels=texts, colors=colours, width=width, font=label_font(),
                                      font_size=label_size(out.shape[-2:]), label_colors="white",
                                      label_background_colors=colours, fill_labels=True)
    return out


def label_font() -> str | None:
    """A bold TrueType font for box labels (matplotlib's DejaVu Sans Bold), or None for torchvision's own."""
    from matplotlib import font_manager

    try:
        return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold"),
                                     fallback_to_default=True)
    except (ValueError, OSError):
        return None


def label_size(shape: Sequence[int]) -> int:
    """The label font size for an image of ``shape`` (H, W): about 1/40 of the shorter side, 10 px at least.

    ``label_size((640, 640))`` is 16; ``label_size((192, 192))`` is 10.
    """
    return max(10, round(min(int(shape[0]), int(shape[1])) / 40))


def samples_figure(images: Sequence[torch.Tensor], titles: Sequence[str] | None = None, columns: int = 4,
                   title: str = "Validation samples (white: truth, coloured: predictions)") -> Any:
    """A matplotlib figure showing uint8 ``[3, H, W]`` images in a grid: ``samples_figure(drawn[:8])``."""
    from matplotlib.figure import Figure

    if not images:
        raise StateError("samples_figure: no images to show")
    cols = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / cols)
    fig = Figure(figsize=(4.0 * cols, 4.1 * rows + 0.4), dpi=100, layout="constrained")
    for i, image in enumerate(images):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_axis_off()
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def report_figures(report: DetectionReport) -> list[tuple[str, Any]]:
    """The PR-curve, confidence-curve (F1, P, R) and normalized confusion-matrix figures of a report, as
    ``(name, figure)`` pairs.

    ``save_figures(report_figures(evaluate(dets, tgts, names, layers)), "runs/a/plots")``
    """
    out = []
    curves = report.pr_curves()
    if curves:
        ap = {n: float(a) for n, a in zip(report.class_names, report.ap50) if n in curves}
        out.append(("pr_curves", pr_curve_figure(curves, ap=ap, title="Precision-recall at IoU 0.5")))
    by_conf = report.by_conf
    if by_conf is not None and bool(report.has_gt.any()):
        best = by_conf.best()[0]
        for name, values, metric in (("f1_curve", by_conf.f1, "F1"), ("p_curve", by_conf.precision, "precision"),
                                     ("r_curve", by_conf.recall, "recall")):
            rows = {n: values[c] for c, n in enumerate(report.class_names) if report.has_gt[c]}
            out.append((name, confidence_figure(by_conf.conf, rows, metric, best=best,
                                                title=f"{metric} against confidence at IoU 0.5")))
    out.append(("confusion_matrix", confusion_matrix_figure(report.confusion, list(report.class_names) + ["background"],
                                                            normalize=True,
                                                            title=f"Confusion matrix (conf {report.conf:g}, IoU 0.5)")))
    return out


def _first_images(batches: Any, count: int) -> tuple[list[torch.Tensor], list[Any]]:
    images: list[torch.Tensor] = []
    targets: list[Any] = []
    for batch in batches:
        for image, target in zip(batch[0], batch[1]):
            images.append(image)
            targets.append(target)
            if len(images) >= count:
                return images, targets
    return images, targets


def detection_plots(run_dir: str | os.PathLike | None, val_data: Any, groups: Mapping[str, int],
                    class_names: Sequence[str], layers: Mapping[str, Sequence[str]] | None = None,
                    every_epochs: int = 0, samples: int = 8, conf: float = 0.001, iou: float = 0.6,
                    max_det: int = 100, pr_conf: float = 0.25, tensorboard: bool = True, use_ema: bool = False,
                    priority: int = 650, name: str = "detection_plots") -> tuple[Callback, ...]:
    """Callbacks writing the detection plots at ``training_end`` (and every ``every_epochs`` epochs; 0: only at the end).

    In a recipe the data fills ``val_data``, ``groups``, ``class_names``,
    ``layers``, and the run its ``run_dir`` and ``use_ema`` (the EMA params
    are plotted when validation measures them); without a run folder (a
    check) nothing is written. ``samples`` validation images are drawn; the
    plots go to TensorBoard as well unless ``tensorboard = false`` (in a
    recipe it follows ``loggers.tensorboard`` unless the table sets it)::

        [[callbacks]]
        use = "detection_plots"
        samples = 8
    """
    if run_dir is None or val_data is None:
        return ()
    if not isinstance(every_epochs, int) or isinstance(every_epochs, bool) or every_epochs < 0:
        raise StateError(f"{name}: every_epochs must be an integer >= 0, got {every_epochs!r}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
        raise StateError(f"{name}: samples must be an integer >= 0, got {samples!r}")
    decoder = Decoder(Layout.of(groups), conf, iou, max_det)
    names = tuple(class_names)
    folder = Path(run_dir) / "plots"

    def write(state: TrainState) -> None:
        if state.model is None:
            return
        dets, tgts = final_detections(state, val_data, decoder, use_ema)  # shared with detection_table
        report = evaluate(dets, tgts, names, layers, conf=pr_conf, max_dets=max_det)
        figures = report_figures(report)
        if samples:
            images, targets = _first_images(val_data.batches(state.seed, 0, 0), samples)
            scale = max(1, -(-384 // max(1, int(images[0].shape[-1])))) if images else 1
            drawn = [draw_boxes(img, d, t, names, layers, conf=max(pr_conf, conf), scale=scale)
                     for img, d, t in zip(images, dets, targets)]
            figures.append(("val_samples", samples_figure(drawn)))
        ensure_folder(folder, name)
        step = state.progress.step
        if tensorboard:
            tensorboard_figures(run_dir, [(f"val/{n}", fig) for n, fig in figures], step)
        for fig_name, fig in figures:
            save_figure(fig, folder / f"{fig_name}.png")

    def epoch_end(state: TrainState) -> TrainState:
        if every_epochs and state.progress.epoch % every_epochs == 0 and state.progress.epoch < state.run.epochs:
            write(state)
        return state

    def end(state: TrainState) -> TrainState:
        if state.history.epochs and not (state.stop is not None and state.stop.failed):
            write(state)
        return state

    return (writer("epoch_end", epoch_end, priority=priority, name=name),
            writer("training_end", end, priority=priority, name=name))
