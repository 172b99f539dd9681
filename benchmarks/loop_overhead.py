"""Loop overhead: smartcash_fn against a hand-written PyTorch loop, same model, data and order.

Each case trains one model by two loops in the same process, from the same
initial weights, over the same batches in the same order:

- **hand**: ``torch.optim.AdamW(foreach=True)``, a ``DataLoader`` over a
  ``TensorDataset`` whose batch sampler is the library's epoch order,
  ``loss.backward()``, ``optimizer.step()``,
  ``optimizer.zero_grad(set_to_none=True)``;
- **smartcash_fn**: ``fit(state, Loop(step=make_step(classification_loss),
  data=TensorData((x, y), 64), epochs=E))`` with no validation and no
  callbacks, from ``TrainState.create(model, adamw(...), seed=...)``.

Both are warmed up, then timed in turn (hand, smartcash_fn, hand, ..., each
loop once per repetition); the report gives the median steps/s of each, the
ratio of the medians, by the wall clock and by CPU time, and whether every
final param and buffer is bit-identical (``torch.equal``). Two more loops run
in each repetition for information: a hand-written loop that gathers batches
by index instead of using a ``DataLoader`` (the loop overhead without the
data path), and smartcash_fn with a validation set and the ``nan_guard``
callback; their params must match bit for bit too. The exit status is 1 when
any run's params differ, 2 on bad arguments; timings are reported, never
asserted::

    .venv/bin/python benchmarks/loop_overhead.py                 # both cases, 5 repetitions
    .venv/bin/python benchmarks/loop_overhead.py --quick         # smoke check, well under 20 s
    .venv/bin/python benchmarks/loop_overhead.py --json figures.json --threads 2 --steady-malloc

Figures and method: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import ctypes
import gc
import io
import json
import os
import platform
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import smartcash_fn as sf
from smartcash_fn import rng
from smartcash_fn.data import epoch_order

SEED = 0
LR = 1e-3
WEIGHT_DECAY = 1e-2


# --------------------------------------------------------------------------- cases


@attrs.frozen
class Case:
    """One comparison: a model factory, training and validation tensors, batch size, epochs.

    ``Case("mlp", make_mlp, x, y, xv, yv, batch_size=64, epochs=3)``;
    ``attrs.evolve(case, epochs=1)`` is the same case for one epoch.
    """

    name: str
    make_model: Callable[[], nn.Module]
    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    batch_size: int = 64
    epochs: int = 3

    @property
    def steps(self) -> int:
        """Optimizer steps in one run: batches per epoch (last one partial) times epochs."""
        return -(-self.x.shape[0] // self.batch_size) * self.epochs


def make_mlp() -> nn.Module:
    """The tiny MLP: 64 -> 256 -> 256 -> 10 with ReLUs; ``make_mlp()(torch.randn(64, 64)).shape == (64, 10)``."""
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def make_cnn() -> nn.Module:
    """A small CNN for 1x28x28 images: two conv+BatchNorm+ReLU+maxpool blocks, then a linear layer to 10.

    ``make_cnn()(torch.randn(64, 1, 28, 28)).shape == (64, 10)``
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


