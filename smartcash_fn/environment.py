"""The environment a run's bits depend on beyond its state: torch, the device, deterministic kernels.

A checkpoint records :func:`current` for the params' device when it is
written; :func:`notes` compares such a record with the environment in hand
and says, in plain words, what differs — a resume or replay under another
torch, device kind or kernel setting may not reach the same bits, which is
worth a note, not an error. :func:`use_deterministic` turns CUDA's
deterministic kernels on or off (the CPU's are deterministic already)::

    use_deterministic(True, "cuda")                     # before any CUDA work
    recorded = checkpoint.read("runs/a/checkpoints/last.pt")
    for line in notes(recorded_environment(recorded), current("cuda")):
        print("note:", line)
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Iterator, Mapping

import torch

CUBLAS_WORKSPACE = ":4096:8"
"""The cuBLAS workspace setting (``CUBLAS_WORKSPACE_CONFIG``) that makes cuBLAS deterministic."""


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0 if device.index is None else device.index)
    return device.type


def current(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The environment of ``device`` now: torch version, device kind and name, deterministic kernels.

    Plain data (strings and bools), as a checkpoint stores it::

        current("cpu")   # {"torch": "2.14.1+cu130", "device": "cpu", "device_name": "cpu", "deterministic": False}
    """
    device = torch.device(device)
    return {
        "torch": str(torch.__version__),
        "device": device.type,
        "device_name": _device_name(device),
        "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
    }


def of_params(params: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """:func:`current` for the device the first of ``params`` lives on (the CPU when there are none)."""
    first = next(iter(params.values()), None)
    return current("cpu" if first is None else first.device)


def recorded_environment(header: Mapping[str, Any]) -> dict[str, Any]:
    """The environment a checkpoint (the dict :func:`smartcash_fn.checkpoint.read` returns) was written in.

    Files written before the environment was recorded give what they hold:
    the torch version only.
    """
    env = header.get("environment")
    if isinstance(env, Mapping):
        return dict(env)
    return {"torch": header.get("torch_version")} if header.get("torch_version") else {}


def notes(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> tuple[str, ...]:
    """Plain notes on what differs between a ``recorded`` environment and ``now``; ``()`` when nothing does.

    A pure function of two :func:`current` records; keys either side lacks
    are not compared. On the CPU the kernel setting makes no difference and
    is not mentioned::

        notes({"torch": "2.13.0"}, current())   # ('written under torch 2.13.0, running under torch 2.14.1: ...',)
    """
    out: list[str] = []
    same_bits = "the bits may differ from the run that wrote it"

    def differs(key: str) -> bool:
        return key in recorded and key in now and recorded[key] != now[key]

    if differs("torch"):
        out.append(f"written under torch {recorded['torch']}, running under torch {now['torch']}: {same_bits}")
    if differs("device"):
        out.append(f"written on {recorded['device']}, running on {now['device']}: {same_bits}")
    elif differs("device_name"):
        out.append(f"written on {recorded['device_name']}, running on {now['device_name']}: {same_bits}")
    on_cuda = "cuda" in (recorded.get("device"), now.get("device"))
    if differs("deterministic") and on_cuda:
        def word(on: bool) -> str:
            return "on" if on else "off"
        out.append(f"deterministic CUDA kernels were {word(recorded['deterministic'])} when it was written and "
                   f"are {word(now['deterministic'])} now (run.deterministic): {same_bits}")
    return tuple(out)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run a block on one torch thread, then give the thread count back (also on an error).

    A reduction on the CPU adds in an order that follows the thread count, so
    work whose bits must not depend on the machine's cores (an augmented
    sample: the mean grey of a contrast change) runs on one thread, as a
    loader worker does anyway::

        with one_torch_thread():
            image = augment(image, boxes, labels, generator)[0]
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""The x86 CPU flags (``/proc/cpuinfo``) of instructions that multiply bfloat16 natively: AVX512-BF16 (AMD
Zen 4 and later, Intel Cooper Lake) and AMX-BF16 (Intel Sapphire Rapids and later)."""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (``flags`` on x86, ``Features`` on Arm); empty elsewhere.

    ``"avx2" in cpu_flags()``
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: str | torch.device = "cpu", flags: frozenset[str] | None = None) -> str | None:
    """Why ``device`` computes bfloat16 natively, or None where it does not (there bf16 autocast is emulated
    and slower than float32): a CUDA GPU that supports bf16, or a CPU with one of :data:`CPU_BF16_FLAGS`
    (``flags``: :func:`cpu_flags` unless given). What ``train.precision = "auto"`` asks::

        native_bf16("cpu")    # "this CPU has avx512_bf16" on an AMD EPYC Zen 4; None on an AVX2-only CPU
    """
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return f"{_device_name(device)} computes bf16" if ok else None
    if device.type != "cpu":
        return None
    have = [f for f in CPU_BF16_FLAGS if f in (cpu_flags() if flags is None else flags)]
    return f"this CPU has {' and '.join(have)}" if have else None


def use_deterministic(on: bool, device: str | torch.device) -> None:
    """Turn deterministic kernels on or off for training on ``device``; nothing to do on the CPU.

    On CUDA, ``on`` sets ``torch.use_deterministic_algorithms(True)``,
    ``cudnn.deterministic = True``, ``cudnn.benchmark = False`` and
    ``CUBLAS_WORKSPACE_CONFIG`` (unless already set); call it before any CUDA
    work. ``off`` turns the first two back off and leaves the rest.
    """
    if torch.device(device).type != "cuda":
        return
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


_NO_KERNEL = re.compile(r"^\s*(\S+) does not have a deterministic implementation")


def nondeterministic_op(error: BaseException) -> str | None:
    """The op named by torch's "does not have a deterministic implementation" error, or None for other errors.

    ``nondeterministic_op(RuntimeError("index_add_cuda_ does not have a deterministic implementation, ..."))``
    gives ``"index_add_cuda_"``.
    """
    if not isinstance(error, RuntimeError):
        return None
    m = _NO_KERNEL.search(str(error))
    return m.group(1) if m else None
