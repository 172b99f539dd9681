"""The trust boundary: which components a recipe that came inside a checkpoint may name.

A checkpoint is data (DESIGN.md, invariant 7): its recipe is read, never
obeyed blindly. A recipe names components by short names (the built-ins,
including every installed plugin's table) or by import paths
``package.module:attr``, which are imported and called when the recipe is
built. A checkpoint anyone could have edited must not make ``resume``,
``replay``, ``eval`` or ``predict`` call ``os:system``; so a recipe that
comes from a checkpoint may name only built-ins unless the user says they
trust its code. A recipe file the user gives is theirs, and trusted::

    untrusted(to_dict(recipe))                       # (Component('data.use', 'os:system'),)
    require_trusted(to_dict(recipe), "runs/a/checkpoints/last.pt")   # CheckpointError naming data.use
    require_trusted(tree, where, trust_code=True)    # allowed: the user vouches for the code
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import attrs

from ..errors import CheckpointError
from ..tree import walk
from .registry import builtins

TRUST_FLAG = "--trust-code"
"""The command-line flag by which a user vouches for the code a checkpoint's recipe names."""

_IMPORT_PATH = re.compile(r"^\s*[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*\s*:\s*[A-Za-z_][\w.]*\s*$")


@attrs.frozen
class Component:
    """A component a recipe names that is not built in: its dotted ``key``, its ``value`` (an import path),
    and its key ``path`` as a tuple (for :meth:`~smartcash_fn.run.recipe.Recipe.where`)."""

    key: str
    value: str
    path: tuple[str | int, ...] = ()

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r}"


def allowed_paths() -> frozenset[str]:
    """The import paths the built-ins stand for (the core's and the installed plugins'): always allowed."""
    return frozenset(path for table in builtins().values() for path in table.values())


def key_path(where: str) -> tuple[str | int, ...]:
    """The key path of :func:`~smartcash_fn.tree.walk`'s path text: ``"['train']['steps'][0]"`` -> ``("train", "steps", 0)``."""
    return tuple(name if name or not index else int(index)
                 for name, index in re.findall(r"\['([^']*)'\]|\[(\d+)\]", where))


def dotted_key(where: str) -> str:
    """The recipe's dotted key for :func:`~smartcash_fn.tree.walk`'s path: ``"['train']['steps'][0]['use']"``
    -> ``"train.steps[0].use"``."""
    return re.sub(r"\['([^']*)'\]", r".\1", where).lstrip(".")


def untrusted(tree: Mapping[str, Any]) -> tuple[Component, ...]:
    """Every string in a recipe ``tree`` shaped like an import path that is not a built-in's, with its key.

    Any string, not only the ``use`` keys: a component's params could name
    code too, and a key added to the schema later is covered without a change
    here. ``untrusted({"data": {"use": "os:system"}})`` is
    ``(Component("data.use", "os:system"),)``.
    """
    allowed = allowed_paths()
    found = []
    for where, value in walk(tree):
        if where.endswith("(the key)"):
            continue
        if isinstance(value, str) and _IMPORT_PATH.match(value) and value.strip() not in allowed:
            found.append(Component(dotted_key(where), value, key_path(where)))
    return tuple(found)


def require_trusted(tree: Mapping[str, Any], where: str, trust_code: bool = False) -> None:
    """Raise a :class:`CheckpointError` when the recipe ``tree`` from ``where`` names code not built in.

    Nothing is imported or called: the recipe is only read. With
    ``trust_code`` every component is allowed (the user vouches for it)::

        require_trusted(found.obj["state"]["recipe"], str(found.path))
    """
    if trust_code:
        return
    names = untrusted(tree)
    if names:
        listed = "; ".join(str(c) for c in names)
        raise CheckpointError(
            f"{where} (its recipe): {listed}: not a built-in component; a checkpoint's recipe may name only "
            f"built-in components, since loading it would import and call that code. If you trust whoever made "
            f"this checkpoint, pass {TRUST_FLAG}")
