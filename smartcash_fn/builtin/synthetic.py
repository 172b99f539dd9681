"""Deterministic synthetic data sets: a pure function of their parameters and their own seed.

For recipes that must train in seconds (tests, benchmarks, the default
recipe): Gaussian clusters of feature vectors, and small images of noisy
class patterns. Every draw comes from :func:`smartcash_fn.rng.generator`
keyed by ``(seed, purpose)``, so the same parameters always give the same
tensors, and the data set's ``seed`` is its own (changing the run's seed
changes the init and the order, not the data)::

    splits = classification(samples=512, features=16, classes=4)
    x, y = splits.train            # float32 [512, 16], int64 [512]
    splits.info                    # {"in_features": 16, "classes": 4}
"""

from __future__ import annotations

import torch

from .. import rng
from ..data import Splits


def _positive(where: str, **values: int) -> None:
    for name, v in values.items():
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"{where}: {name} must be an integer > 0, got {v!r}")


def _labels(n: int, classes: int, g: torch.Generator) -> torch.Tensor:
    """``n`` labels with the classes as balanced as ``n`` allows, in a seeded order."""
    return (torch.arange(n) % classes)[torch.randperm(n, generator=g)]


def classification(samples: int = 512, val_samples: int = 128, features: int = 16, classes: int = 4,
                   spread: float = 1.0, seed: int = 0) -> Splits:
    """Points around one random centre per class: ``x = centre[y] + spread * noise``.

    Train and validation sets share the centres and draw their points from
    separate streams. ``classification(1024, 256, features=32, classes=10)``
    """
    _positive("synthetic", samples=samples, val_samples=val_samples, features=features, classes=classes)
    if not (isinstance(spread, (int, float)) and not isinstance(spread, bool) and spread >= 0):
        raise ValueError(f"synthetic: spread must be a number >= 0, got {spread!r}")
    centres = 2.0 * torch.randn(classes, features, generator=rng.generator(seed, "synthetic/centres"))

    def draw(n: int, purpose: str) -> tuple[torch.Tensor, torch.Tensor]:
        y = _labels(n, classes, rng.generator(seed, f"synthetic/{purpose}/labels"))
        noise = torch.randn(n, features, generator=rng.generator(seed, f"synthetic/{purpose}/noise"))
        return centres[y] + float(spread) * noise, y

    return Splits(train=draw(samples, "train"), val=draw(val_samples, "val"),
                  info={"in_features": features, "classes": classes})


def images(samples: int = 512, val_samples: int = 128, size: int = 12, channels: int = 1, classes: int = 4,
           noise: float = 0.5, seed: int = 0) -> Splits:
    """Images of one random pattern per class plus noise: ``x = pattern[y] + noise * N(0, 1)``.

    ``images(256, 64, size=8)`` gives float32 ``[256, 1, 8, 8]`` images and int64 labels.
    """
    _positive("synthetic_images", samples=samples, val_samples=val_samples, size=size, channels=channels,
              classes=classes)
    if not (isinstance(noise, (int, float)) and not isinstance(noise, bool) and noise >= 0):
        raise ValueError(f"synthetic_images: noise must be a number >= 0, got {noise!r}")
    patterns = torch.randn(classes, channels, size, size, generator=rng.generator(seed, "synthetic/patterns"))

    def draw(n: int, purpose: str) -> tuple[torch.Tensor, torch.Tensor]:
        y = _labels(n, classes, rng.generator(seed, f"synthetic/{purpose}/labels"))
        eps = torch.randn(n, channels, size, size, generator=rng.generator(seed, f"synthetic/{purpose}/noise"))
        return patterns[y] + float(noise) * eps, y

    return Splits(train=draw(samples, "train"), val=draw(val_samples, "val"),
                  info={"in_channels": channels, "classes": classes})
