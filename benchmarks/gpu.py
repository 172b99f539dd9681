"""GPU figures in one script: the library's step against hand-written loops, determinism's cost, a whole run.

Six measurements, one JSON on stdout's last line (and ``--json PATH``) after a table:

- **throughput** — images/s and peak memory of one training step on a fixed,
  already rendered batch (the data path left out), for the detector with
  ``efficientnet_b4`` at 640 px batch 16 and ``cspdarknet`` at 640 px batch
  32, each in fp32 and bf16, and the tiny MLP (64 -> 256 -> 256 -> 10, batch
  64). Three loops per case, from the same initial weights: the library's
  step (``clip(10)(make_step(loss))``, ``bf16()`` outermost for bf16) and two
  hand-written loops (``torch.optim.AdamW`` with ``foreach=True`` and with
  ``fused=True``, ``loss.backward()``, ``clip_grad_norm_(10)``,
  ``zero_grad(set_to_none=True)``, ``torch.autocast`` for bf16). Kernels are
  torch's defaults here (``run.deterministic`` off) so all loops run alike.
  More rows in the last precision: each detector with ``channels_last``, and
  ``cspdarknet`` with the decoupled head and its task-aligned loss (the
  default recipe's), with and without ``channels_last``;
- **loss share** — per detector case, for the coupled head with its loss and
  the decoupled head with the task-aligned loss: the seconds of the model's
  forward and backward with the loss, and of the loss alone (forward and
  backward on the outputs), in the last precision of the plan; the share is
  the second over the first; the marginal share is what the loss adds to
  the step over a bare loss (the three timed in turn, call by call);
- **profile** — three library steps of the ``cspdarknet`` case per head under
  ``torch.profiler``: kernel launches, host synchronizations, ``nonzero`` and
  ``item`` calls and aten ops per step, the kernels that took most time,
  and on a GPU the first call of one more step that makes the host wait
  (CUDA's sync debug mode);
- **deterministic** — the library's step on the detector cases with
  :func:`smartcash_fn.environment.use_deterministic` off and on: the cost of
  ``run.deterministic = true`` (on the CPU it sets nothing and costs nothing);
  an op without a deterministic kernel is reported by name;
- **end to end** — ``smartcash-fn data export-synthetic`` then ``smartcash-fn
  train recipes/rupiah_efficientnet_b4.toml`` on the export, timed from
  outside: training images/s over the whole run. The run's files record no
  timings (only the checkpoints' modification times), so the split into
  data wait, step, validation and checkpoint writing comes from an
  instrumented twin of the same run in this process (same recipe and keys,
  ``build`` + ``fit``, each part timed with a CUDA synchronize after it);
  what is left (callbacks, loggers, progress bar) is ``other``;
- **replay** — ``smartcash-fn replay epoch-0001.pt --verify epoch-0002.pt`` on
  that run: ``identical`` is the exit status 0.

Usage (the full run took 171-183 s on one H200; ``--quick`` shrinks every
size, uses the CPU, ``efficientnet_b0`` in place of b4 and fp32 only — bf16
autocast on a CPU is an emulation that takes seconds a step — and takes
well under a minute)::

    .venv/bin/python benchmarks/gpu.py --json gpu.json
    .venv/bin/python benchmarks/gpu.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import smartcash_fn as sf  # noqa: E402
from smartcash_fn import environment  # noqa: E402
from smartcash_fn.run import recipe as rc  # noqa: E402
from smartcash_fn.run.build import build, to_device  # noqa: E402
from smartcash_fn.smartcash import scenes as rupiah  # noqa: E402
from smartcash_fn.smartcash.aligned import aligned_loss  # noqa: E402
from smartcash_fn.smartcash.detection import Layout, detection_loss, pad_targets  # noqa: E402
from smartcash_fn.smartcash.detector import Detector  # noqa: E402

LAYOUT = Layout.of({layer: len(names) for layer, names in rupiah.LAYERS.items()})
B4_RECIPE = ROOT / "recipes" / "rupiah_efficientnet_b4.toml"
KEYS = ("machine", "quick", "throughput", "loss_share", "profile", "deterministic", "end_to_end", "replay", "seconds")
"""The top-level keys of the JSON (a test checks them)."""


@attrs.frozen
class Plan:
    """What to measure and at what size: ``Plan.full("cuda")`` or ``Plan.quick()``."""

    device: str
    detectors: tuple[tuple[str, str, int, int, dict], ...]  # (case name, backbone, size, batch, Detector kwargs)
    precisions: tuple[str, ...]
    variants: tuple[tuple[str, str, int, int, dict], ...]  # more throughput rows, in the last precision only
    warmup: int
    steps: int
    mlp_steps: int
    export_n: int
    export_size: int
    train_sets: tuple[str, ...]
    quick: bool

    @classmethod
    def full(cls, device: str) -> "Plan":
        return cls(device=device,
                   detectors=(("efficientnet_b4@640x16", "efficientnet_b4", 640, 16, {"width": 128}),
                              ("cspdarknet@640x32", "cspdarknet", 640, 32, {"width": 48, "backbone_width": 16})),
                   precisions=("fp32", "bf16"),
                   variants=(("efficientnet_b4@640x16 cl", "efficientnet_b4", 640, 16,
                              {"width": 128, "channels_last": True}),
                             ("cspdarknet@640x32 cl", "cspdarknet", 640, 32,
                              {"width": 48, "backbone_width": 16, "channels_last": True}),
                             ("cspdarknet@640x32 dec", "cspdarknet", 640, 32,
                              {"width": 48, "backbone_width": 16, "head": "decoupled"}),
                             ("cspdarknet@640x32 dec cl", "cspdarknet", 640, 32,
                              {"width": 48, "backbone_width": 16, "head": "decoupled", "channels_last": True})),
                   warmup=3, steps=10, mlp_steps=200, export_n=600, export_size=640,
                   train_sets=("train.epochs=2", f'run.device="{device}"'), quick=False)

    @classmethod
    def quick_plan(cls) -> "Plan":
        return cls(device="cpu",
                   detectors=(("efficientnet_b0@64x2", "efficientnet_b0", 64, 2, {"width": 16}),
                              ("cspdarknet@64x2", "cspdarknet", 64, 2, {"width": 16, "backbone_width": 8})),
                   precisions=("fp32",),
                   variants=(("cspdarknet@64x2 dec cl", "cspdarknet", 64, 2,
                              {"width": 16, "backbone_width": 8, "head": "decoupled", "channels_last": True}),),
                   warmup=1, steps=1, mlp_steps=20, export_n=12, export_size=64,
                   train_sets=("train.epochs=2", 'run.device="cpu"', 'model.params.backbone="efficientnet_b0"',
                               "model.params.width=16", "data.batch_size=4", "data.val_batch_size=4",
                               "data.workers=0", "data.params.size=64", "loggers.tensorboard=false",
                               "loggers.plots=false"),
                   quick=True)


# --------------------------------------------------------------------------- timing helpers


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float | None:
    if torch.device(device).type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return None  # not measured on the CPU


def _time_in_turn(runs: tuple[Callable[[], None], ...], device: str, warmup: int, steps: int) -> list[float]:
    """Seconds per call of each of ``runs``, timed in turn (one call of each per round, so a drift of the
    machine's speed touches them alike): the medians over ``steps`` rounds after ``warmup`` untimed ones."""
    for _ in range(warmup):
        for run_one in runs:
            run_one()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(steps):
        for run_one, kept in zip(runs, times):
            _sync(device)
            t0 = time.perf_counter()
            run_one()
            _sync(device)
            kept.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


# --------------------------------------------------------------------------- the cases


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def _detector_case(backbone: str, size: int, batch: int, kw: dict, device: str, head: str | None = None):
    """(model factory, batch on the device, loss(outputs, batch)) of one detector case; ``head`` (else
    ``kw["head"]``, else coupled) picks the head and its loss (``"coupled"``: ``detection_loss``,
    ``"decoupled"``: ``aligned_loss``)."""
    kw = dict(kw)
    head = head or kw.pop("head", "coupled")
    kw.pop("head", None)  # an explicit head wins over the case's
    scenes = rupiah.RupiahScenes("train", batch, size=size, augment=rupiah.Jitter())
    images, targets = rupiah.collate([scenes.sample(i, torch.Generator().manual_seed(i)) for i in range(batch)])
    data = to_device((images, pad_targets(targets)), device)  # padded, as the training collate serves them

    def factory() -> nn.Module:
        return Detector(backbone=backbone, groups=dict(LAYOUT.groups), head=head, **kw).to(device)

    def loss(out: Any, b: Any) -> torch.Tensor:
        if head == "decoupled":
            return aligned_loss(out, b[1], LAYOUT)[0]
        return detection_loss(out, b[1], LAYOUT, image_size=b[0].shape[-1])[0]

    return factory, data, loss


def _mlp_case(device: str):
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(64, 64, generator=g).to(device), torch.randint(0, 10, (64,), generator=g).to(device))
    return (lambda: _mlp().to(device)), data, (lambda out, b: F.cross_entropy(out, b[1]))


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def library_runner(factory: Callable[[], nn.Module], batch: Any, loss: Callable, precision: str) -> Callable[[], None]:
    """One library step per call, on a state carried between calls."""

    def loss_fn(apply, b):
        return _first(loss(apply(b[0]), b))

    step = sf.clip(10.0)(sf.make_step(loss_fn))
    if precision == "bf16":
        step = sf.bf16()(step)
    box = {"state": sf.TrainState.create(factory, sf.adamw(1e-3, weight_decay=0.01), seed=0)}
    box["state"].model.train(True)

    def run_one() -> None:
        box["state"] = step(box["state"], batch)

    return run_one


