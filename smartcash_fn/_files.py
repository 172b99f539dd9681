"""Files, written one way: atomically, durably, with the user's umask, by rank 0 only.

Every file the library writes (checkpoints, recipes, CSV/JSONL rows, plots,
summaries) goes through :func:`write_atomic`: a temp file in the same folder,
flushed and fsynced, given the mode the user's umask asks for, moved into
place with ``os.replace``, then the folder fsynced. A reader sees the old
file or the new one, never half of one; a failure leaves the old file intact
and no temp file behind::

    write_text_atomic("runs/a/summary.md", "# run a\\n")
    save_torch_atomic("runs/a/checkpoints/last.pt", {"state": tree})
    write_atomic("runs/a/plots/curves.png", lambda f: figure.savefig(f, format="png"))
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

from .errors import StateError

TEMP_SUFFIX = ".tmp"
"""Temp files are named ``.<name>.<random>.tmp`` beside their target; :func:`remove_temp_files` finds them."""


def file_mode() -> int:
    """The mode a new file gets from the user's umask (``0o644`` under the usual ``022``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def discard(path: str | os.PathLike) -> None:
    """Remove ``path`` if it is there, never raising: the clean-up after a failed write must not hide its error."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, then move it into place atomically.

    The folder is created when missing. On any failure (the writer raising, a
    full disk) the temp file is removed and the error propagates; the file at
    ``path``, if any, is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    _fsync_folder(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: ``write_bytes_atomic("a.bin", b"...")``."""
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically: ``write_text_atomic("a.md", "# a\\n")``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def save_torch_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: ``save_torch_atomic("ckpt.pt", {"state": tree})``."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def link_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` the same file as ``src`` atomically: a hard link, or a copy where links fail.

    ``link_atomic("checkpoints/epoch-0003.pt", "checkpoints/best.pt")``
    """
    src, dst = Path(src), Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=TEMP_SUFFIX, dir=dst.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        discard(tmp)
        raise
    _fsync_folder(dst.parent)
    return dst


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove temp files that interrupted writes left in ``folder`` (not below it); the paths removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for p in folder.glob(f".*{TEMP_SUFFIX}"):
        try:
            p.unlink()
            gone.append(p)
        except OSError:
            pass
    return gone


def check_folder(folder: Any, what: str) -> Path:
    """``folder`` as a Path, checked but not created: a :class:`StateError` naming ``what`` when it is no
    path or names a file. ``check_folder("runs/a", "csv_log")``
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise StateError(f"{what}: run_dir must be a path (str or os.PathLike), got {type(folder).__name__}")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise StateError(f"{what}: {path} is a file; give a folder for the run's files")
    return path


def ensure_folder(folder: Any, what: str) -> Path:
    """``folder`` as a Path, created when missing; a :class:`StateError` naming ``what`` when it cannot be.

    ``ensure_folder("runs/a", "csv_log")``
    """
    path = check_folder(folder, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StateError(f"{what}: cannot create the run folder {path} ({e.strerror or e}); "
                         "choose a run folder you can write to") from None
    return path


def is_main_process() -> bool:
    """True unless this is a ``torch.distributed`` rank other than 0: only rank 0 writes files and logs.

    ``if is_main_process(): write_text_atomic(path, text)``
    """
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
