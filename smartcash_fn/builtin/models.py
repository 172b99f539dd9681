"""Small built-in models for recipes, tests and benchmarks: an MLP and a small CNN.

Each is a factory of keyword arguments returning an ``nn.Module``, so a
recipe names it with ``[model] use = "mlp"`` and its ``[model.params]``.
Arguments named like the data's info (``in_features``, ``in_channels``,
``classes``) are filled from the data when the recipe leaves them out::

    model = mlp(in_features=16, classes=4, hidden=[64, 64])
    model = cnn(in_channels=1, classes=4, channels=[8, 16])
"""

from __future__ import annotations

from typing import Sequence

from torch import nn


def _check_widths(where: str, name: str, widths: Sequence[int]) -> tuple[int, ...]:
    if isinstance(widths, int) and not isinstance(widths, bool):
        widths = (widths,)
    if not (isinstance(widths, Sequence) and all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                                                 for w in widths)):
        raise ValueError(f"{where}: {name} must be an array of integers > 0, got {widths!r}")
    return tuple(widths)


def _check_dropout(where: str, dropout: float) -> float:
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise ValueError(f"{where}: dropout must be a number in [0, 1), got {dropout!r}")
    return float(dropout)


def mlp(in_features: int, classes: int, hidden: Sequence[int] = (64,), dropout: float = 0.0) -> nn.Module:
    """A multilayer perceptron: ``Linear -> ReLU (-> Dropout)`` per hidden width, then a linear classifier.

    ``mlp(16, 4, hidden=[64, 64], dropout=0.1)`` maps ``[batch, 16]`` to ``[batch, 4]`` logits.
    """
    for name, v in (("in_features", in_features), ("classes", classes)):
        _check_widths("mlp", name, [v])
    widths = _check_widths("mlp", "hidden", hidden)
    p = _check_dropout("mlp", dropout)
    layers: list[nn.Module] = []
    width = in_features
    for w in widths:
        layers += [nn.Linear(width, w), nn.ReLU()]
        if p:
            layers.append(nn.Dropout(p))
        width = w
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def cnn(in_channels: int, classes: int, channels: Sequence[int] = (8, 16), batch_norm: bool = True,
        dropout: float = 0.0) -> nn.Module:
    """A small convolutional classifier: per width ``Conv3x3 (-> BatchNorm) -> ReLU -> MaxPool2``, then pool and linear.

    ``cnn(1, 4, channels=[8, 16])`` maps ``[batch, 1, H, W]`` images to ``[batch, 4]`` logits (any H, W >= 2**len(channels)).
    """
    for name, v in (("in_channels", in_channels), ("classes", classes)):
        _check_widths("cnn", name, [v])
    widths = _check_widths("cnn", "channels", channels)
    if not isinstance(batch_norm, bool):
        raise ValueError(f"cnn: batch_norm must be true or false, got {batch_norm!r}")
    p = _check_dropout("cnn", dropout)
    layers: list[nn.Module] = []
    width = in_channels
    for w in widths:
        layers.append(nn.Conv2d(width, w, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(w))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        width = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if p:
        layers.append(nn.Dropout(p))
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)
