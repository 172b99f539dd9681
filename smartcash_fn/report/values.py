"""Values as people and files read them: plain JSON-able numbers and lists, and short number text.

Metrics arrive as tensors, numpy scalars or Python numbers; every writer turns
them into plain data the same way, and formats them for people the same way::

    plain({"loss": torch.tensor(0.25)})      # {'loss': 0.25}
    number("a"), number(3)                    # None, 3.0
    fmt_value(0.123456), fmt_exact(0.123456)  # '0.1235', '0.123457'
"""

from __future__ import annotations

from typing import Any, Mapping

import torch


def plain(value: Any) -> Any:
    """``value`` as plain JSON-able data: one-element tensors and numpy scalars become Python numbers.

    ``plain(torch.tensor(0.5))`` is ``0.5``; a longer tensor becomes a list; an unknown object its ``str``.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    item = getattr(value, "item", None)  # numpy scalars and arrays
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            tolist = getattr(value, "tolist", None)
            if callable(tolist):
                return tolist()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else None.

    ``number(3)`` is ``3.0``; ``number("a")`` and ``number(True)`` are None.
    """
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def fmt_value(v: float) -> str:
    """A metric value in four significant digits, as the console, plots and summary show it: ``'0.1235'``."""
    return f"{v:.4g}"


def fmt_exact(v: Any) -> str:
    """A value in six significant digits when it is a float (``inspect`` and the commands' lines): ``'0.123457'``."""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def plural(n: int, word: str, words: str | None = None) -> str:
    """``n`` and the noun, singular for one: ``plural(1, "epoch")`` is ``'1 epoch'``, ``plural(3, "batch", "batches")``
    is ``'3 batches'`` (the plural defaults to ``word + "s"``)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def one_based(record: Mapping[str, Any]) -> dict[str, Any]:
    """An epoch record as people and files read it: its ``epoch`` counted from 1 (the state counts from 0).

    The console, ``metrics.csv``, ``metrics.jsonl``, ``inspect``, the plots,
    the summary and the checkpoint names (``epoch-0001.pt``) all call the first
    epoch 1: ``one_based({"epoch": 0, "loss": 1.2})`` is ``{"epoch": 1, "loss": 1.2}``.
    """
    e = record.get("epoch")
    if isinstance(e, int) and not isinstance(e, bool):
        return {**record, "epoch": e + 1}
    return dict(record)
