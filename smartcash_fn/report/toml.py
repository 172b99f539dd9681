"""TOML text of plain nested data: what recipe files, ``inspect`` and ``summary.md`` show.

Tables become ``[section]`` headers and arrays of tables ``[[callbacks]]``
blocks, so a written recipe reads like one written by hand; ``tomli`` reads
every text back to the same data::

    dumps({"train": {"epochs": 3}, "callbacks": [{"use": "nan_guard"}]})
    toml_value([1, 2.5, "a"])          # '[1, 2.5, "a"]'
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _toml_string(k)


def toml_value(v: Any) -> str:
    """One plain value as inline TOML: ``toml_value([1, 2.5, "a"]) == '[1, 2.5, "a"]'``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        if not -(2**63) <= v < 2**63:
            raise ValueError(f"TOML integers are 64-bit; {v} does not fit")
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise ValueError(f"cannot write a {type(v).__name__} as TOML (only strings, numbers, booleans, arrays, tables)")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _emit(table: Mapping[str, Any], prefix: tuple[str, ...], lines: list[str]) -> None:
    items = [(str(k), v) for k, v in table.items() if v is not None]
    for k, v in items:
        if not isinstance(v, Mapping) and not _is_table_array(v):
            lines.append(f"{_toml_key(k)} = {toml_value(v)}")
    for k, v in items:
        if isinstance(v, Mapping):
            header = prefix + (k,)
            lines.extend(["", f"[{'.'.join(_toml_key(h) for h in header)}]"])
            _emit(v, header, lines)
    for k, v in items:
        if _is_table_array(v):
            header = prefix + (k,)
            for item in v:
                lines.extend(["", f"[[{'.'.join(_toml_key(h) for h in header)}]]"])
                _emit(item, header, lines)


def dumps(table: Mapping[str, Any]) -> str:
    """Plain nested data (strings, numbers, booleans, arrays, tables) as TOML text that tomli reads back.

    ``tomli.loads(dumps(d)) == d`` for such data (``None`` values are left out)::

        dumps({"train": {"epochs": 3, "steps": [{"use": "clip", "max_norm": 1.0}]}})
    """
    lines: list[str] = []
    _emit(table, (), lines)
    while lines and lines[0] == "":
        lines.pop(0)
    return "\n".join(lines) + "\n"
