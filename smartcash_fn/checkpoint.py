"""Checkpoint = the serialized TrainState: one file, written atomically, verified on load.

The file is a ``torch.save`` of a dict of tensors and plain data only, so
``torch.load(path, weights_only=True)`` reads it and loading never unpickles
code. It carries a format version, the library and torch versions, the
environment it was written in (:mod:`smartcash_fn.environment`), and a
digest of the state that :func:`read` checks. ``docs/checkpoint-format.md``
describes the layout for other tools::

    save(state, "runs/a/checkpoints/last.pt")
    state = load("runs/a/checkpoints/last.pt", like=template)   # model/optimizer from the template
    info = read("runs/a/checkpoints/last.pt")                   # the verified raw dict
"""

from __future__ import annotations

import datetime
import hashlib
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import torch

from ._files import save_torch_atomic
from . import environment
from ._version import __version__
from .errors import CheckpointError, StateError
from .state import Best, History, Progress, Stop, TrainState
from .tree import tree_map, walk

FORMAT = "smartcash_fn.checkpoint"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- tree conversion


def to_tree(state: TrainState) -> dict[str, Any]:
    """The serializable part of ``state`` as plain nested data (tensors on the CPU)."""
    best = None
    if state.best is not None:
        b = state.best
        best = {"monitor": b.monitor, "mode": b.mode, "value": b.value, "epoch": b.epoch, "step": b.step,
                "params": b.params, "buffers": b.buffers, "metrics": dict(b.metrics)}
    p = state.progress
    tree = {
        "params": dict(state.params),
        "buffers": dict(state.buffers),
        "opt_state": state.opt_state,
        "progress": {"epoch": p.epoch, "step": p.step, "batch": p.batch},
        "seed": state.seed,
        "history": {"epochs": [dict(e) for e in state.history.epochs],
                    "steps": [dict(s) for s in state.history.steps]},
        "metrics": dict(state.metrics),
        "running": dict(state.running),
        "extras": dict(state.extras),
        "callbacks": dict(state.callbacks),
        "best": best,
        "stop": None if state.stop is None else {"reason": state.stop.reason, "failed": state.stop.failed},
        "lr_scale": float(state.lr_scale),
        "recipe": state.recipe,
        "data_info": dict(state.data_info),
    }
    return tree_map(lambda x: x.detach().cpu() if isinstance(x, torch.Tensor) else x, tree, shared=True)


