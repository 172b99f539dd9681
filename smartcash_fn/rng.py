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
from typing import Iterable, Iterator

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


def cuda_indices(devices: Iterable[torch.device | str | int]) -> tuple[int, ...]:
    """The CUDA device indices among ``devices``, sorted and without repeats; other kinds are left out.

    A pure function of its argument (an index-less ``"cuda"`` means device 0,
    the one ``torch.tensor(..., device="cuda")`` picks by default)::

        cuda_indices(["cpu", "cuda:1", torch.device("cuda", 0), "cuda:1"])   # (0, 1)
    """
    out = set()
    for d in devices:
        if isinstance(d, torch.device) and d.type == "cpu":
            continue
        d = torch.device("cuda", d) if isinstance(d, int) else torch.device(d)
        if d.type == "cuda":
            out.add(0 if d.index is None else d.index)
    return tuple(sorted(out))


@contextlib.contextmanager
def seeded(seed: int, purpose: str, *counters: int, devices: Iterable[torch.device | str | int] = ()) -> Iterator[None]:
    """Run a block with torch's global generators seeded from ``(seed, purpose, *counters)``.

    The CPU generator is always seeded; so is the generator of each CUDA
    device in ``devices`` (no other device's generator is touched). Every
    one of them gets its previous state back afterwards, also on an error, so
    code that draws from the global generators (dropout, stochastic depth,
    ``torch.rand`` in a model) becomes a pure function of the coordinates
    without disturbing the caller::

        with seeded(seed, "dropout", step, devices=["cuda:0"]):
            out = model(x)
    """
    k = key(seed, purpose, *counters)
    cuda = cuda_indices(devices)
    cpu = torch.default_generator
    saved_cpu = cpu.get_state()
    saved_cuda = [torch.cuda.get_rng_state(i) for i in cuda]  # initialises CUDA where it has to
    try:
        cpu.manual_seed(k)
        for i in cuda:
            torch.cuda.default_generators[i].manual_seed(k)
        yield
    finally:
        cpu.set_state(saved_cpu)
        for i, st in zip(cuda, saved_cuda):
            torch.cuda.set_rng_state(st, i)
