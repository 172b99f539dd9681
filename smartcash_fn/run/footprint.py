"""A built run's footprint: parameters (total, trained, frozen, per top-level module), input, FLOPs, file size.

What a user wants to know before training: how big the model is, what the
optimizer trains at the start (SmartCash's first phase freezes the backbone),
what one image costs, and how large each checkpoint will be::

    fp = footprint(built)
    print(fp.text())        # params 1.23 M (trained 0.41 M, frozen 0.82 M); input 1x3x192x192; 0.86 GFLOPs ...

:func:`footprint_of` counts a state and one sample's inputs alone, so
:mod:`~smartcash_fn.run.build` hands the run summary a thunk of it (the
``Model`` section of ``summary.md``, :meth:`Footprint.rows`).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..state import TrainState
from ..tree import walk


@attrs.frozen
class Footprint:
    """Counts of a built run: ``params`` total, ``trained`` at the start, per top-level module ``parts`` (name,
    count, trained at the start), the one-sample ``input`` shape, ``flops`` of one forward pass on it (None when
    it cannot be counted) and ``checkpoint_bytes`` (the tensors one checkpoint holds at step 0)."""

    params: int
    trained: int
    parts: tuple[tuple[str, int, bool], ...]
    input: tuple[int, ...] | None
    flops: int | None
    checkpoint_bytes: int

    def text(self) -> str:
        """One line for people: ``params 1.23 M (trained 0.41 M, frozen 0.82 M; backbone 0.82 M frozen, ...)``."""
        parts = ", ".join(f"{n} {_m(c)}{'' if t else ' frozen'}" for n, c, t in self.parts)
        frozen = self.params - self.trained
        head = f"params {_m(self.params)} (trained {_m(self.trained)}" + (f", frozen {_m(frozen)}" if frozen else "")
        named = len(self.parts) > 1 and not any(n.isdigit() for n, _, _ in self.parts)  # not nn.Sequential's 0, 1
        line = head + (f"; {parts})" if named else ")")
        if self.input is not None:
            line += f"; input {'x'.join(map(str, self.input))}"
        if self.flops is not None:
            line += f"; {_flops(self.flops)} per forward pass of one sample"
        return line + f"; a checkpoint at the start {_size(self.checkpoint_bytes)}"

    def rows(self) -> list[tuple[str, str]]:
        """The footprint as ``(what, value)`` rows, for the run summary's table.

        ``footprint(built).rows()[0]`` is ``("parameters", "387")``; one row per
        top-level module (``backbone``, ``head``) says whether it trains at the start.
        """
        frozen = self.params - self.trained
        out = [("parameters", _m(self.params)), ("trained at the start", _m(self.trained))]
        if frozen:
            out.append(("frozen at the start", _m(frozen)))
        if len(self.parts) > 1 and not any(n.isdigit() for n, _, _ in self.parts):
            out += [(f"`{n}`", f"{_m(c)}, {'trained' if t else 'frozen'} at the start") for n, c, t in self.parts]
        if self.input is not None:
            out.append(("input (one sample)", "x".join(map(str, self.input))))
        if self.flops is not None:
            out.append(("FLOPs of one forward pass", _flops(self.flops)))
        out.append(("checkpoint at the start", _size(self.checkpoint_bytes)))
        return out


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _flops(n: int) -> str:
    for unit, scale in (("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} FLOPs"


def _m(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10_000 else str(n)


def _trains(state: TrainState):
    opt = state.optimizer
    if getattr(opt, "trains_in", None) is not None:
        return opt.trains_in(state.opt_state)
    return getattr(opt, "trains", lambda _: True)


def _bytes(tree) -> int:
    seen, total = set(), 0
    for _, t in walk(tree):
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def sample_inputs(data: Any, seed: int) -> tuple[torch.Tensor, ...] | None:
    """The model's inputs for one sample: the first of ``data``'s first batch, or None when batches do not start
    with a tensor: ``sample_inputs(built.loop.data, built.template.seed)``."""
    batch = next(iter(data.batches(seed, 0, 0)))
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return (first[:1],) if isinstance(first, torch.Tensor) else None


def footprint(built: Any, count_flops: bool = True) -> Footprint:
    """The footprint of a :class:`~smartcash_fn.run.build.Built` run's template state (FLOPs from one forward
    pass on the first validation sample, else the first training one); counted once per build.

    ``footprint(build(load("recipes/tiny.toml"))).text()``
    """
    if count_flops and built.footprint is not None:
        return built.footprint()
    return footprint_of(built.template, built.loop.validation.data if built.loop.validation is not None
                        else built.loop.data, count_flops)


def footprint_of(state: TrainState, data: Any, count_flops: bool = True) -> Footprint:
    """The footprint of ``state`` whose model reads ``data``'s batches (one sample of them is run for the FLOPs).

    ``footprint_of(built.template, built.loop.data).rows()``
    """
    trains = _trains(state)
    parts: dict[str, list[int]] = {}
    for name, p in state.params.items():
        top = name.split(".", 1)[0]
        entry = parts.setdefault(top, [0, 0])
        entry[0] += p.numel()
        entry[1] += p.numel() if trains(name) else 0
    total = sum(c for c, _ in parts.values())
    trained = sum(t for _, t in parts.values())
    shape, flops = None, None
    try:
        inputs = sample_inputs(data, state.seed)
    except Exception:  # noqa: BLE001 - data that cannot give a sample here: no input line
        inputs = None
    if inputs is not None:
        shape = tuple(inputs[0].shape)
    if count_flops and inputs is not None:
        counter = FlopCounterMode(display=False)
        with counter:
            state.apply(*inputs)
        flops = int(counter.get_total_flops()) or None
    size = _bytes({"params": state.params, "buffers": state.buffers, "opt": state.opt_state})
    return Footprint(params=total, trained=trained,
                     parts=tuple((n, c, t > 0) for n, (c, t) in parts.items()), input=shape, flops=flops,
                     checkpoint_bytes=size)