def hand_runner(factory: Callable[[], nn.Module], batch: Any, loss: Callable, precision: str,
                kind: str, device: str) -> Callable[[], None]:
    """One hand-written step per call: AdamW ``foreach`` or ``fused``, backward, clip_grad_norm_."""
    with sf.rng.seeded(0, "init"):
        model = factory()
    model.train(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01,
                            **({"foreach": True} if kind == "foreach" else {"fused": True}))
    dtype = torch.bfloat16 if precision == "bf16" else None

    def run_one() -> None:
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            value = _first(loss(model(batch[0]), batch))
        value.float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run_one


def _measure(make: Callable[[], Callable[[], None]], device: str, warmup: int, steps: int,
             images: int) -> dict[str, Any]:
    _reset_peak(device)
    try:
        run_one = make()
        sec = _time_in_turn((run_one,), device, warmup, steps)[0]
    except Exception as e:  # noqa: BLE001 - one failed case is reported, the others still run
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    finally:
        run_one = None  # noqa: F841 - free the model before the next case
    return {"images_per_s": round(images / sec, 2), "step_ms": round(sec * 1e3, 3), "peak_mib": _peak_mib(device)}


def measure_throughput(plan: Plan, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    cases = [(name, precision, *_detector_case(bb, size, batch, kw, plan.device), batch)
             for name, bb, size, batch, kw in plan.detectors for precision in plan.precisions]
    cases += [(name, plan.precisions[-1], *_detector_case(bb, size, batch, kw, plan.device), batch)
              for name, bb, size, batch, kw in plan.variants]
    cases += [("mlp@64", "fp32", *_mlp_case(plan.device), 64)]
    for name, precision, factory, batch, loss, images in cases:
        steps, warmup = (plan.mlp_steps, 10) if name.startswith("mlp") else (plan.steps, plan.warmup)
        row = {"case": name, "precision": precision}
        row["library"] = _measure(lambda: library_runner(factory, batch, loss, precision), plan.device, warmup,
                                  steps, images)
        for kind in ("foreach", "fused"):
            row[f"hand_{kind}"] = _measure(lambda: hand_runner(factory, batch, loss, precision, kind, plan.device),
                                           plan.device, warmup, steps, images)
        lib = row["library"].get("images_per_s")
        for kind in ("foreach", "fused"):
            hand = row[f"hand_{kind}"].get("images_per_s")
            row[f"ratio_vs_{kind}"] = round(lib / hand, 3) if lib and hand else None
        log(f"  {name:<24} {precision:<5} library {lib} img/s, ratio vs foreach {row['ratio_vs_foreach']}, "
            f"vs fused {row['ratio_vs_fused']}")
        rows.append(row)
    return rows


def measure_loss_share(plan: Plan, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per detector case and head, in the plan's last precision: the forward + backward of the model with its
    loss (one step without the optimizer, images/s), of the loss alone on the model's outputs (detached
    leaves), and of the model with a bare loss (the sum of its outputs' means), timed in turn call by call;
    ``share`` is the loss alone over the step (the issue's goal on a GPU: at most 0.15), ``marginal_share``
    what the loss adds to the step over the bare loss (its launches overlap the model's kernels there)."""
    rows = []
    precision = plan.precisions[-1]
    for name, bb, size, batch, kw in plan.detectors:
        for head in ("coupled", "decoupled"):
            factory, data, case_loss = _detector_case(bb, size, batch, kw, plan.device, head)
            torch.manual_seed(0)
            model = factory()
            autocast = torch.autocast(torch.device(plan.device).type, torch.bfloat16, enabled=precision == "bf16")
            kept: dict[str, Any] = {}

            def step() -> None:
                with autocast:
                    out = model(data[0])
                kept["out"] = {g: [o.detach().requires_grad_(True) for o in v] for g, v in out.items()}
                case_loss(out, data).backward()

            def loss_only() -> None:
                case_loss(kept["out"], data).backward()

            def bare() -> None:
                with autocast:
                    out = model(data[0])
                sum(o.float().mean() for v in out.values() for o in v).backward()

            try:
                step_s, loss_s, bare_s = _time_in_turn((step, loss_only, bare), plan.device, plan.warmup,
                                                       plan.steps)
                row = {"case": name, "head": head, "precision": precision, "step_s": round(step_s, 5),
                       "loss_s": round(loss_s, 5), "share": round(loss_s / step_s, 3),
                       "bare_step_s": round(bare_s, 5), "marginal_share": round((step_s - bare_s) / step_s, 3),
                       "images_per_s": round(batch / step_s, 1)}
            except Exception as e:  # noqa: BLE001 - a failed case is reported, the rest still measured
                row = {"case": name, "head": head, "precision": precision, "error": f"{type(e).__name__}: {e}"}
            log(f"  {name:<24} {head:<9} {precision:<5} {row}")
            rows.append(row)
    return rows


SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def _device_us(e: Any) -> float:
    """An averaged profiler event's own device time in microseconds (the attribute's name moved in torch 2.4)."""
    return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0) or 0.0)


def _first_host_wait(run_one: Callable[[], None]) -> str | None:
    """One more step with CUDA's sync debug mode raising at the first call that makes the host wait for the
    device: ``None`` when the step has none, else the error and the project's frames that led to it."""
    import traceback

    _sync("cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        run_one()
        return None
    except RuntimeError as e:
        frames = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_tb(e.__traceback__)
                  if "smartcash_fn" in f.filename or f.filename.endswith("gpu.py")]
        return f"{str(e).splitlines()[0][:160]} at {' < '.join(reversed(frames[-4:]))}"
    finally:
        torch.cuda.set_sync_debug_mode(0)


def measure_profile(plan: Plan, log: Callable[[str], None], steps: int = 3) -> list[dict[str, Any]]:
    """Per head, ``steps`` library steps of the last detector case in the last precision under
    ``torch.profiler`` (after the warm-up): per step, the kernels launched, the host synchronizations, the
    ops whose result the host must wait for (``nonzero``, ``item``), all aten ops, and the kernels that
    took most device time. The profiler's own closing synchronization is in ``synchronizations``. On a GPU
    one more step runs in CUDA's sync debug mode: ``host_wait`` names the first call that waits, or None."""
    from torch.profiler import ProfilerActivity, profile

    name, bb, size, batch, kw = plan.detectors[-1]
    precision = plan.precisions[-1]
    cuda = torch.device(plan.device).type == "cuda"
    rows = []
    for head in ("coupled", "decoupled"):
        factory, data, loss = _detector_case(bb, size, batch, kw, plan.device, head)
        row: dict[str, Any] = {"case": name, "head": head, "precision": precision, "steps": steps}
        try:
            run_one = library_runner(factory, data, loss, precision)
            for _ in range(plan.warmup):
                run_one()
            _sync(plan.device)
            with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
                for _ in range(steps):
                    run_one()
            events = prof.key_averages()
            counts: dict[str, int] = {}
            for e in events:
                counts[e.key] = counts.get(e.key, 0) + e.count
            launches = sum(c for k, c in counts.items() if k.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
            row["per_step"] = {
                "kernel_launches": round(launches / steps, 1),
                "synchronizations": round(sum(counts.get(k, 0) for k in SYNC_EVENTS) / steps, 2),
                "nonzero": round(counts.get("aten::nonzero", 0) / steps, 2),
                "item": round(counts.get("aten::_local_scalar_dense", 0) / steps, 2),
                "aten_ops": round(sum(c for k, c in counts.items() if k.startswith("aten::")) / steps, 1)}
            if cuda:
                top = sorted(events, key=_device_us, reverse=True)[:8]
                row["top_kernels_ms_per_step"] = {e.key[:80]: round(_device_us(e) / steps / 1e3, 3) for e in top}
                row["host_wait"] = _first_host_wait(run_one)
        except Exception as e:  # noqa: BLE001 - a failed case is reported, the rest still measured
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            run_one = None  # noqa: F841
        log(f"  {name:<24} {head:<9} {precision:<5} {row.get('per_step', row.get('error'))}")
        rows.append(row)
    return rows


def measure_deterministic(plan: Plan, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The library step's images/s with deterministic kernels off, then on (the setting is left off after)."""
    rows = []
    for name, bb, size, batch, kw in (plan.detectors[-1:] if plan.quick else plan.detectors):
        factory, data, loss = _detector_case(bb, size, batch, kw, plan.device)
        precision = plan.precisions[-1] if "cspdarknet" in bb else plan.precisions[0]
        row: dict[str, Any] = {"case": name, "precision": precision}
        for label, on in (("off", False), ("on", True)):
            environment.use_deterministic(on, plan.device)
            try:
                row[label] = _measure(lambda: library_runner(factory, data, loss, precision), plan.device,
                                      plan.warmup, plan.steps, batch)
            finally:
                environment.use_deterministic(False, plan.device)
            err = row[label].get("error", "")
            op = environment.nondeterministic_op(RuntimeError(err.split(": ", 1)[-1])) if err else None
            if op:
                row[label]["no_deterministic_kernel"] = op
        off, on = row["off"].get("images_per_s"), row["on"].get("images_per_s")
        row["cost_ratio_on_vs_off"] = round(on / off, 3) if on and off else None
        row["applies"] = torch.device(plan.device).type == "cuda"
        log(f"  {name:<24} {precision:<5} deterministic on/off: {row['cost_ratio_on_vs_off']}"
            + ("" if row["applies"] else " (CPU: the setting changes nothing)"))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- a whole run


def _cli(*args: str, timeout: float = 600) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "smartcash_fn", *args], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=str(ROOT))
    return p.returncode, time.perf_counter() - t0, (p.stdout + p.stderr)[-2000:]


class _Clock:
    """Seconds spent per part, summed."""

    def __init__(self, device: str):
        self.device, self.parts = device, {"data_wait": 0.0, "step": 0.0, "validation": 0.0, "checkpoint": 0.0}

    def timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                _sync(self.device)
                self.parts[part] += time.perf_counter() - t0
        return wrapped


@attrs.frozen
class _TimedData:
    """A data source whose ``batches`` count the time spent waiting for the next batch."""

    data: Any
    clock: Any
    part: str

    def __len__(self) -> int:
        return len(self.data)

    @property
    def batch_size(self) -> int:
        return int(getattr(self.data, "batch_size", 0) or 0)

    def batches(self, seed: int, epoch: int, start: int = 0):
        it = iter(self.data.batches(seed, epoch, start))
        while True:
            t0 = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                return
            finally:
                self.clock.parts[self.part] += time.perf_counter() - t0
            yield b


def instrumented_split(sets: list[str], run_dir: Path, device: str) -> dict[str, Any]:
    """The same run in this process with each part timed: data wait, step, validation, checkpoint, other."""
    built = build(rc.load(B4_RECIPE, sets=sets), run_dir, quiet=True)
    clock = _Clock(device)
    loop = built.loop
    v = loop.validation
    if v is not None:
        ev = attrs.evolve(v.evaluator, init=clock.timed("validation", v.evaluator.init),
                          update=clock.timed("validation", v.evaluator.update),
                          finish=clock.timed("validation", v.evaluator.finish))
        v = attrs.evolve(v, data=_TimedData(v.data, clock, "validation"), evaluator=ev)
    callbacks = tuple(attrs.evolve(c, fn=clock.timed("checkpoint", c.fn)) if c.name.startswith("checkpoint") else c
                      for c in loop.callbacks)
    loop = attrs.evolve(loop, step=clock.timed("step", loop.step), data=_TimedData(loop.data, clock, "data_wait"),
                        validation=v, callbacks=callbacks)
    t0 = time.perf_counter()
    state = sf.fit(built.template, loop)
    _sync(device)
    total = time.perf_counter() - t0
    parts = {k: round(s, 3) for k, s in clock.parts.items()}
    parts["other"] = round(total - sum(clock.parts.values()), 3)
    return {"seconds": round(total, 3), "parts_s": parts, "steps": state.progress.step,
            "note": "in-process twin of the CLI run; 'other' is callbacks, loggers and the loop itself"}


def measure_end_to_end(plan: Plan, work: Path, log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    data = work / "rupiah"
    rc_, sec, out = _cli("data", "export-synthetic", "--out", str(data), "--n", str(plan.export_n), "--size",
                         str(plan.export_size), "--workers", str(0 if plan.quick else min(8, os.cpu_count() or 1)),
                         "--quiet")
    if rc_ != 0:
        return {"error": f"export failed ({rc_}): {out}"}, {"identical": None}
    sets = [f'data.params.data_yaml="{data / "data.yaml"}"', *plan.train_sets]
    run = work / "run"
    args = ["train", str(B4_RECIPE), "--out", str(run), "--quiet"]
    for s in sets:
        args += ["--set", s]
    rc_, sec_train, out = _cli(*args)
    e2e: dict[str, Any] = {"export_s": round(sec, 2), "export_images": plan.export_n, "train_exit": rc_,
                           "train_wall_s": round(sec_train, 2), "sets": sets}
    ckpts = sorted((run / "checkpoints").glob("epoch-*.pt"))
    if rc_ != 0:
        e2e["error"] = out
        return e2e, {"identical": None}
    n_train = len(list((data / "images" / "train").glob("*"))) if (data / "images" / "train").is_dir() else None
    epochs = 2
    e2e["train_images"] = n_train
    if n_train:
        e2e["images_per_s_end_to_end"] = round(n_train * epochs / sec_train, 2)
    e2e["recorded_by_run_files"] = {"checkpoint_mtimes_s": [round(p.stat().st_mtime - ckpts[0].stat().st_mtime, 3)
                                                            for p in ckpts],
                                    "not_split": "data wait, step, validation and checkpoint time are not in "
                                                 "the run's files; see split"}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (run / "metrics.jsonl").is_file() else []
    e2e["run_time_lines"] = [{k: v for k, v in r.items() if k != "kind"} for r in lines if r.get("kind") == "time"]
    log(f"  train wall {sec_train:.1f}s for {n_train} images x {epochs} epochs (exit {rc_}); "
        f"the run's own split: {e2e['run_time_lines']}")
    try:
        twin = sets + ["train.epochs=1"] if plan.quick else sets  # --quick: one epoch is enough to split
        e2e["split"] = instrumented_split(twin, work / "twin", plan.device)
        log(f"  split: {e2e['split']['parts_s']}")
    except Exception as e:  # noqa: BLE001
        e2e["split"] = {"error": f"{type(e).__name__}: {e}"}
    replay: dict[str, Any] = {"identical": None}
    if len(ckpts) >= 2:
        rc_r, sec_r, out_r = _cli("replay", str(ckpts[0]), "--verify", str(ckpts[1]))
        replay = {"from": ckpts[0].name, "to": ckpts[1].name, "exit": rc_r, "identical": rc_r == 0,
                  "seconds": round(sec_r, 2), "output": out_r.strip().splitlines()[-1:]}
        log(f"  replay {ckpts[0].name} --verify {ckpts[1].name}: {'identical' if rc_r == 0 else 'DIFFERENT'}")
    return e2e, replay


def machine(device: str) -> dict[str, Any]:
    info = {"torch": torch.__version__, "device": device, "cpus": os.cpu_count(),
            "load": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(result: dict[str, Any]) -> str:
    lines = [f"{'case':<24} {'prec':<5} {'library':>9} {'foreach':>9} {'fused':>9} {'lib/fe':>7} {'lib/fu':>7} "
             f"{'peak MiB (lib/fe/fu)':>22}"]
    for r in result["throughput"]:
        def ips(k: str) -> str:
            v = r[k].get("images_per_s")
            return f"{v:>9.1f}" if v else f"{'err':>9}"

        peaks = "/".join(str(r[k].get("peak_mib")) for k in ("library", "hand_foreach", "hand_fused"))
        lines.append(f"{r['case']:<24} {r['precision']:<5} {ips('library')} {ips('hand_foreach')} "
                     f"{ips('hand_fused')} {str(r['ratio_vs_foreach']):>7} {str(r['ratio_vs_fused']):>7} {peaks:>22}")
    for r in result.get("loss_share", []):
        lines.append(f"loss share {r['case']} {r['head']} {r['precision']}: "
                     + (f"loss {r['loss_s']} s of {r['step_s']} s = {r['share']} (marginal "
                        f"{r['marginal_share']}), {r['images_per_s']} img/s" if "error" not in r else f"error: {r['error'][:200]}"))
    for r in result.get("profile", []):
        lines.append(f"profile {r['case']} {r['head']} {r['precision']} per step: {r.get('per_step', r.get('error'))}"
                     + (f"; first host wait in a step: {r['host_wait']}" if "host_wait" in r else ""))
    for r in result["deterministic"]:
        lines.append(f"deterministic on/off {r['case']} {r['precision']}: {r['cost_ratio_on_vs_off']}"
                     + ("" if r["applies"] else " (CPU: no effect)"))
    e = result["end_to_end"]
    if e.get("skipped"):
        lines.append("end to end: skipped")
    elif "error" in e:
        lines.append(f"end to end: error: {e['error'][:300]}")
    else:
        lines.append(f"end to end: {e.get('images_per_s_end_to_end')} images/s over {e['train_wall_s']} s; split "
                     f"{e.get('split', {}).get('parts_s')}")
    lines.append(f"replay --verify identical: {result['replay'].get('identical')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU (well under a minute)")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON here")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu (--quick: cpu)")
    parser.add_argument("--skip", default="",
                        help="comma-separated parts to skip: throughput,loss_share,profile,deterministic,end_to_end")
    args = parser.parse_args(argv)
    device = "cpu" if args.quick else (args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    plan = Plan.quick_plan() if args.quick else Plan.full(device)
    skip = set(filter(None, args.skip.split(",")))
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(plan.device), "quick": plan.quick}

    def part(key: str, measure: Callable[[Plan, Callable[[str], None]], Any]) -> None:
        log(key.replace("_", " "))
        result[key] = [] if key in skip else measure(plan, log)
        if args.json:  # what is measured so far survives a run stopped at its time limit
            Path(args.json).write_text(json.dumps(result) + "\n", encoding="utf-8")

    part("throughput", measure_throughput)
    part("loss_share", measure_loss_share)
    part("profile", measure_profile)
    part("deterministic", measure_deterministic)
    log("end to end")
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as work:
        if "end_to_end" in skip:
            result["end_to_end"], result["replay"] = {"skipped": True}, {"identical": None}
        else:
            result["end_to_end"], result["replay"] = measure_end_to_end(plan, Path(work), log)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(table(result))
    text = json.dumps(result)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
