"""Resume, replay and verify: a checkpoint continues to the same bits as the run that never stopped.

- :func:`resume` loads a checkpoint into a template state and fits on;
- :func:`replay` recomputes a later state from a checkpoint, leaving out the
  callbacks that write files, so nothing on disk changes;
- :func:`verify` compares two states and names the first tensor or field
  that differs::

    state = resume("runs/a/checkpoints/epoch-0002.pt", loop, like=template)
    later = replay("runs/a/checkpoints/epoch-0001.pt", loop, like=template, to_step=16)
    diff = verify(later, load("runs/a/checkpoints/epoch-0002.pt", like=template))   # None when bit-identical
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable

import attrs
import torch

from . import checkpoint
from .errors import StateError
from .loop import Loop, fit
from .state import TrainState
from .tree import first_difference


def resume(path: str | os.PathLike, loop: Loop, like: TrainState) -> TrainState:
    """Load the checkpoint at ``path`` (into ``like``'s model and optimizer) and fit it through ``loop``."""
    return fit(checkpoint.load(path, like=like), loop)


def replay(source: str | os.PathLike | TrainState, loop: Loop, like: TrainState | None = None,
           to_step: int | None = None) -> TrainState:
    """The state reached from ``source`` (a checkpoint path or a state) at ``to_step``, or at the loop's end.

    Callbacks that write (``writes=True``: checkpoints, logs) are left out,
    so a replay has no effect on disk; every other callback runs as it did.
    """
    state = source if isinstance(source, TrainState) else checkpoint.load(source, like=like)
    if to_step is not None and to_step < state.progress.step:
        raise StateError(f"replay: to_step {to_step} is before the checkpoint's step {state.progress.step}")
    quiet = attrs.evolve(loop, callbacks=tuple(c for c in loop.callbacks if not c.writes))
    return fit(state, quiet, to_step=to_step)


@attrs.frozen
class Difference:
    """Where two states first differ: a dotted ``path`` and what each side holds there."""

    path: str
    left: str
    right: str

    def __str__(self) -> str:
        return f"{self.path}: {self.left} != {self.right}"


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _leaf_difference(a: Any, b: Any, path: str) -> Difference | None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return Difference(path, _describe(a), _describe(b))
        if a.dtype != b.dtype or a.shape != b.shape:
            return Difference(path, _describe(a), _describe(b))
        a_, b_ = a.detach().cpu(), b.detach().cpu()
        if torch.equal(a_, b_):
            return None
        if a_.is_floating_point():
            both_nan = torch.isnan(a_) & torch.isnan(b_)
            if bool(((a_ == b_) | both_nan).all()):
                return None
            delta = (a_.double() - b_.double()).abs().nan_to_num(nan=math.inf).max().item()
            n = int((a_ != b_).sum())
            return Difference(path, _describe(a), f"{_describe(b)} ({n} elements differ, max |diff| {delta:.3g})")
        return Difference(path, _describe(a), f"{_describe(b)} ({int((a_ != b_).sum())} elements differ)")
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return Difference(path, _describe(a), _describe(b))
    return None if a == b else Difference(path, _describe(a), _describe(b))


def difference(a: Any, b: Any, path: str = "") -> Difference | None:
    """The first difference between two trees of tensors and plain data (``a``'s order), or None.

    Tensors are equal when ``torch.equal`` (NaNs in the same places count as
    equal); a key only one side holds, or a length, is a difference too::

        difference({"w": torch.zeros(2)}, {"w": torch.ones(2)}, "params")   # params['w']: ...
    """
    return first_difference(
        a, b, _leaf_difference, path,
        missing=lambda p, in_a: Difference(p, "present", "missing") if in_a else Difference(p, "missing", "present"),
        length=lambda p, n, m: Difference(f"{p}.length", str(n), str(m)))


def verify(a: TrainState, b: TrainState, ignore: Iterable[str] = ()) -> Difference | None:
    """The first difference between two states' serialized parts, or None when they are bit-identical.

    Tensors are compared with ``torch.equal`` (NaNs in the same places count
    as equal). Writers (checkpoints, logs) keep nothing in the state, so a
    resumed or replayed state verifies against the run's own checkpoint as
    it is; ``ignore`` names callback states to skip, for states of your own
    callbacks that are not meant to match::

        assert verify(resumed, uninterrupted) is None
    """
    for s in (a, b):
        if not isinstance(s, TrainState):
            raise StateError(f"verify: expected two TrainStates, got {type(s).__name__}")
    ta, tb = checkpoint.to_tree(a), checkpoint.to_tree(b)
    skip = set(ignore)
    for t in (ta, tb):
        t["callbacks"] = {k: v for k, v in t["callbacks"].items() if k not in skip}
    for key in ta:
        d = difference(ta[key], tb[key], key)
        if d is not None:
            return d
    return None