def _teacher_labels(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Labels from a fixed random linear teacher, so the loss has something to learn."""
    flat = x.reshape(x.shape[0], -1)
    w = torch.randn(flat.shape[1], 10, generator=g)
    return (flat @ w).argmax(1)


def synthetic(shape: tuple[int, ...], n: int, n_val: int, purpose: str) -> tuple[torch.Tensor, ...]:
    """``n`` training and ``n_val`` validation samples of ``shape``, with teacher labels, from a seeded generator.

    ``x, y, x_val, y_val = synthetic((64,), 8192, 1024, "bench-mlp")``
    """
    g = rng.generator(SEED, purpose)
    x = torch.randn(n + n_val, *shape, generator=g)
    y = _teacher_labels(x, g)
    return x[:n].contiguous(), y[:n].contiguous(), x[n:].contiguous(), y[n:].contiguous()


def mlp_case(n: int = 8192, epochs: int = 3) -> Case:
    """The MLP case: ``n`` samples of 64 features (and ``n // 8`` for validation), batch 64: ``mlp_case(epochs=1)``."""
    return Case("mlp", make_mlp, *synthetic((64,), n, n // 8, "bench-mlp"), batch_size=64, epochs=epochs)


def cnn_case(n: int = 8192, epochs: int = 2) -> Case:
    """The CNN case: ``n`` synthetic 1x28x28 images (and ``n // 8`` for validation), batch 64: ``cnn_case(512, 1)``."""
    return Case("cnn", make_cnn, *synthetic((1, 28, 28), n, n // 8, "bench-cnn"), batch_size=64, epochs=epochs)


# --------------------------------------------------------------------------- the loops


def hand_loop(case: Case, model: nn.Module, loader: bool = True) -> nn.Module:
    """Train ``model`` in place the usual PyTorch way, in the library's data order; returns it.

    With ``loader`` the batches come from a ``DataLoader`` over a
    ``TensorDataset`` (per-sample indexing and collate); without it they are
    gathered by index (``index_select``), as :class:`~smartcash_fn.TensorData` does::

        model = hand_loop(mlp_case(), copy.deepcopy(base))
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, foreach=True)
    dataset = TensorDataset(case.x, case.y)
    n, bs = case.x.shape[0], case.batch_size
    model.train()
    for epoch in range(case.epochs):
        order = epoch_order(SEED, epoch, n, True)
        if loader:
            idx = order.tolist()
            batches = DataLoader(dataset, batch_sampler=[idx[i:i + bs] for i in range(0, n, bs)])
        else:
            batches = ((case.x.index_select(0, i), case.y.index_select(0, i)) for i in order.split(bs))
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return model


def fn_loop(case: Case, validation: bool = False) -> sf.Loop:
    """The smartcash_fn loop of ``case``: plain, or with a validation set and ``nan_guard``.

    ``state = sf.fit(fn_state(base), fn_loop(case, validation=True))``
    """
    loop = sf.Loop(step=sf.make_step(sf.classification_loss),
                   data=sf.TensorData((case.x, case.y), case.batch_size), epochs=case.epochs)
    if validation:
        val = sf.Validation(sf.TensorData((case.x_val, case.y_val), 256, shuffle=False))
        loop = attrs.evolve(loop, validation=val).add(sf.nan_guard())
    return loop


def fn_state(base: nn.Module) -> sf.TrainState:
    """A fresh smartcash_fn state from ``base`` (its params are copied, ``base`` is left alone): ``fn_state(base)``."""
    return sf.TrainState.create(base, sf.adamw(LR, weight_decay=WEIGHT_DECAY), seed=SEED)


@attrs.frozen
class Timing:
    """How long a run took: ``wall`` clock seconds, ``cpu`` seconds of this process, minor page ``faults``.

    ``Timing(wall=0.71, cpu=0.69, faults=12).wall``; on a machine shared with
    other work the CPU time is the steadier of the two. Page faults show the
    memory allocator handing pages back to the system and taking them again.
    """

    wall: float
    cpu: float
    faults: int


Tensors = dict[str, torch.Tensor]
Runner = Callable[[Case, nn.Module], "tuple[Tensors, Timing]"]


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(fn: Callable[[], Any]) -> tuple[Any, Timing]:
    gc.collect()
    f0, w0, c0 = _minor_faults(), time.perf_counter(), time.process_time()
    out = fn()
    w1, c1, f1 = time.perf_counter(), time.process_time(), _minor_faults()
    return out, Timing(wall=w1 - w0, cpu=c1 - c0, faults=f1 - f0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)


def steady_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> None:
    """Fix glibc malloc's mmap and trim thresholds, so freed activations stay in the heap.

    By default glibc serves blocks of a few MB (a CNN's activations) with
    ``mmap`` or trims the heap after freeing them, and the next step faults
    the pages in again: thousands of page faults per step, more or fewer from
    one run to the next. Fixed thresholds take that noise out of the
    comparison; they apply to every loop alike::

        steady_malloc()   # before the first run
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        raise OSError("this C library has no mallopt (glibc only); run without --steady-malloc") from None
    if not (mallopt(M_MMAP_THRESHOLD, mmap_threshold) and mallopt(M_TRIM_THRESHOLD, trim_threshold)):
        raise OSError("mallopt refused the thresholds; run without --steady-malloc")


def run_hand(case: Case, base: nn.Module, loader: bool = True) -> tuple[Tensors, Timing]:
    """The hand-written loop from a deepcopy of ``base``: final params and buffers, and its timing.

    ``tensors, timing = run_hand(mlp_case(), base)``; the deepcopy is timed too.
    """
    model, timing = _timed(lambda: hand_loop(case, copy.deepcopy(base), loader))
    return {**{k: v.detach() for k, v in model.named_parameters()}, **dict(model.named_buffers())}, timing


def run_fn(case: Case, base: nn.Module, validation: bool = False) -> tuple[Tensors, Timing]:
    """``fit`` from ``TrainState.create(base, ...)``: final params and buffers, and its timing.

    ``tensors, timing = run_fn(cnn_case(), base, validation=True)``; making the state is timed too.
    """
    state, timing = _timed(lambda: sf.fit(fn_state(base), fn_loop(case, validation)))
    if state.progress.step != case.steps:
        raise RuntimeError(f"{case.name}: smartcash_fn ran {state.progress.step} steps, expected {case.steps}")
    return {**state.params, **state.buffers}, timing


RUNNERS: dict[str, Runner] = {
    "hand": run_hand,
    "smartcash_fn": run_fn,
    "hand_gather": lambda case, base: run_hand(case, base, loader=False),
    "smartcash_fn_val_nan_guard": lambda case, base: run_fn(case, base, validation=True),
}
"""The loops timed, in the order each repetition runs them; the last two are for information."""

INFO = {
    "hand_gather": "hand-written loop gathering batches by index, no DataLoader",
    "smartcash_fn_val_nan_guard": "smartcash_fn with a validation set (1/8 of the training size, batch 256) "
                                  "every epoch and nan_guard",
}


# --------------------------------------------------------------------------- checks


def differences(a: Tensors, b: Tensors) -> list[str]:
    """Names of the tensors whose bits (or dtype) differ between ``a`` and ``b``, or that one of them lacks.

    ``differences(hand_tensors, fn_tensors) == []`` means bit-identical.
    """
    names = sorted(set(a) | set(b))
    return [k for k in names if k not in a or k not in b
            or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]


# --------------------------------------------------------------------------- the comparison


def compare(case: Case, reps: int, info: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Warm up, then time ``reps`` alternating runs of each loop on ``case``; figures and bit checks.

    Every run starts from the same initial model and is checked bit for bit
    against the hand-written loop of the same repetition::

        r = compare(mlp_case(), reps=5)
        r["ratio"], r["bit_identical"]
    """
    with rng.seeded(SEED, "init"):
        base = case.make_model()
    names = list(RUNNERS) if info else ["hand", "smartcash_fn"]
    warm = attrs.evolve(case, epochs=1)
    for name in names:
        RUNNERS[name](warm, base)

    sps: dict[str, list[float]] = {name: [] for name in names}
    cpu_sps: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[float]] = {name: [] for name in names}
    mismatched: dict[str, list[str]] = {name: [] for name in names}
    for rep in range(reps):
        reference: Tensors = {}
        parts = []
        for name in names:
            tensors, timing = RUNNERS[name](case, base)
            sps[name].append(case.steps / timing.wall)
            cpu_sps[name].append(case.steps / timing.cpu)
            faults[name].append(timing.faults / case.steps)
            figure = f"{name} {sps[name][-1]:.1f} ({cpu_sps[name][-1]:.1f})"
            if name == "hand":
                reference = tensors
                parts.append(figure)
                continue
            diff = differences(reference, tensors)
            mismatched[name] += [f"rep {rep}: {k}" for k in diff]
            parts.append(figure + ("" if not diff else " DIFFERENT: " + ", ".join(diff)))
        log(f"  rep {rep} steps/s wall (cpu): " + "   ".join(parts))

    med = {name: statistics.median(v) for name, v in sps.items()}
    cpu_med = {name: statistics.median(v) for name, v in cpu_sps.items()}
    faults_med = {name: statistics.median(v) for name, v in faults.items()}
    result: dict[str, Any] = {
        "case": case.name,
        "samples": case.x.shape[0],
        "batch_size": case.batch_size,
        "epochs": case.epochs,
        "steps_per_run": case.steps,
        "repetitions": reps,
        "tensors_checked": len(reference),
        "steps_per_s": sps,
        "cpu_steps_per_s": cpu_sps,
        "median_steps_per_s": med,
        "median_cpu_steps_per_s": cpu_med,
        "page_faults_per_step": faults,
        "median_page_faults_per_step": faults_med,
        "ratio": med["smartcash_fn"] / med["hand"],
        "cpu_ratio": cpu_med["smartcash_fn"] / cpu_med["hand"],
        "bit_identical": not mismatched["smartcash_fn"],
        "mismatched": mismatched["smartcash_fn"],
    }
    result["info"] = {
        name: {"what": INFO[name], "median_steps_per_s": med[name], "median_cpu_steps_per_s": cpu_med[name],
               "median_page_faults_per_step": faults_med[name],
               "ratio_to_hand": med[name] / med["hand"], "cpu_ratio_to_hand": cpu_med[name] / cpu_med["hand"],
               "bit_identical_to_hand": not mismatched[name], "mismatched": mismatched[name]}
        for name in names if name in INFO
    }
    return result


def profile_fn(case: Case, top: int = 25) -> str:
    """cProfile of one smartcash_fn run of ``case``: the ``top`` entries by own time, as text.

    ``print(profile_fn(mlp_case(), top=15))``
    """
    with rng.seeded(SEED, "init"):
        base = case.make_model()
    sf.fit(fn_state(base), fn_loop(attrs.evolve(case, epochs=1)))
    prof = cProfile.Profile()
    prof.enable()
    sf.fit(fn_state(base), fn_loop(case))
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --------------------------------------------------------------------------- machine and report


def machine() -> dict[str, Any]:
    """The CPU model, core counts, load average, torch version and threads in use: ``machine()["cpu"]``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "torch": torch.__version__,
        "smartcash_fn": sf.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


TARGETS = {"mlp": 1.0, "cnn": 0.98}


def summary(result: dict[str, Any], judge: bool = True) -> str:
    """The report lines of one case: median steps/s by wall clock, by CPU time, and page faults per step.

    Without ``judge`` (a smoke run) the ratio is not held against the target::

        print(summary(compare(mlp_case(), reps=5)))
    """
    target = TARGETS.get(result["case"])
    met = "" if target is None else f"   target >= {target:.2f}x: {'met' if result['ratio'] >= target else 'NOT met'}"
    if target is not None and not judge:
        met = f"   target >= {target:.2f}x: not judged from a --quick run"
    med, cpu = result["median_steps_per_s"], result["median_cpu_steps_per_s"]
    flt = result["median_page_faults_per_step"]

    def row(label: str, name: str) -> str:
        return f"  {label:<34s}{med[name]:9.1f}{cpu[name]:10.1f}{flt[name]:10.1f}"

    lines = [
        f"{result['case']}: {result['samples']} samples, batch {result['batch_size']}, {result['epochs']} epochs "
        f"= {result['steps_per_run']} steps per run, {result['repetitions']} repetitions",
        f"  {'median steps/s':<34s}{'wall':>9s}{'cpu':>10s}{'faults':>10s} (minor page faults per step)",
        row("hand-written loop (DataLoader)", "hand"),
        row("smartcash_fn (TensorData)", "smartcash_fn"),
        f"  {'ratio smartcash_fn / hand':<34s}{result['ratio']:8.3f}x{result['cpu_ratio']:9.3f}x{met}",
        f"  final params and buffers bit-identical ({result['tensors_checked']} tensors, every repetition): "
        f"{'yes' if result['bit_identical'] else 'NO: ' + ', '.join(result['mismatched'])}",
    ]
    if result["info"]:
        lines.append("  for information (ratios to the hand-written loop; bit-identical to it):")
    for name, v in result["info"].items():
        lines.append(row(name, name) + f"   {v['ratio_to_hand']:.3f}x / {v['cpu_ratio_to_hand']:.3f}x; "
                     f"{'identical' if v['bit_identical_to_hand'] else 'DIFFERENT'}")
        lines.append(f"    ({v['what']})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked; a bad flag exits 2 naming it: ``parse_args(["--quick"]).quick``."""
    p = argparse.ArgumentParser(
        description="Steps/s of smartcash_fn against a hand-written PyTorch loop on the same model, data and "
                    "order; exits 1 when the final params are not bit-identical.")
    p.add_argument("--quick", action="store_true",
                   help="smoke check: 1 epoch, 2 repetitions, 512 CNN images")
    p.add_argument("--json", metavar="PATH", type=Path, help="write the figures to PATH as JSON")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads value (default 1)")
    p.add_argument("--reps", type=int, help="timed repetitions of each loop (default 5, 2 with --quick)")
    p.add_argument("--case", choices=("all", "mlp", "cnn"), default="all", help="which case to run")
    p.add_argument("--no-info", action="store_true",
                   help="time only the two loops the targets compare (skip the informational runs)")
    p.add_argument("--profile", action="store_true",
                   help="also print a cProfile of one smartcash_fn run of each case")
    p.add_argument("--steady-malloc", action="store_true",
                   help="fix glibc malloc's mmap/trim thresholds first, so large activations stop "
                        "page-faulting in and out (less noise; applies to every loop alike)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.reps is not None and args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    if args.json is not None:
        parent = args.json.parent if str(args.json.parent) else Path(".")
        if not parent.is_dir():
            p.error(f"--json {args.json}: the folder {parent} does not exist; create it or choose another path")
        if args.json.is_dir():
            p.error(f"--json {args.json}: is a folder; give a file path such as {args.json / 'loop_overhead.json'}")
    return args


def write_json(path: Path, figures: dict[str, Any]) -> None:
    """Write ``figures`` to ``path`` atomically (temp file in the same folder, then ``os.replace``).

    ``write_json(Path("figures.json"), {"results": [...]})``
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(figures, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every run is bit-identical, 1 when one is not, 2 on bad arguments.

    ``sys.exit(main(["--quick", "--json", "figures.json"]))``
    """
    args = parse_args(argv)
    if args.steady_malloc:
        try:
            steady_malloc()
        except OSError as e:
            print(f"loop_overhead: error: {e}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    reps = args.reps or (2 if args.quick else 5)
    cases: list[Case] = []
    if args.case in ("all", "mlp"):
        cases.append(mlp_case(epochs=1 if args.quick else 3))
    if args.case in ("all", "cnn"):
        cases.append(cnn_case(n=512 if args.quick else 8192, epochs=1 if args.quick else 2))

    info = machine()
    print(f"machine: {info['cpu']}, {info['logical_cpus']} logical CPUs ({info['usable_cpus']} usable), "
          f"load {info['load_average_at_start']}")
    print(f"torch {info['torch']}, smartcash_fn {info['smartcash_fn']}, python {info['python']}, "
          f"torch.set_num_threads({info['torch_threads']}), "
          f"malloc {'steady (fixed thresholds)' if args.steady_malloc else 'default'}")
    results = []
    for case in cases:
        print(f"{case.name}: warming up, then {reps} alternating repetitions")
        results.append(compare(case, reps, info=not args.no_info))
    print()
    for r in results:
        print(summary(r, judge=not args.quick))
    if args.profile:
        for case in cases:
            print(f"\ncProfile of one smartcash_fn run, {case.name} (by own time):")
            print(profile_fn(case))

    ok = all(r["bit_identical"] and all(v["bit_identical_to_hand"] for v in r["info"].values()) for r in results)
    if args.json is not None:
        write_json(args.json, {"machine": info, "quick": args.quick, "steady_malloc": args.steady_malloc,
                               "results": results, "bit_identical": ok})
        print(f"figures written to {args.json}")
    if not ok:
        print("FAILED: final params differ between the loops (see above)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
