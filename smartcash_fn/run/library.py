"""The built-in recipes: TOML files shipped inside the package, found by name.

``smartcash-fn train tiny`` and ``smartcash-fn recipe copy tiny my.toml`` name
them; the repository's ``recipes/`` folder links to the same files::

    names()                      # ('rupiah_efficientnet_b4', 'rupiah_synthetic', 'rupiah_yolo', 'tiny')
    path_of("tiny")              # .../smartcash_fn/recipes/tiny.toml
    describe("tiny")             # 'A tiny classifier on synthetic data: trains in a few seconds on two CPU cores.'
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RecipeError
from .registry import suggest

FOLDER = Path(__file__).resolve().parent.parent / "recipes"
"""Where the built-in recipes live (package data)."""

DEFAULT = "rupiah_synthetic"
"""The recipe ``smartcash-fn train`` and ``check`` use when none is given."""


def names() -> tuple[str, ...]:
    """The built-in recipes' names (their file stems), sorted."""
    return tuple(sorted(p.stem for p in FOLDER.glob("*.toml")))


def path_of(name: str) -> Path:
    """The file of built-in recipe ``name``; a :class:`RecipeError` with a did-you-mean when there is none."""
    path = FOLDER / f"{name}.toml"
    if not path.is_file():
        raise RecipeError(f"no built-in recipe {name!r}{suggest(name, names())} (built-in recipes: "
                          f"{', '.join(names())}; smartcash-fn recipe list)")
    return path


def describe(name: str) -> str:
    """The first sentence of a built-in recipe's opening comment: what it is."""
    words = []
    for line in path_of(name).read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or not text:
            break
        words.append(text)
    first = " ".join(words).split(". ")[0]
    return first if first.endswith(".") else first + "."


def resolve(arg: str | os.PathLike | None) -> Path:
    """The recipe file an argument means: a path as given, else a built-in recipe's name; None: the default.

    ``resolve("recipes/tiny.toml")`` is that path; ``resolve("tiny")`` the shipped file.
    """
    if arg is None:
        return path_of(DEFAULT)
    path = Path(arg)
    if path.exists() or path.suffix == ".toml" or len(path.parts) > 1:
        return path
    return path_of(str(arg))
