"""Old import paths of modules that moved into the wings, kept working with a DeprecationWarning.

Before the package had wings, every module sat at its root; documented paths
such as ``smartcash_fn.compat`` or ``smartcash_fn.metrics`` still import, as
the module at its new home (the same object)::

    import smartcash_fn.compat            # warns, and is smartcash_fn.smartcash.compat
    from smartcash_fn.smartcash import compat
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

MOVED = {
    "build": "run.build", "recipe": "run.recipe", "registry": "run.registry",
    "sinks": "report.sinks", "plots": "report.plots", "console": "report.console", "summary": "report.summary",
    "models": "builtin.models", "synthetic": "builtin.synthetic",
    "rupiah": "smartcash.scenes", "rupiah_run": "smartcash.components", "yolo": "smartcash.yolo",
    "yolo_export": "smartcash.export", "detector": "smartcash.detector", "detection": "smartcash.detection",
    "metrics": "smartcash.metrics", "detection_plots": "smartcash.plots", "inference": "smartcash.inference",
    "compat": "smartcash.compat",
}
"""Old module name (under ``smartcash_fn.``) -> its new home."""


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``smartcash_fn.<old>`` and loads it as the module at its new home."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        pkg, _, old = name.partition(".")
        if pkg != "smartcash_fn" or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        old = module.__name__.partition(".")[2]
        new = f"smartcash_fn.{MOVED[old]}"
        warnings.warn(f"smartcash_fn.{old} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        sys.modules[module.__name__] = importlib.import_module(new)  # the import returns the real module


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
