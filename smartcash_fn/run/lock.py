"""One writer per run folder: an OS lock held for the life of ``train`` and ``resume``.

A run folder is written by one process at a time. The writer holds an
exclusive ``fcntl.flock`` on ``<run>/.lock`` and writes into it who it is
(pid, host, start time, command); a second writer is refused with those
facts. The OS drops the lock when its process dies, so a lock file left by a
killed run is stale and simply taken over. A default-named run claims its
folder under the lock, so two runs started together never share one::

    with claim(Path("runs/tiny")) as held:        # runs/tiny, or runs/tiny-2 when that one is taken
        train_in(held.folder)
    with hold(Path("runs/tiny"), "resume") as held:   # RunLocked: runs/tiny is being written by pid 4242 ...
        ...

The lock file is never deleted (deleting it would let two processes lock
two different files of one name); it is emptied when released.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs

from .._files import is_main_process
from ..errors import UserError
from .folders import holds_run, prepare_folder, tidy

LOCK_NAME = ".lock"
"""The lock file inside a run folder."""


class RunLocked(UserError):
    """Another live process is writing the run folder."""


@attrs.frozen
class Holder:
    """Who holds (or held) a run folder's lock: as written in its lock file.

    ``Holder.me("train").pid == os.getpid()``
    """

    pid: int
    host: str
    started: str
    command: str = ""

    @classmethod
    def me(cls, command: str) -> "Holder":
        """This process, starting now, running ``command``."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(os.getpid(), socket.gethostname(), now, command)

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}" + (f" ({self.command})" if self.command else "")


def read_holder(text: str) -> Holder | None:
    """The :class:`Holder` a lock file's text names, or None when it is empty or unreadable."""
    try:
        data = json.loads(text)
        return Holder(int(data["pid"]), str(data["host"]), str(data["started"]), str(data.get("command", "")))
    except (ValueError, KeyError, TypeError):
        return None


@attrs.frozen
class Held:
    """A held lock on ``folder`` (the open lock file's ``fd``); ``stale``: the dead holder it took over, if any."""

    folder: Path
    fd: int | None
    stale: Holder | None = None

    def release(self) -> None:
        """Empty the lock file and drop the lock (call it once)."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        try:
            os.close(self.fd)   # closing drops the flock
        except OSError:
            pass


def _open(folder: Path, where: str) -> int:
    try:
        return os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"{where}: cannot write in the run folder {folder} ({e.strerror or e}); "
                        "choose a folder you can write to") from None


def try_lock(folder: Path, command: str, where: str) -> Held | Holder:
    """Lock ``folder`` without waiting: a :class:`Held`, or the :class:`Holder` that has it (nothing held)."""
    if not is_main_process():
        return Held(folder, None)
    fd = _open(folder, where)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        os.close(fd)
        return read_holder(text) or Holder(0, "?", "?", "unknown: the lock file is being written")
    except OSError as e:
        os.close(fd)
        raise UserError(f"{where}: cannot lock the run folder {folder} ({e.strerror or e})") from None
    stale = read_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    data = json.dumps(attrs.asdict(Holder.me(command))).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as e:
        os.close(fd)
        raise UserError(f"{where}: cannot write in the run folder {folder} ({e.strerror or e}); "
                        "choose a folder you can write to") from None
    return Held(folder, fd, stale)


def first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (what creating it would add), or None."""
    missing = None
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing = p
    return missing


def undo_if_empty(top: Path | None) -> None:
    """Remove ``top`` (a folder this process made) when nothing but lock files and empty folders is in it.

    A run that failed before writing anything leaves no folder behind.
    """
    if top is None or not top.is_dir():
        return
    try:
        if all(p.is_dir() or p.name == LOCK_NAME for p in top.rglob("*")):
            shutil.rmtree(top, ignore_errors=True)
    except OSError:
        pass


def locked_message(folder: Path, holder: Holder) -> str:
    """What a second writer is told: who holds ``folder``."""
    return (f"{folder}: the run folder is being written by another process ({holder}); one process writes a run "
            f"folder at a time: wait for it to finish, stop it, or give another folder")


@contextlib.contextmanager
def _released(got: Held, top: Path | None) -> Iterator[None]:
    """Release ``got`` after the block; when the block fails, also remove the folders made for it (if empty)."""
    try:
        yield
    except BaseException:
        got.release()
        undo_if_empty(top)
        raise
    got.release()


@contextlib.contextmanager
def hold(folder: Path, command: str, where: str = "", must_be_new: bool = False,
         note: Callable[[str], Any] = lambda text: print(f"note: {text}", file=sys.stderr)) -> Iterator[Held]:
    """Hold ``folder``'s lock for the ``with`` block (created when missing); :class:`RunLocked` when another has it.

    ``must_be_new``: refuse a folder that already holds a run (``train --out``),
    checked under the lock so a run finishing meanwhile is seen::

        with hold(Path("runs/a"), "resume") as held: ...
    """
    where = where or str(folder)
    top = first_missing(folder)
    folder = prepare_folder(folder, where)
    got = try_lock(folder, command, where)
    if isinstance(got, Holder):
        raise RunLocked(locked_message(folder, got))
    with _released(got, top):
        if must_be_new and holds_run(folder):
            raise UserError(f"{where}: the folder already holds a run; resume it with `smartcash-fn resume "
                            f"{folder}`, or give another folder")
        if got.stale is not None and got.stale.pid != os.getpid():
            note(f"{folder}: took over the lock left by a process that is gone ({got.stale})")
        tidy(folder)
        yield got


@contextlib.contextmanager
def claim(base: Path, command: str = "train", where: str = "") -> Iterator[Held]:
    """Hold the first of ``base``, ``base-2``, ``base-3``, ... that holds no run and no other process has.

    Claiming is atomic: the folder is locked before it is judged free, so two
    runs started together get two folders::

        with claim(Path("runs/tiny")) as held: held.folder    # runs/tiny-2 when runs/tiny holds a run
    """
    where = where or str(base)
    n = 1
    while True:
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        n += 1
        if holds_run(folder):
            continue
        top = first_missing(folder)
        folder = prepare_folder(folder, where)
        got = try_lock(folder, command, where)
        if isinstance(got, Holder):
            continue
        if holds_run(folder):        # it became a run before we locked it
            got.release()
            continue
        with _released(got, top):
            tidy(folder)
            yield got
        return
