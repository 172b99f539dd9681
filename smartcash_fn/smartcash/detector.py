"""The SmartCash detector: a backbone, an FPN/PAN neck and a YOLO-style head per label layer.

Backbones give feature maps at strides 8, 16 and 32: torchvision's
EfficientNet-B0 … B4 (SmartCash's choice) or a small CSPDarknet-style
baseline (what SmartCash compares it with). The neck mixes them top-down and
bottom-up; the head has one output group per layer (banknote, nominal,
security), each predicting, per grid cell, a box (4), an objectness logit (1)
and that layer's class logits. Weights are random unless a local file is
given — nothing is downloaded::

    model = Detector(backbone="efficientnet_b0", groups={"banknote": 7, "nominal": 7, "security": 3})
    out = model(images)                 # {"banknote": [p8, p16, p32], ...}, each [B, 5 + C, H, W]
    model.strides                       # (8, 16, 32)
"""

from __future__ import annotations

import math
import os
import pickle
from typing import Mapping, Sequence

import torch
import torchvision
from torch import nn

from ..errors import StateError

STRIDES = (8, 16, 32)
BINS = 16
"""Distance bins of the decoupled head from its cell's centre outwards: each side of a box is a distribution over
0 … 15 strides, and over ``sides_from`` … 15 when the head reaches below zero (``DecoupledHead(sides_from=-1)``)."""
HEADS = ("coupled", "decoupled")
EFFICIENTNETS = tuple(f"efficientnet_b{i}" for i in range(5))
BACKBONES = EFFICIENTNETS + ("cspdarknet",)


