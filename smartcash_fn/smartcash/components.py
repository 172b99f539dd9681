"""The factories a SmartCash detector recipe names: data, model, loss and evaluator.

A recipe puts the detector together from these by name (see
:mod:`smartcash_fn.run.registry`); the data factory's ``info`` fills what the
others need — the layer groups, the input size, the class names — so a
recipe says each thing once::

    [data]                      use = "rupiah_synthetic"   (or "yolo_dataset" with data_yaml = ...)
    [model]                     use = "detector"           params: backbone, width, ...
    [train]                     loss = "detection"         loss_params: box, obj, cls
                                (or "task_aligned" for model.params.head = "decoupled": box, cls, dfl, topk, ...)
    [validation]                metrics = "detection"      params: conf, iou, max_det

In Python the same pieces compose by hand::

    splits = rupiah_synthetic(train=512, val=64, size=128)
    model = detector(splits.info["groups"], backbone="cspdarknet", width=32)
    loss_fn = detection(splits.info["groups"], image_size=128)

Global class ids follow the layer order of ``groups`` (banknote, nominal,
security): a YOLO dataset whose names are not grouped that way is relabelled
on the fly, and its class names are listed in the new order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs
import torch

from ..data import Splits
from ..errors import DataError
from ..loop import Evaluator
from . import scenes as rupiah
from .aligned import AlignedWeights, aligned_loss
from .detection import Layout, LossWeights, decode, detection_collate, detection_loss
from .detector import BINS, HEADS, Detector, sides_from_ok
from .metrics import Detections, detection_evaluator
from .yolo import Augment, group_layers, read_data_yaml, YoloDataset

# --------------------------------------------------------------------------- layers and groups


def groups_of(layers: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """The detector's head groups (layer -> number of classes) of a layer mapping, in its order.

    ``groups_of(rupiah.LAYERS) == {"banknote": 7, "nominal": 7, "security": 3}``
    """
    return {layer: len(names) for layer, names in layers.items()}


def detector_info(class_names: Sequence[str], layers: Mapping[str, Sequence[str]], image_size: int,
                  collate_fn: Callable[..., Any] = detection_collate) -> dict[str, Any]:
    """The ``info`` a detection data factory hands the other factories.

    ``groups`` (for the model, loss and evaluator), ``image_size`` (the
    square input side), ``class_names`` and ``layers`` (for the metrics and
    plots) and ``collate_fn`` (images stacked, targets kept as a list and
    padded for the loss: :func:`~smartcash_fn.smartcash.detection.detection_collate`)::

        info = detector_info(rupiah.CLASSES, rupiah.LAYERS, 256)
    """
    return {"collate_fn": collate_fn, "groups": groups_of(layers), "image_size": int(image_size),
            "class_names": tuple(class_names), "layers": {k: tuple(v) for k, v in layers.items()}}


def _check_size(size: Any, where: str) -> int:
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 32):
        raise DataError(f"{where}: size must be an integer >= 32 (pixels; a multiple of 32 tiles the grids), "
                        f"got {size!r}")
    return size


def _check_count(value: Any, name: str, where: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise DataError(f"{where}: {name} must be an integer >= 1 (scenes), got {value!r}")
    return value


# --------------------------------------------------------------------------- data: synthetic scenes


def rupiah_synthetic(train: int = 2000, val: int = 200, size: int = 256, seed: int = 0,
                     scenario: str = "mixed", val_scenario: str | None = None,
                     jitter: float = 0.0) -> Splits:
    """Synthetic Rupiah scenes: ``train`` and ``val`` :class:`~smartcash_fn.smartcash.scenes.RupiahScenes`, rendered on the fly.

    Scenes are pure functions of ``(seed, split, index)``, so a run never sees
    a validation scene in training and any worker count gives the same
    batches. ``scenario`` names the renderer's preset (``"mixed"`` draws one of
    the five per scene), ``val_scenario`` the validation's (default: the same);
    ``jitter > 0`` adds a brightness/contrast jitter of that strength per epoch::

        splits = rupiah_synthetic(train=4000, val=200, size=256)
        splits.info["groups"]      # {"banknote": 7, "nominal": 7, "security": 3}
    """
    where = "rupiah_synthetic"
    _check_count(train, "train", where)
    _check_count(val, "val", where)
    _check_size(size, where)
    if not (isinstance(jitter, (int, float)) and not isinstance(jitter, bool) and 0 <= jitter <= 1):
        raise DataError(f"{where}: jitter must be a number in [0, 1] (0 is off), got {jitter!r}")
    augment = rupiah.Jitter(brightness=jitter, contrast=jitter) if jitter else None
    train_set = rupiah.RupiahScenes("train", train, seed, size, scenario, augment=augment)
    val_set = rupiah.RupiahScenes("val", val, seed, size, scenario if val_scenario is None else val_scenario)
    return Splits(train=train_set, val=val_set, info=detector_info(rupiah.CLASSES, rupiah.LAYERS, size))


# --------------------------------------------------------------------------- data: YOLO-format folders


@attrs.frozen
class Relabeled:
    """A detection dataset whose labels go through ``table`` (old id -> new id): ``Relabeled(ds, (0, 2, 1))``.

    Used when a ``data.yaml`` lists its classes in another order than the
    detector's layer groups; ``sample(index, generator)`` passes through.
    """

    dataset: Any
    table: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.dataset)

    def _map(self, item: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target = item
        table = torch.tensor(self.table, dtype=torch.int64)
        return image, {**target, "labels": table[target["labels"]]}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._map(self.dataset[index])

    def sample(self, index: int, generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._map(self.dataset.sample(index, generator))


def layer_order(names: Sequence[str]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]], tuple[int, ...]]:
    """Class names regrouped by SmartCash layer: ``(names in layer order, layers, old id -> new id)``.

    Layers come in SmartCash's order (banknote, nominal, security), classes
    keep their order inside a layer.

    ``layer_order(["001", "l2_001", "002"])`` gives ``(("001", "002", "l2_001"), {...}, (0, 2, 1))``.
    """
    found = group_layers(names)
    rank = {layer: i for i, layer in enumerate(rupiah.LAYERS)}
    layers = {k: found[k] for k in sorted(found, key=lambda k: (rank.get(k, len(rank)), list(found).index(k)))}
    ordered = tuple(n for members in layers.values() for n in members)
    return ordered, layers, tuple(ordered.index(n) for n in names)


def _augment_of(augment: Any, where: str) -> Any:
    if augment is False or augment is None:
        return None
    if augment is True:
        return Augment()
    if isinstance(augment, Mapping):
        fields = attrs.fields_dict(Augment)
        unknown = [k for k in augment if k not in fields]
        if unknown:
            raise DataError(f"{where}: augment: unknown key {unknown[0]!r}; keys: {', '.join(fields)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()}
        try:
            return Augment(**values)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
    raise DataError(f"{where}: augment must be true, false or a table of Augment settings "
                    f"(flip, degrees, translate, scale, ...), got {augment!r}")


def yolo_dataset(data_yaml: str, size: int = 640, augment: Any = True, on_bad: str = "skip",
                 train_split: str = "train", val_split: str = "val") -> Splits:
    """A YOLO-format dataset (``data.yaml`` with train/val folders, labels ``cls cx cy w h``) as Splits.

    Images are letterboxed to ``size``; ``augment`` is ``true`` (the default
    :class:`~smartcash_fn.smartcash.yolo.Augment`), ``false``, or a table of Augment
    settings, applied to training samples only. ``on_bad`` is ``"skip"``
    (leave bad files and lines out with a warning; ``info["problems"]`` lists
    them and the run summary counts them) or ``"fail"`` (stop at the first,
    naming the file and line)::

        splits = yolo_dataset("datasets/rupiah/data.yaml", size=640, on_bad="fail")
    """
    where = "yolo_dataset"
    _check_size(size, where)
    if not isinstance(data_yaml, (str, os.PathLike)) or not str(data_yaml):
        raise DataError(f"{where}: data_yaml must be the path of a data.yaml, got {data_yaml!r}", param="data_yaml")
    try:
        spec = read_data_yaml(Path(data_yaml))
    except DataError as e:  # the file the recipe's data_yaml names: a recipe error names that key
        hint = ("" if Path(data_yaml).exists() else
                "; give your dataset's (a data.yaml, or the folder holding it): --set data.params.data_yaml=PATH")
        raise DataError(str(e) + hint, param="data_yaml") from None
    aug = _augment_of(augment, where)
    train = YoloDataset.scan(spec, train_split, size=size, augment=aug, on_bad=on_bad)
    val = YoloDataset.scan(spec, val_split, size=size, on_bad=on_bad) if val_split else None
    problems = train.problems + (val.problems if val is not None else ())
    ordered, layers, table = layer_order(spec.names)
    if table != tuple(range(len(table))):
        train = Relabeled(train, table)
        val = None if val is None else Relabeled(val, table)
    info = detector_info(ordered, layers, size)
    info["problems"] = problems
    info["data_yaml"] = str(spec.source)
    return Splits(train=train, val=val, info=info)


# --------------------------------------------------------------------------- model


def detector(groups: Mapping[str, int], backbone: str = "cspdarknet", width: int = 64, backbone_width: int = 16,
             backbone_depth: int = 1, weights_path: str | None = None, channels_last: bool = False,
             head: str = "coupled", head_depth: int = 1, sides_from: int = 0) -> Detector:
    """The SmartCash detector (:class:`~smartcash_fn.smartcash.detector.Detector`); ``groups`` comes from the data.

    ``backbone`` is ``cspdarknet`` or ``efficientnet_b0`` … ``efficientnet_b4``;
    ``width`` is the neck and head channels; ``weights_path`` a local file of
    the EfficientNet's ImageNet weights (nothing is downloaded); ``channels_last`` keeps the model and its
    inputs in ``torch.channels_last`` memory format (``model.params.channels_last = true`` in a recipe);
    ``head`` is ``"coupled"`` (box, objectness and classes; trained by ``loss = "detection"``) or
    ``"decoupled"`` (box distributions and quality-scored classes, ``head_depth`` 3x3 convolutions a branch;
    trained by ``loss = "task_aligned"``); ``sides_from`` is the decoupled head's nearest distance of a box's
    side from its cell's centre, in strides: 0 (a box holds its cell's centre), or -1 (a side may end up to a
    stride short of it: the cells beside a feature thinner than a stride fit it; docs/detection.md)::

        model = detector({"banknote": 7, "nominal": 7, "security": 3}, backbone="efficientnet_b0")
    """
    if not isinstance(channels_last, bool):
        raise DataError(f"detector: channels_last must be true or false, got {channels_last!r}")
    if head not in HEADS:
        raise DataError(f"detector: head must be one of {', '.join(repr(h) for h in HEADS)}, got {head!r}")
    if not (isinstance(head_depth, int) and not isinstance(head_depth, bool) and head_depth >= 0):
        raise DataError(f"detector: head_depth must be an integer >= 0, got {head_depth!r}")
    if not sides_from_ok(sides_from):
        raise DataError(f"detector: sides_from must be an integer from {1 - BINS} to 0 (strides), got "
                        f"{sides_from!r}", param="sides_from")
    if sides_from and head != "decoupled":
        raise DataError(f"detector: sides_from = {sides_from} is the decoupled head's; head is {head!r}",
                        param="sides_from")
    return Detector(backbone=backbone, groups=dict(groups), width=width, weights_path=weights_path,
                    backbone_width=backbone_width, backbone_depth=backbone_depth, channels_last=channels_last,
                    head=head, head_depth=head_depth, sides_from=sides_from)


# --------------------------------------------------------------------------- loss


@attrs.frozen
class DetectionLoss:
    """The loss function ``(apply, batch) -> (loss, {"box", "obj", "cls"})`` of a detector on ``(images, targets[, padded])``.

    ``DetectionLoss(Layout.of(groups), image_size=256, weights=LossWeights(0.05, 1.0, 0.5))``
    """

    layout: Layout
    image_size: int
    weights: LossWeights = LossWeights()

    def __call__(self, apply: Callable[..., Any], batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, targets = batch[0], batch[2] if len(batch) > 2 else batch[1]  # padded by the collate when there
        return detection_loss(apply(images), targets, self.layout, self.image_size, self.weights)


def detection(groups: Mapping[str, int], image_size: int, box: float = 0.05, obj: float = 1.0,
              cls: float = 0.5) -> DetectionLoss:
    """The detection loss factory: CIoU box, objectness and class losses weighted ``box``, ``obj``, ``cls``.

    The defaults are SmartCash's weights. In a recipe ``loss = "detection"``
    (``groups`` and ``image_size`` come from the data)::

        loss_fn = detection({"banknote": 7, "nominal": 7, "security": 3}, image_size=256)
        loss, parts = loss_fn(state.apply, (images, targets))
    """
    for name, value in (("box", box), ("obj", obj), ("cls", cls)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            raise DataError(f"detection: {name} must be a weight >= 0, got {value!r}")
    return DetectionLoss(Layout.of(groups), int(image_size), LossWeights(float(box), float(obj), float(cls)))


@attrs.frozen
class AlignedLoss:
    """The decoupled head's loss ``(apply, batch) -> (loss, {"box", "cls", "dfl"})`` (task-aligned assignment).

    ``AlignedLoss(Layout.of(groups), AlignedWeights(box=7.5, cls=3.0, dfl=1.5))``; see :mod:`.aligned`.
    """

    layout: Layout
    weights: AlignedWeights = AlignedWeights()

    def __call__(self, apply: Callable[..., Any], batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, targets = batch[0], batch[2] if len(batch) > 2 else batch[1]
        return aligned_loss(apply(images), targets, self.layout, self.weights)


def task_aligned(groups: Mapping[str, int], box: float = 7.5, cls: float = 3.0, dfl: float = 1.5, topk: int = 10,
                 alpha: float = 0.5, beta: float = 6.0, reach: int = 2) -> AlignedLoss:
    """The loss of the decoupled head (``model.params.head = "decoupled"``): CIoU ``box``, quality-target ``cls``
    and distribution ``dfl`` parts, ``topk`` cells per target chosen by ``score^alpha · IoU^beta`` among the
    cells inside it and those holding its centre, at the levels within ``reach`` of its size's own (0 that
    level, 2 all three).

    In a recipe ``loss = "task_aligned"`` (``groups`` comes from the data)::

        loss_fn = task_aligned({"banknote": 7, "nominal": 7, "security": 3})
        loss, parts = loss_fn(state.apply, (images, targets))
    """
    for name, value in (("box", box), ("cls", cls), ("dfl", dfl), ("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            raise DataError(f"task_aligned: {name} must be a number >= 0, got {value!r}")
    if not (isinstance(topk, int) and not isinstance(topk, bool) and topk >= 1):
        raise DataError(f"task_aligned: topk must be an integer >= 1, got {topk!r}")
    if not (isinstance(reach, int) and not isinstance(reach, bool) and reach >= 0):
        raise DataError(f"task_aligned: reach must be an integer >= 0 (levels either side), got {reach!r}")
    return AlignedLoss(Layout.of(groups), AlignedWeights(float(box), float(cls), float(dfl), topk, float(alpha),
                                                         float(beta), reach))


# --------------------------------------------------------------------------- decoding and metrics


@attrs.frozen
class Decoder:
    """Per-image detections of a batch: ``Decoder(layout)(apply, (images, targets)) -> [Detections, ...]``.

    Scores (σ(objectness)·σ(class), or σ(class) for the decoupled head) above ``conf``; class-wise NMS at
    ``iou``; at most ``max_det`` per image (see :func:`smartcash_fn.smartcash.detection.decode`).
    """

    layout: Layout
    conf: float = 0.001
    iou: float = 0.6
    max_det: int = 100

    def __call__(self, apply: Callable[..., Any], batch: Any) -> list[Detections]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return decode(apply(images), self.layout, conf=self.conf, iou=self.iou, max_det=self.max_det)


def _unit(name: str, value: Any, where: str) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
        raise DataError(f"{where}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def detection_metrics(groups: Mapping[str, int], class_names: Sequence[str],
                      layers: Mapping[str, Sequence[str]] | None = None, conf: float = 0.001, iou: float = 0.6,
                      max_det: int = 100, pr_conf: float = 0.25, per_class: bool = False) -> Evaluator:
    """The validation evaluator of a detector: ``val/mAP50``, ``val/mAP50-95``, per layer, P/R/F1.

    Detections are decoded at ``conf`` (low, so the AP sees the whole
    precision-recall curve) with NMS at ``iou`` and ``max_det`` per image;
    precision, recall and F1 are counted at ``pr_conf``. Per-class AP goes
    into the history only with ``per_class`` (17 classes x 2 numbers an epoch
    otherwise crowd the logs; ``smartcash-fn eval`` always reports them)::

        ev = detection_metrics(groups, rupiah.CLASSES, rupiah.LAYERS)
        # the epoch record gets val/mAP50, val/mAP50-95, val/mAP50/banknote, ...
    """
    where = "detection_metrics"
    conf, iou, pr_conf = _unit("conf", conf, where), _unit("iou", iou, where), _unit("pr_conf", pr_conf, where)
    if not (isinstance(max_det, int) and not isinstance(max_det, bool) and max_det >= 1):
        raise DataError(f"{where}: max_det must be an integer >= 1, got {max_det!r}")
    inner = detection_evaluator(Decoder(Layout.of(groups), conf, iou, max_det), class_names, layers,
                                conf=pr_conf, max_dets=max_det)
    if per_class:
        return inner

    def finish(acc: Any) -> dict[str, float]:
        return {k: v for k, v in inner.finish(acc).items() if not k.startswith(("AP50/", "AP50-95/"))}

    return attrs.evolve(inner, finish=finish)
