"""Counter-based randomness: every draw is a pure function of its coordinates.

A random stream is named by ``(seed, purpose, *counters)`` — for example
``(seed, "order", epoch)`` for the data order or ``(seed, "augment", epoch,
sample_index)`` for one sample's augmentation. Nothing reads or advances a
global generator, so a resumed run, a replayed run and a run with any number
of loader workers see the same numbers::

    g = generator(seed, "order", epoch)
    order = torch.randperm(n, generator=g)
    key(seed, "dropout", step)            # a 63-bit integer seed
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from typing import Iterator

import torch

_MASK63 = (1 << 63) - 1


def key(seed: int, purpose: str, *counters: int) -> int:
    """The 63-bit seed of the stream ``(seed, purpose, *counters)``.

    ``key(0, "order", 3)`` differs from ``key(0, "order", 4)`` and from
    ``key(0, "init", 3)``; equal coordinates always give equal keys.
    """
    h = hashlib.blake2b(digest_size=8, person=b"smartcash_fn")
    h.update(purpose.encode("utf-8"))
    h.update(struct.pack("<q", int(seed)))
    for c in counters:
        h.update(struct.pack("<q", int(c)))
    return int.from_bytes(h.digest(), "little") & _MASK63


def generator(seed: int, purpose: str, *counters: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` seeded by :func:`key`: ``generator(7, "order", 0)``."""
    g = torch.Generator(device=device)
    g.manual_seed(key(seed, purpose, *counters))
    return g


def permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of ``epoch``: a permutation of ``range(n)`` (int64, CPU)."""
    return torch.randperm(n, generator=generator(seed, "order", epoch))


@contextlib.contextmanager
def seeded(seed: int, purpose: str, *counters: int) -> Iterator[None]:
    """Run a block with torch's global CPU generator seeded from ``(seed, purpose, *counters)``.

    The generator's previous state is restored afterwards, so code that uses
    the global generator (dropout, ``torch.rand``) becomes a pure function of
    the coordinates without disturbing the caller::

        with seeded(seed, "dropout", step):
            out = model(x)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(key(seed, purpose, *counters))
        yield
