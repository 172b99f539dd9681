"""Run folders and the checkpoints in them: which folder a run goes to, which checkpoint a command reads.

A run folder holds ``recipe.toml``, ``checkpoints/*.pt`` and the writers'
files. Training never writes into a folder that holds a run; a default name
is numbered instead; a command given a folder picks its checkpoint by name,
falling back to the newest intact one::

    run_dir = free_folder(Path("runs/tiny"))                 # runs/tiny, or runs/tiny-2, ...
    found = find_checkpoint("runs/tiny")                     # last.pt when intact
    found = find_checkpoint("runs/rupiah_synthetic", prefer=("best", "last"))
    found.path, found.obj["state"]["progress"], found.skipped
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import attrs

from .. import checkpoint
from .._files import remove_temp_files
from ..errors import CheckpointError, UserError

VIRTUAL = (Path("/proc"), Path("/sys"), Path("/dev"))
"""Kernel filesystems: nothing a run writes belongs there."""


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds a run (a recipe.toml or checkpoints), which training must not overwrite."""
    ckpts = folder / "checkpoints"
    return (folder / "recipe.toml").exists() or (ckpts.is_dir() and any(ckpts.glob("*.pt")))


def free_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... : the first that holds no run.

    ``free_folder(Path("runs/tiny"))`` is ``runs/tiny-2`` once ``runs/tiny`` holds a run.
    """
    if not holds_run(base):
        return base
    n = 2
    while holds_run(base.with_name(f"{base.name}-{n}")):
        n += 1
    return base.with_name(f"{base.name}-{n}")


def folder_problem(folder: Path) -> str | None:
    """What makes ``folder`` unfit to hold a run's files (without creating anything), or None.

    ``folder_problem(Path("/proc/x"))`` is ``"/proc/x is inside /proc, a kernel filesystem; ..."``.
    """
    absolute = Path(os.path.abspath(folder))
    for v in VIRTUAL:
        if absolute == v or v in absolute.parents:
            return f"{folder} is inside {v}, a kernel filesystem, not a disk; give a folder on a disk"
    probe = absolute
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return (f"{folder} is a file, not a folder" if probe == absolute
                else f"{probe} is a file, so {folder} cannot be made inside it")
    return None


def prepare_folder(folder: Path, where: str) -> Path:
    """``folder``, created when missing, or a :class:`UserError` at ``where`` saying why it cannot hold a run.

    ``prepare_folder(Path("runs/tiny"), "--out runs/tiny")``
    """
    problem = folder_problem(folder)
    if problem:
        raise UserError(f"{where}: {problem}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{where}: cannot create the run folder {folder} ({e.strerror or e}); choose a folder "
                        "you can write to") from None
    return folder


RUN_SUBFOLDERS = ("checkpoints", "plots", "tensorboard")
"""The subfolders of a run folder that the library writes files into."""


def tidy(folder: Path) -> list[Path]:
    """Remove the temp files interrupted writes left in a run folder and its own subfolders
    (:data:`RUN_SUBFOLDERS`); call it holding the folder's lock. ``tidy(Path("runs/a"))``"""
    gone = remove_temp_files(folder)
    for sub in RUN_SUBFOLDERS:
        gone += remove_temp_files(folder / sub)
    return gone


def run_folder_of(ckpt: Path) -> Path:
    """The run folder a checkpoint belongs to: ``runs/a/checkpoints/x.pt`` -> ``runs/a``."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


@attrs.frozen
class Found:
    """A checkpoint chosen for a command: its ``path``, its verified contents, and the files ``skipped`` (why)."""

    path: Path
    obj: dict[str, Any]
    skipped: tuple[str, ...] = ()


def find_checkpoint(target: str | os.PathLike, prefer: Sequence[str] = ("last",)) -> Found:
    """The checkpoint ``target`` names: a file as is; in a run folder the first intact of ``prefer``, then the newest.

    ``prefer`` lists file stems in order (``("last",)`` to resume, ``("best",
    "last")`` to evaluate a detector); after them every other ``*.pt`` but
    ``final.pt`` (the restored best params, not a trained state) is tried
    newest first. Each unreadable file is skipped with its reason; a hard link
    to a file already tried is not read twice::

        find_checkpoint("runs/tiny").path          # runs/tiny/checkpoints/last.pt
    """
    target = Path(target)
    if target.is_file():
        return Found(target, checkpoint.read(target))
    if not target.exists():
        raise CheckpointError(f"{target}: no such checkpoint file or run folder")
    folder = target / "checkpoints" if (target / "checkpoints").is_dir() else target
    named = [folder / f"{stem}.pt" for stem in prefer]
    others = sorted((p for p in folder.glob("*.pt") if p not in named and p.name != "final.pt"),
                    key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    candidates = [p for p in named if p.is_file()] + others
    if not candidates:
        raise CheckpointError(f"{target}: no checkpoints (*.pt) in {folder}; give a checkpoint file or a run folder")
    skipped: list[str] = []
    seen: set[tuple[int, int]] = set()
    for path in candidates:
        st = path.stat()
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            return Found(path, checkpoint.read(path), tuple(skipped))
        except CheckpointError as e:
            skipped.append(str(e))
    raise CheckpointError(f"{target}: no intact checkpoint in {folder}:\n  " + "\n  ".join(skipped))