def _match(where: str, kind: str, got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {kind} {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {kind} {extra[:3]}{' ...' if len(extra) > 3 else ''}")
        raise StateError(f"{where}: the checkpoint does not fit the model: " + "; ".join(parts))
    for k, v in want.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise StateError(f"{where}: {kind[:-1]} {k!r} has shape {tuple(got[k].shape)} in the checkpoint, "
                             f"{tuple(v.shape)} in the model")


def from_tree(tree: Mapping[str, Any], like: TrainState | None = None, where: str = "checkpoint") -> TrainState:
    """Rebuild a :class:`TrainState` from :func:`to_tree`'s output.

    With ``like``, names and shapes are checked against its params and
    buffers, tensors move to its device, and its model and optimizer ride along.
    """
    device = torch.device("cpu")
    if like is not None:
        if not isinstance(like, TrainState):
            raise StateError(f"{where}: like must be a TrainState, got {type(like).__name__}")
        _match(where, "params", tree["params"], like.params)
        _match(where, "buffers", tree["buffers"], like.buffers)
        if like.params:
            device = next(iter(like.params.values())).device
    tree = tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, dict(tree), shared=True)
    b = tree["best"]
    best = None if b is None else Best(**{**b, "metrics": dict(b["metrics"])})
    stop = None if tree["stop"] is None else Stop(**tree["stop"])
    return TrainState(
        params=tree["params"],
        buffers=tree["buffers"],
        opt_state=tree["opt_state"],
        progress=Progress(**tree["progress"]),
        seed=int(tree["seed"]),
        history=History(epochs=tuple(tree["history"]["epochs"]), steps=tuple(tree["history"]["steps"])),
        metrics=tree["metrics"],
        running=tree["running"],
        extras=tree["extras"],
        callbacks=tree["callbacks"],
        best=best,
        stop=stop,
        lr_scale=float(tree["lr_scale"]),
        recipe=tree["recipe"],
        data_info=tree.get("data_info") or {},
        model=None if like is None else like.model,
        optimizer=None if like is None else like.optimizer,
    )


def structure(x: Any) -> Any:
    """The nested shape of ``x`` with each tensor as ``("tensor", shape, dtype)``: to check that two
    optimizer states fit each other before one replaces the other (``structure(a) == structure(b)``)."""
    return tree_map(lambda v: ("tensor", tuple(v.shape), str(v.dtype)) if isinstance(v, torch.Tensor)
                    else type(v).__name__, x)


# --------------------------------------------------------------------------- shape of a stored state


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tensors(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


def tree_problem(tree: Any) -> str | None:
    """What is wrong with a stored state's structure and types (before anything trains on it), or None.

    A digest only says the file is as written; this says it is a state:
    ``tree_problem({"progress": {"epoch": 1, "step": -7, "batch": 99}, ...})`` is
    ``"progress.step: expected an integer >= 0, got -7"``.
    """
    if not isinstance(tree, dict):
        return f"the state is a {type(tree).__name__}, not a table"
    need = ("params", "buffers", "opt_state", "progress", "seed", "history", "metrics", "running", "extras",
            "callbacks", "best", "stop", "lr_scale", "recipe")
    missing = [k for k in need if k not in tree]
    if missing:
        return f"missing {', '.join(missing)}"
    for key in ("params", "buffers", "metrics", "running"):
        if not _tensors(tree[key]):
            return f"{key}: expected a table of named tensors"
    for key in ("extras", "callbacks"):
        if not isinstance(tree[key], dict):
            return f"{key}: expected a table, got {type(tree[key]).__name__}"
    if not isinstance(tree["opt_state"], (dict, list, tuple)):
        return f"opt_state: expected a table, got {type(tree['opt_state']).__name__}"
    p = tree["progress"]
    if not isinstance(p, dict) or set(p) != {"epoch", "step", "batch"}:
        return f"progress: expected {{epoch, step, batch}}, got {p!r}"[:200]
    for k in ("epoch", "step", "batch"):
        if not _is_int(p[k]) or p[k] < 0:
            return f"progress.{k}: expected an integer >= 0, got {p[k]!r}"
    if not _is_int(tree["seed"]) or not 0 <= tree["seed"] < 2**63:
        return f"seed: expected an integer in [0, 2**63), got {tree['seed']!r}"
    h = tree["history"]
    if not isinstance(h, dict) or not all(isinstance(h.get(k), (list, tuple)) and
                                          all(isinstance(r, dict) for r in h[k]) for k in ("epochs", "steps")):
        return "history: expected {epochs: [records], steps: [records]}"
    stop = tree["stop"]
    if stop is not None and not (isinstance(stop, dict) and set(stop) == {"reason", "failed"}
                                 and isinstance(stop["reason"], str) and isinstance(stop["failed"], bool)):
        return f"stop: expected none or {{reason, failed}}, got {stop!r}"[:200]
    best = tree["best"]
    fields = {"monitor", "mode", "value", "epoch", "step", "params", "buffers", "metrics"}
    if best is not None and not (isinstance(best, dict) and set(best) == fields and _tensors(best["params"])
                                 and _tensors(best["buffers"]) and isinstance(best["metrics"], dict)):
        return "best: expected none or {monitor, mode, value, epoch, step, params, buffers, metrics}"
    if not isinstance(tree["lr_scale"], (int, float)) or isinstance(tree["lr_scale"], bool) \
            or not 0 <= tree["lr_scale"] < float("inf"):
        return f"lr_scale: expected a finite number >= 0, got {tree['lr_scale']!r}"
    if tree["recipe"] is not None and not isinstance(tree["recipe"], dict):
        return f"recipe: expected a table, got {type(tree['recipe']).__name__}"
    if not isinstance(tree.get("data_info") or {}, dict):
        return "data_info: expected a table"
    return None


# --------------------------------------------------------------------------- digest


_PLAIN = (type(None), bool, int, float, str)

KEY_ENV = "SMARTCASH_FN_KEY"
"""The environment variable holding a team's secret: checkpoints are then signed with a keyed digest."""
KEYED = "blake2b-256-keyed:"
UNKEYED = "blake2b-256:"


def team_key() -> bytes | None:
    """The key of :data:`KEY_ENV` (its SHA-256, so any length of text works), or None when unset or empty."""
    text = os.environ.get(KEY_ENV, "")
    return hashlib.sha256(text.encode("utf-8")).digest() if text else None


def digest(tree: Any, key: bytes | None = None) -> str:
    """A BLAKE2b-256 digest of nested plain data and tensors (dtype, shape and bytes), order-sensitive.

    ``docs/checkpoint-format.md`` spells out the byte stream, so other tools
    can recompute it. A value that ``torch.load(weights_only=True)`` could not
    read back (any type but tensors, dicts, lists, tuples, str, int, float,
    bool and None) raises :class:`CheckpointError` naming where it sits::

        digest({"a": torch.zeros(2), "b": [1, "x"]})   # 'blake2b-256:…'
        digest(tree, key=team_key())                   # 'blake2b-256-keyed:…' (BLAKE2b's keyed mode)
    """
    h = hashlib.blake2b(digest_size=32, key=key or b"")
    seen: dict[int, int] = {}

    for where, obj in walk(tree):
        if isinstance(obj, torch.Tensor):
            ref = seen.get(id(obj))
            if ref is not None:
                h.update(b"R" + struct.pack("<q", ref))
                continue
            seen[id(obj)] = len(seen)
            t = obj.detach().cpu().contiguous()
            h.update(b"T" + str(t.dtype).encode() + repr(tuple(t.shape)).encode())
            if t.numel():
                h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        elif type(obj) is dict:
            h.update(b"D" + struct.pack("<q", len(obj)))
        elif type(obj) in (list, tuple):
            h.update((b"L" if isinstance(obj, list) else b"U") + struct.pack("<q", len(obj)))
        elif type(obj) in _PLAIN:
            h.update(b"S" + type(obj).__name__.encode() + b":" + repr(obj).encode() + b"\x00")
        else:
            raise CheckpointError(
                f"cannot checkpoint the value at {where or 'the top'}, of type {type(obj).__name__}: a checkpoint "
                "holds tensors, dicts, lists, tuples, str, int, float, bool and None only; convert it "
                "(e.g. float(x), str(path)) before it enters the state")
    return (KEYED if key else UNKEYED) + h.hexdigest()


def _body(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the digest covers: every top-level key but ``digest`` itself, in file order."""
    return {k: v for k, v in obj.items() if k != "digest"}


# --------------------------------------------------------------------------- files


def save(state: TrainState, path: str | os.PathLike, **meta: Any) -> Path:
    """Write ``state`` as a checkpoint file at ``path`` (atomically); ``meta`` adds plain top-level keys.

    ``save(state, "ckpt.pt")`` — returns the path.
    """
    if not isinstance(state, TrainState):
        raise StateError(f"save: expected a TrainState, got {type(state).__name__}")
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "torch_version": str(torch.__version__),
        "environment": environment.of_params(state.params),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "digest": "",
        "meta": dict(meta),
        "state": to_tree(state),
    }
    try:
        obj["digest"] = digest(_body(obj), team_key())
    except CheckpointError as e:
        raise CheckpointError(f"{path}: not written: {e}") from None
    try:
        return save_torch_atomic(path, obj)
    except OSError as e:
        raise CheckpointError(f"{path}: could not write the checkpoint ({e.strerror or e}); a file that was "
                              "there is intact. Check the folder exists, is writable and has space") from None


# What torch's weights-only unpickler says when a file asks for code (a global, a class, an object build).
_UNSAFE = ("Unsupported global", "unsupported GLOBAL", "Can only create new object", "Can only build")


def _reason(e: Exception) -> str:
    """The line of torch's load error that says what went wrong (without its advice to trust the file)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        detail = ln.split("WeightsUnpickler error:", 1)[-1].strip()
        if detail.startswith(("Unsupported", "Can only", "Trying")):
            return detail.split(" Please use", 1)[0]
    return f"{type(e).__name__}: {lines[0].split('. ', 1)[0]}" if lines else type(e).__name__


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict at ``path`` after every check: readable, safe, right format, digest intact."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (give a checkpoint file, e.g. {path}/last.pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 - every failure to read is reported as bad input
        text, first = str(e), _reason(e)
        if any(m in text for m in _UNSAFE):
            raise CheckpointError(
                f"{path}: refused to load: the file asks to unpickle something other than tensors and plain "
                f"data (a pickled callable or object); nothing in it was run ({first})"
            ) from None
        raise CheckpointError(
            f"{path}: unreadable checkpoint: truncated or corrupt, or not written by torch.save ({first})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a smartcash_fn checkpoint (no 'format': {FORMAT!r} key)")
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}; this smartcash_fn {__version__} reads version "
            f"{FORMAT_VERSION}. Load it with the smartcash_fn that wrote it (library_version "
            f"{obj.get('library_version')!r})"
        )
    for key in ("digest", "state"):
        if key not in obj:
            raise CheckpointError(f"{path}: checkpoint is missing its {key!r} key")
    stated, key = obj["digest"], team_key()
    keyed = isinstance(stated, str) and stated.startswith(KEYED)
    if keyed and key is None:
        raise CheckpointError(f"{path}: the checkpoint is signed with a team key; set {KEY_ENV} to that key to "
                              "verify and read it")
    if key is not None and not keyed:
        raise CheckpointError(f"{path}: {KEY_ENV} is set, but the checkpoint is not signed with a key: it was not "
                              f"written by your team (or was altered); unset {KEY_ENV} to read it as untrusted data")
    try:
        actual = digest(_body(obj), key if keyed else None)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if keyed and actual != stated:
        raise CheckpointError(f"{path}: the keyed digest does not match {KEY_ENV}: the file was altered, or signed "
                              "with another key; use another checkpoint")
    if actual != obj["digest"]:
        raise CheckpointError(
            f"{path}: integrity check failed: the state's digest is {actual}, the file says {obj['digest']}; "
            "the file is corrupt — use another checkpoint"
        )
    problem = tree_problem(obj["state"])
    if problem:
        raise CheckpointError(f"{path}: the checkpoint's state is malformed ({problem}); use another checkpoint")
    return obj


def load(path: str | os.PathLike, like: TrainState | None = None) -> TrainState:
    """The :class:`TrainState` stored at ``path``, verified; ``like`` supplies model and optimizer.

    ``state = load("last.pt", like=TrainState.create(make_model, adamw(1e-3)))``
    """
    obj = read(path)
    try:
        return from_tree(obj["state"], like, where=str(path))
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: the checkpoint's state is malformed ({type(e).__name__}: {e})") from None
