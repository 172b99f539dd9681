"""The detector's table at the end of training: P, R, F1 and AP per class, per layer and for all classes.

:func:`detection_table` is the callback a detector recipe names; when the
run ends it runs the final params (the restored best when early stopping
restored them; the EMA params when validation measures those) over the
validation data and says the table ``smartcash-fn eval`` prints, on the
console and as a section of ``summary.md``
(:func:`smartcash_fn.report.summary.add_section`)::

    loop = loop.add(detection_table(val_data, groups, rupiah.CLASSES, rupiah.LAYERS))
    report = final_report(state, val_data, Decoder(Layout.of(groups)), rupiah.CLASSES, rupiah.LAYERS)
    print(report.table())
"""

from __future__ import annotations

import weakref
from typing import Any, Mapping, Sequence

from ..errors import StateError
from ..events import Callback, writer
from ..report.summary import add_section
from ..report.values import plural
from ..state import TrainState
from .components import Decoder
from .detection import Layout
from .metrics import DetectionReport, collect_detections, evaluate

TITLE = "Validation of the final params"
"""The section's title in ``summary.md`` (the console says it before the table)."""


_COLLECTED: "weakref.WeakKeyDictionary[TrainState, list[tuple[Any, Decoder, bool, Any]]]" = weakref.WeakKeyDictionary()


def final_detections(state: TrainState, val_data: Any, decoder: Decoder, use_ema: bool = False) -> Any:
    """``(detections, targets)`` of ``state``'s params (its EMA params when ``use_ema`` and held) on ``val_data``.

    A state never changes, so the pass is made once per state, data and
    decoder: the end-of-run table and plots share it instead of each running
    the model over the validation set::

        dets, targets = final_detections(state, val_data, Decoder(Layout.of(groups)))
    """
    seen = _COLLECTED.setdefault(state, [])
    for data, dec, ema_flag, result in seen:
        if data is val_data and dec == decoder and ema_flag == use_ema:
            return result
    ema = state.extras.get("ema") if use_ema else None
    params, buffers = (ema["params"], ema["buffers"]) if ema is not None else (None, None)
    apply = lambda x: state.apply(x, params=params, buffers=buffers)  # noqa: E731 - eval mode, no gradient
    result = collect_detections(decoder, apply, val_data.batches(state.seed, 0, 0))
    seen.append((val_data, decoder, use_ema, result))
    return result


def final_report(state: TrainState, val_data: Any, decoder: Decoder, class_names: Sequence[str],
                 layers: Mapping[str, Sequence[str]] | None = None, pr_conf: float = 0.25, use_ema: bool = False
                 ) -> DetectionReport:
    """The :class:`~smartcash_fn.smartcash.metrics.DetectionReport` of ``state``'s params on ``val_data``.

    The EMA params when ``use_ema`` and the state holds them; P, R and F1 at
    score ``pr_conf``, as ``eval`` measures them::

        final_report(state, val_data, Decoder(Layout.of(groups)), names, layers).table()
    """
    dets, tgts = final_detections(state, val_data, decoder, use_ema)
    return evaluate(dets, tgts, tuple(class_names), layers, conf=pr_conf, max_dets=decoder.max_det)


def section_of(report: DetectionReport) -> tuple[str, str, str]:
    """The summary section of ``report``: its title, its Markdown (the table in a fenced block) and its text.

    ``title, markdown, text = section_of(report)``
    """
    title = f"{TITLE} ({plural(report.num_images, 'validation image')})"
    table = report.table()
    return title, f"```text\n{table}\n```\n", table


def detection_table(val_data: Any, groups: Mapping[str, int], class_names: Sequence[str],
                    layers: Mapping[str, Sequence[str]] | None = None, conf: float = 0.001, iou: float = 0.6,
                    max_det: int = 100, pr_conf: float = 0.25, use_ema: bool = False, priority: int = 640,
                    name: str = "detection_table") -> tuple[Callback, ...]:
    """A ``training_end`` callback saying the per-class and per-layer table of the final params.

    In a recipe the data fills ``val_data``, ``groups``, ``class_names`` and
    ``layers``, and the run ``use_ema``; decoding is ``eval``'s (``conf``,
    ``iou``, ``max_det``; P/R/F1 at ``pr_conf``). Nothing is said for a run
    that failed or trained no epoch::

        [[callbacks]]
        use = "detection_table"
    """
    if val_data is None:
        return ()
    if not isinstance(max_det, int) or isinstance(max_det, bool) or max_det < 1:
        raise StateError(f"{name}: max_det must be an integer >= 1, got {max_det!r}")
    decoder = Decoder(Layout.of(groups), conf, iou, max_det)

    def end(state: TrainState) -> TrainState:
        if state.model is None or not state.history.epochs or (state.stop is not None and state.stop.failed):
            return state
        report = final_report(state, val_data, decoder, class_names, layers, pr_conf, use_ema)
        add_section(*section_of(report))
        return state

    return (writer("training_end", end, priority=priority, name=name),)
