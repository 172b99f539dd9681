"""Nested data — dicts, lists, tuples with tensors and plain values as leaves — mapped, walked, compared.

A state's params, optimizer state, extras and callback states, a batch, a
checkpoint's tree and a recipe are all such trees; every walk over them in the
library is one of these three functions::

    tree_map(lambda t: t.double() if torch.is_tensor(t) else t, batch)
    [path for path, node in walk({"a": [1, 2]})]          # ['', "['a']", "['a'][0]", "['a'][1]"]
    first_difference(a, b, leaf=compare_leaves)           # ("['params']['w']", ...) or None
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, TypeVar

import torch

T = TypeVar("T")


def tree_map(fn: Callable[[Any], Any], tree: Any, *, shared: bool = False,
             keep: Callable[[Any], bool] | None = None, sequence: type | None = None) -> Any:
    """``tree`` with ``fn`` applied to every leaf; mappings become dicts, tuples and lists stay what they are.

    ``shared=True`` maps a tensor met several times once, so the result keeps
    the sharing (a state's best params that are its params stay one object).
    ``keep`` drops mapping entries whose value it rejects (``keep=lambda v: v is
    not None``); ``sequence=list`` makes every tuple and list a list::

        tree_map(lambda t: t.cpu() if torch.is_tensor(t) else t, state_tree, shared=True)
    """
    memo: dict[int, Any] = {}

    def go(x: Any) -> Any:
        if isinstance(x, Mapping):
            return {k: go(v) for k, v in x.items() if keep is None or keep(v)}
        if isinstance(x, (tuple, list)):
            return (sequence or (tuple if isinstance(x, tuple) else list))(go(v) for v in x)
        if shared and isinstance(x, torch.Tensor):
            hit = memo.get(id(x))
            if hit is None:
                hit = memo[id(x)] = fn(x)
            return hit
        return fn(x)

    return go(tree)


def walk(tree: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every node of ``tree`` with its path, parents before children, keys of a dict before its value.

    A dict's key is yielded as a node at ``path[key] (the key)``; containers
    are yielded too, so a caller sees the structure::

        dict(walk({"a": 1}))   # {'': {'a': 1}, "['a'] (the key)": 'a', "['a']": 1}
    """
    yield path, tree
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield f"{path}[{k!r}] (the key)", k
            yield from walk(v, f"{path}[{k!r}]")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from walk(v, f"{path}[{i}]")


def first_difference(a: Any, b: Any, leaf: Callable[[Any, Any, str], T | None], path: str = "",
                     missing: Callable[[str, bool], T] | None = None,
                     length: Callable[[str, int, int], T] | None = None) -> T | None:
    """The first place where ``a`` and ``b`` differ, walking both in ``a``'s order; None when they agree.

    Two mappings differ by a key only one holds (``missing(path, in_a)``),
    two sequences by their length (``length(path, len_a, len_b)``); anything
    else is compared by ``leaf(x, y, path)``, which returns None when equal::

        first_difference(ta, tb, leaf=lambda x, y, p: None if torch.is_tensor(x) and torch.is_tensor(y)
                         and torch.equal(x, y) or x is y or not torch.is_tensor(x) and x == y else p)
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in a:
            if k not in b:
                return missing(f"{path}[{k!r}]", True) if missing else leaf(a[k], None, f"{path}[{k!r}]")
        for k in b:
            if k not in a:
                return missing(f"{path}[{k!r}]", False) if missing else leaf(None, b[k], f"{path}[{k!r}]")
        for k in a:
            d = first_difference(a[k], b[k], leaf, f"{path}[{k!r}]", missing, length)
            if d is not None:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return length(path, len(a), len(b)) if length else leaf(a, b, path)
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, leaf, f"{path}[{i}]", missing, length)
            if d is not None:
                return d
        return None
    return leaf(a, b, path)