def sides_from_ok(value: object) -> bool:
    """Whether ``value`` is a nearest side distance a decoupled head can have: an integer from ``1 − BINS`` to 0
    strides (bools are not integers here)::

        sides_from_ok(-1), sides_from_ok(1), sides_from_ok(True)   # (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool) and -BINS < value <= 0


def conv_bn(c_in: int, c_out: int, k: int = 3, s: int = 1) -> nn.Sequential:
    """Conv, BatchNorm, SiLU: the unit every part here is made of."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class CSPBlock(nn.Module):
    """A cross-stage-partial block: half the channels pass, half go through ``n`` residual pairs."""

    def __init__(self, c: int, n: int = 1):
        super().__init__()
        h = c // 2
        self.split = conv_bn(c, 2 * h, 1)
        self.blocks = nn.ModuleList(nn.Sequential(conv_bn(h, h, 3), conv_bn(h, h, 3)) for _ in range(n))
        self.merge = conv_bn(h * (2 + n), c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.split(x).chunk(2, 1)
        outs = [a, b]
        for blk in self.blocks:
            b = b + blk(b)
            outs.append(b)
        return self.merge(torch.cat(outs, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools concatenated."""

    def __init__(self, c: int):
        super().__init__()
        h = c // 2
        self.reduce, self.pool, self.out = conv_bn(c, h, 1), nn.MaxPool2d(5, 1, 2), conv_bn(4 * h, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.out(torch.cat([x, p1, p2, self.pool(p2)], 1))


class CSPDarknet(nn.Module):
    """A small CSPDarknet-style backbone (the baseline SmartCash compares EfficientNet with).

    ``width`` scales the channels (16 → the nano size); outputs at strides 8, 16, 32.
    """

    def __init__(self, width: int = 16, depth: int = 1):
        super().__init__()
        w = width
        self.stem = nn.Sequential(conv_bn(3, w, 3, 2), conv_bn(w, 2 * w, 3, 2), CSPBlock(2 * w, depth))
        self.s8 = nn.Sequential(conv_bn(2 * w, 4 * w, 3, 2), CSPBlock(4 * w, 2 * depth))
        self.s16 = nn.Sequential(conv_bn(4 * w, 8 * w, 3, 2), CSPBlock(8 * w, 2 * depth))
        self.s32 = nn.Sequential(conv_bn(8 * w, 16 * w, 3, 2), CSPBlock(16 * w, depth), SPPF(16 * w))
        self.channels = (4 * w, 8 * w, 16 * w)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.s8(self.stem(x))
        c4 = self.s16(c3)
        return [c3, c4, self.s32(c4)]


class EfficientNetFeatures(nn.Module):
    """torchvision's EfficientNet-Bn trunk, cut after the stages that end at strides 8, 16 and 32."""

    def __init__(self, variant: str, weights_path: str | None = None):
        super().__init__()
        net = getattr(torchvision.models, variant)(weights=None)
        if weights_path:
            _load_features(net, _read_weights(weights_path, variant), weights_path, variant)
        feats = net.features
        self.to8, self.to16, self.to32 = feats[:4], feats[4:6], feats[6:8]
        self.channels = (feats[3][-1].out_channels, feats[5][-1].out_channels, feats[7][-1].out_channels)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.to8((x - self.mean) / self.std)
        c4 = self.to16(c3)
        return [c3, c4, self.to32(c4)]


def _read_weights(path: str, variant: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise StateError(f"{path}: no such weights file for {variant} (pretrained weights come from a local file only)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure is bad input
        lines = str(e).strip().splitlines()
        detail = ("not a file of plain tensors that torch.load(weights_only=True) accepts"
                  if isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}: {lines[0] if lines else ''}")
        raise StateError(f"{path}: cannot read {variant} weights ({detail}); expected a file written by "
                         f"torch.save(torchvision.models.{variant}().state_dict())") from None
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise StateError(f"{path}: expected a state_dict of {variant}, got {type(sd).__name__}")
    return sd


def _load_features(net: nn.Module, sd: dict[str, torch.Tensor], path: str, variant: str) -> None:
    """Load ``sd`` into ``net``; every ``features.*`` tensor must be there with its shape (the classifier may not)."""
    try:
        result = net.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise StateError(f"{path}: these are not {variant} weights ({first[0].strip()}); "
                         f"save the state_dict of torchvision.models.{variant}") from None
    missing = [k for k in result.missing_keys if k.startswith("features.")]
    extra = [k for k in result.unexpected_keys if k.startswith("features.")]
    if missing or extra:
        what = (f"{len(missing)} backbone tensors of {variant} are missing (first: {missing[0]})" if missing
                else f"{len(extra)} tensors are not part of {variant} (first: {extra[0]})")
        raise StateError(f"{path}: {what}; save the state_dict of torchvision.models.{variant}")


def backbone(name: str, weights_path: str | None = None, width: int = 16, depth: int = 1) -> nn.Module:
    """A backbone by name: ``efficientnet_b0`` … ``efficientnet_b4`` or ``cspdarknet``; ``.channels`` lists its outputs."""
    if name in EFFICIENTNETS:
        return EfficientNetFeatures(name, weights_path)
    if name == "cspdarknet":
        if weights_path:
            raise StateError("cspdarknet: pretrained weights are not supported for the baseline backbone")
        return CSPDarknet(width, depth)
    raise StateError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


class PAN(nn.Module):
    """An FPN top-down pass then a PAN bottom-up pass, all at ``width`` channels."""

    def __init__(self, channels: Sequence[int], width: int):
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn(c, width, 1) for c in channels)
        self.top_down = nn.ModuleList(CSPBlock(width) for _ in channels[:-1])
        self.down = nn.ModuleList(conv_bn(width, width, 3, 2) for _ in channels[:-1])
        self.bottom_up = nn.ModuleList(CSPBlock(width) for _ in channels[:-1])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [f(x) for f, x in zip(self.lateral, feats)]
        td = [lat[-1]]
        for i in range(len(lat) - 2, -1, -1):
            up = nn.functional.interpolate(td[0], size=lat[i].shape[-2:], mode="nearest")
            td.insert(0, self.top_down[i](lat[i] + up))
        out = [td[0]]
        for i in range(1, len(td)):
            out.append(self.bottom_up[i - 1](td[i] + self.down[i - 1](out[-1])))
        return out


class GroupHead(nn.Module):
    """One layer's head: per level, two 3x3 convs then a 1x1 to ``4 + 1 + classes`` channels."""

    def __init__(self, width: int, classes: int, levels: int, prior: float = 0.01):
        super().__init__()
        self.stems = nn.ModuleList(nn.Sequential(conv_bn(width, width, 3), conv_bn(width, width, 3))
                                   for _ in range(levels))
        self.preds = nn.ModuleList(nn.Conv2d(width, 5 + classes, 1) for _ in range(levels))
        bias = -torch.log(torch.tensor((1 - prior) / prior))
        for p in self.preds:
            nn.init.zeros_(p.bias)
            with torch.no_grad():
                p.bias[4:] = bias

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [pred(stem(x)) for stem, pred, x in zip(self.stems, self.preds, feats)]


class DecoupledHead(nn.Module):
    """One layer's anchor-free head with separate box and class branches, per level.

    Each branch is ``depth`` 3x3 convolutions at ``width`` channels and a 1x1 one (at depth 1 about the
    cost of :class:`GroupHead`'s two). The box branch gives ``4 · (BINS − sides_from)`` logits: for each side
    (left, top, right, bottom) a distribution over distances of ``sides_from`` … ``BINS − 1`` (15) strides from
    the cell's centre. With ``sides_from = -1`` a side may end up to a stride short of the centre, so the cell
    beside a feature thinner than a stride (a security thread between two columns of cell centres) can fit
    it instead of stretching its box over its own centre; the outputs' channel count says which range a head
    has (:func:`~smartcash_fn.smartcash.detection.side_bins`). The class branch gives the layer's class logits,
    trained to score each box by its quality (no separate objectness); the
    class scores start at the chance of a cell holding one of ``objects``
    objects of a class in an ``assumed_size`` image (small: the class loss is
    a sum over every cell, so a large start would drown the positives). Output
    per level ``[B, 4 · bins + classes, H, W]``::

        head = DecoupledHead(width=48, classes=7, levels=3)
        [p.shape[1] for p in head([torch.zeros(1, 48, 8, 8)] * 3)]   # [71, 71, 71]
        DecoupledHead(width=48, classes=7, levels=3, sides_from=-1)([torch.zeros(1, 48, 8, 8)])[0].shape[1]   # 75
    """

    def __init__(self, width: int, classes: int, levels: int, depth: int = 1, objects: float = 5.0,
                 assumed_size: int = 640, sides_from: int = 0):
        super().__init__()
        if not sides_from_ok(sides_from):
            raise StateError(f"sides_from must be an integer from {1 - BINS} to 0 (strides), got {sides_from!r}")

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(*(conv_bn(width, width, 3) for _ in range(depth)), nn.Conv2d(width, out, 1))

        self.bins = BINS - sides_from  # the last bin is always BINS - 1 strides: the count says where they start
        self.box = nn.ModuleList(branch(4 * self.bins) for _ in range(levels))
        self.cls = nn.ModuleList(branch(classes) for _ in range(levels))
        for b, c, stride in zip(self.box, self.cls, STRIDES):
            nn.init.ones_(b[-1].bias)  # every bin alike: each side starts at the middle of its range
            p = objects / classes / (assumed_size / stride) ** 2  # a class's share of a cell
            nn.init.constant_(c[-1].bias, math.log(p / (1 - p)))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat([box(x), cls(x)], 1) for box, cls, x in zip(self.box, self.cls, feats)]


class Detector(nn.Module):
    """Backbone → PAN neck → one :class:`GroupHead` per label layer; outputs raw logits per group and level.

    ``groups`` maps each layer's name to its number of classes, in class-id order. ``head`` is
    ``"coupled"`` (:class:`GroupHead`: box, objectness and classes from one branch, SmartCash's) or
    ``"decoupled"`` (:class:`DecoupledHead`: box distributions and quality-scored classes, each side's
    distribution from ``sides_from`` strides, 0 or below, to 15). With
    ``channels_last`` the convolution weights and every input are kept in
    ``torch.channels_last`` memory format (NHWC), the layout cuDNN's and
    oneDNN's fastest convolution kernels use; the values are those of the
    default layout up to float rounding.
    ``notes`` says what a person should know about the model as built (an
    EfficientNet without its ImageNet weights trains from scratch).
    """

    def __init__(self, backbone: str = "efficientnet_b0", groups: Mapping[str, int] | None = None,
                 width: int = 64, weights_path: str | None = None, backbone_width: int = 16,
                 backbone_depth: int = 1, channels_last: bool = False, head: str = "coupled", head_depth: int = 1,
                 sides_from: int = 0):
        super().__init__()
        if head not in HEADS:
            raise StateError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        self.groups = dict(groups or {"banknote": 7, "nominal": 7, "security": 3})
        self.backbone = globals()["backbone"](backbone, weights_path, backbone_width, backbone_depth)
        self.neck = PAN(self.backbone.channels, width)
        self.head = nn.ModuleDict({g: GroupHead(width, c, len(STRIDES)) if head == "coupled" else
                                   DecoupledHead(width, c, len(STRIDES), depth=head_depth, sides_from=sides_from)
                                   for g, c in self.groups.items()})
        self.strides = STRIDES
        self.notes = ((f"model.params.backbone = {backbone!r} without model.params.weights_path: the backbone "
                       "trains from scratch (give a local file of torchvision's ImageNet weights to start from them)",)
                      if backbone.startswith("efficientnet") and not weights_path else ())
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.neck(self.backbone(images))
        return {g: head(feats) for g, head in self.head.items()}
