"""Data-parallel throughput: smartcash_fn's all-reduce step against ``DistributedDataParallel``, on 1 and 2 processes.

For each case — the tiny MLP, the small CNN, the default detector scaled
down — the driver launches ``torchrun --nproc-per-node N`` (N = 1, 2, gloo on
the CPU) on this file in worker mode. Each worker builds the case's recipe
and, in the same processes, trains in turn (warmed up, then ours, DDP, ours,
DDP, ... for ``--reps`` repetitions of ``--steps`` steps):

- **ours**: ``fit`` of the recipe's built loop (the step composed with
  ``all_reduce_gradients``, the agreement callbacks, no validation, no files);
- **ours, the other way**: the same with the other reduction path than the one
  ``build`` picks (``distributed.overlap_default``: at the update on gloo,
  during the backward pass on NCCL) — the buckets reduced during the backward
  pass or after ``torch.autograd.grad`` returns (the effect of the overlap,
  side by side);
- **ddp**: ``DistributedDataParallel`` over the same model (same initial
  weights), ``torch.optim.AdamW(foreach=True)``, the same loss function and
  the same per-rank batches (the recipe's sharded data), clipping where the
  recipe clips.

Per-rank batch fixed (``data.batch_size`` per process): the report gives each
loop's samples/s per process (median over repetitions), ours/DDP (the median
over repetitions of the ratio within one repetition, whose loops ran minutes
apart at most: on a shared machine the load moves between repetitions), the
same ratio of rank 0's CPU seconds (``time.process_time``, gloo's threads
included: the work each loop does, which a busy machine inflates less than
the wall time), and the
scaling efficiency (per-process throughput at 2 over that at 1). Then each
case trains ``--agree-steps`` steps with ``data.global_batch = true`` on 1 and
on 2 processes and the final params are compared: the max over tensors of
``max|a - b| / max|a|`` (close, not bit-equal: the sums run in another order).
Timings are reported, never asserted::

    .venv/bin/python benchmarks/ddp.py --quick                 # ~7 minutes on 2 busy cores
    .venv/bin/python benchmarks/ddp.py --json figures.json

The machine's load (``os.getloadavg``) is printed with the figures: on a
shared machine only the ratios measured side by side mean much.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.distributed as dist

from smartcash_fn import distributed
from smartcash_fn.loop import fit
from smartcash_fn.run.build import build, make_data, make_loss, make_train_step
from smartcash_fn.run.recipe import load

ROOT = Path(__file__).resolve().parent.parent

CASES: dict[str, tuple[str, list[str]]] = {
    "mlp": ("recipes/tiny.toml", ["data.params.samples=8192", "data.params.features=64", "data.params.classes=10",
                                  "model.params.hidden=[256, 256]", "data.batch_size=64",
                                  "schedule.use=\"constant\"", "schedule.warmup_steps=0", "train.clip=0.0"]),
    "cnn": ("recipes/tiny.toml", ["model.use=\"cnn\"", "model.params={channels = [16, 32]}",
                                  "data.use=\"synthetic_images\"", "data.params={samples = 4096, val_samples = 64, "
                                  "size = 24, classes = 4}", "data.batch_size=32", "schedule.use=\"constant\"",
                                  "schedule.warmup_steps=0", "train.clip=0.0"]),
    "detector": ("smartcash_fn/recipes/rupiah_synthetic.toml", ["data.params.train=512", "data.params.val=16",
                                                       "data.params.size=96", "data.batch_size=8",
                                                       "schedule.warmup_steps=0"]),
}
QUIET = ["validation.every=0", "checkpoint.every_epochs=0", "loggers.console=false",
         "loggers.csv=false", "loggers.jsonl=false", "loggers.tensorboard=false", "loggers.plots=false",
         "loggers.summary=false", "callbacks=[]", "train.epochs=1000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- worker


def recipe_of(case: str, extra: list[str]) -> Any:
    path, sets = CASES[case]
    return load(ROOT / path, QUIET + sets + extra)


def ddp_loop(built: Any, recipe: Any) -> Any:
    """``run(n, epoch)``: n steps of DistributedDataParallel over the built run's model and per-rank batches, in seconds."""
    _, _, info = make_data(recipe)
    loss_fn = make_loss(recipe, info)
    net = copy.deepcopy(built.template.model)
    net.load_state_dict({**built.template.params, **built.template.buffers}, strict=False)
    net.train(True)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    cfg = recipe.optimizer
    opt = torch.optim.AdamW(ddp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay or 0.01, foreach=True)
    clip = recipe.train.clip

    def run(n: int, epoch: int) -> float:
        done = 0
        t0 = time.perf_counter()
        while done < n:
            for batch in built.loop.data.batches(built.template.seed, epoch, 0):
                out = loss_fn(ddp, batch)
                loss = out[0] if isinstance(out, tuple) else out
                loss.backward()
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(ddp.parameters(), clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                done += 1
                if done >= n:
                    break
            epoch += 1
        return time.perf_counter() - t0

    return run


def step_with_overlap(recipe: Any, overlap: bool) -> Any:
    """The recipe's composed step, same chain, with the all-reduce during the backward pass or at the update."""
    chosen = distributed.overlap_default
    distributed.overlap_default = lambda: overlap  # what build asks
    try:
        return make_train_step(recipe, make_loss(recipe, make_data(recipe)[2]))[0]
    finally:
        distributed.overlap_default = chosen


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    w = distributed.world()
    recipe = recipe_of(args.case, [])
    built = build(recipe, quiet=True)
    loop = built.loop
    state = fit(built.template, loop, to_step=args.warmup)
    run_ddp = ddp_loop(built, recipe)
    run_ddp(args.warmup, 0)
    bare = attrs.evolve(loop, callbacks=tuple(c for c in loop.callbacks if c.name != "agree_on_stop"))
    other_overlaps = not distributed.overlap_default()
    other_way = attrs.evolve(loop, step=step_with_overlap(recipe, other_overlaps))
    state = fit(state, other_way, to_step=state.progress.step + args.warmup)
    ours, ddp, unagreed, other = [], [], [], []
    cpu: dict[str, list[float]] = {"ours": [], "ddp": [], "other": []}

    def timed(run: Any, wall: list[float], cpu_of: str | None = None) -> Any:
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        out = run()
        wall.append(time.perf_counter() - t0)
        if cpu_of is not None:
            cpu[cpu_of].append(time.process_time() - c0)
        return out

    for _ in range(args.reps):
        state = timed(lambda: fit(state, loop, to_step=state.progress.step + args.steps), ours, "ours")
        timed(lambda: run_ddp(args.steps, 1), ddp, "ddp")
        state = timed(lambda: fit(state, other_way, to_step=state.progress.step + args.steps), other, "other")
        state = timed(lambda: fit(state, bare, to_step=state.progress.step + args.steps), unagreed)
    per_rank_batch = int(built.loop.data.batch_size)
    result = {"case": args.case, "world": w.size, "per_rank_batch": per_rank_batch, "steps": args.steps,
              "ours_s": ours, "ddp_s": ddp, "ours_without_agreement_s": unagreed, "ours_other_s": other,
              "cpu_s": cpu, "other_overlaps": other_overlaps,
              "ours_other_samples_per_s": per_rank_batch * args.steps / statistics.median(other),
              "ours_samples_per_s": per_rank_batch * args.steps / statistics.median(ours),
              "ddp_samples_per_s": per_rank_batch * args.steps / statistics.median(ddp),
              "ours_without_agreement_samples_per_s": per_rank_batch * args.steps / statistics.median(unagreed),
              "step_text": built.step_text}
    # agreement: the same global batch on 1 and N processes
    agree = recipe_of(args.case, ["data.global_batch=true"])
    b2 = build(agree, quiet=True)
    final = fit(b2.template, b2.loop, to_step=args.agree_steps)
    if w.main:
        torch.save({k: v.clone() for k, v in final.params.items()}, args.out + ".params.pt")
        Path(args.out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


# --------------------------------------------------------------------------- driver


def launch(case: str, nproc: int, args: argparse.Namespace, out: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(free_port()), __file__, "--worker", "--case", case, "--steps", str(args.steps), "--reps",
           str(args.reps), "--warmup", str(args.warmup), "--agree-steps", str(args.agree_steps), "--out", out]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{case} on {nproc}: torchrun failed\n{done.stderr[-4000:]}")
    return json.loads(Path(out).read_text())


def paired(theirs: list[float], ours: list[float]) -> float:
    """Our throughput over theirs: the median over repetitions of their seconds over ours in the same repetition
    (measured minutes apart at most, so a change of the machine's load between repetitions cancels)."""
    return statistics.median(t / o for t, o in zip(theirs, ours))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps and repetitions: a smoke check")
    p.add_argument("--cases", default="mlp,cnn,detector")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--agree-steps", type=int, default=20)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.steps, args.reps, args.warmup, args.agree_steps = 16, 5, 3, 8
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            res = {n: launch(case, n, args, f"{tmp}/{case}-{n}.json") for n in (1, 2)}
            a = torch.load(f"{tmp}/{case}-1.json.params.pt")
            b = torch.load(f"{tmp}/{case}-2.json.params.pt")
            rel = max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-30)) for k in a)
            whole = float(torch.cat([(a[k] - b[k]).reshape(-1) for k in a]).norm()
                          / torch.cat([a[k].reshape(-1) for k in a]).norm())
            one, two = res[1], res[2]
            rows.append({
                "case": case, "per_rank_batch": one["per_rank_batch"],
                "ours_1": one["ours_samples_per_s"], "ddp_1": one["ddp_samples_per_s"],
                "ours_2": two["ours_samples_per_s"], "ddp_2": two["ddp_samples_per_s"],
                "ours_unagreed_2": two["ours_without_agreement_samples_per_s"],
                "ours_other_2": two["ours_other_samples_per_s"], "other_overlaps": two["other_overlaps"],
                "other_over_ddp_2": paired(two["ddp_s"], two["ours_other_s"]),
                "cpu_ours_over_ddp_2": paired(two["cpu_s"]["ddp"], two["cpu_s"]["ours"]),
                "cpu_other_over_ddp_2": paired(two["cpu_s"]["ddp"], two["cpu_s"]["other"]),
                "ours_over_ddp_1": paired(one["ddp_s"], one["ours_s"]),
                "ours_over_ddp_2": paired(two["ddp_s"], two["ours_s"]),
                "efficiency_ours": two["ours_samples_per_s"] / one["ours_samples_per_s"],
                "efficiency_ddp": two["ddp_samples_per_s"] / one["ddp_samples_per_s"],
                "max_rel_param_diff_1_vs_2": rel, "norm_rel_param_diff_1_vs_2": whole,
                "step_text_2": two["step_text"],
                "seconds_1": {k: one[k] for k in ("ours_s", "ddp_s", "ours_without_agreement_s", "ours_other_s")},
                "seconds_2": {k: two[k] for k in ("ours_s", "ddp_s", "ours_without_agreement_s", "ours_other_s")},
            })
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {os.cpu_count()} cores, torch "
          f"{torch.__version__}, gloo, 1 thread per process; {args.steps} steps x {args.reps} reps")
    print(f"{'case':<9} {'batch':>5} | {'ours 1p':>9} {'ddp 1p':>9} {'ratio':>6} | {'ours 2p':>9} {'ddp 2p':>9} "
          f"{'ratio':>6} {'oth/ddp':>7} {'cpu':>5} {'cpu oth':>7} | {'eff ours':>8} {'eff ddp':>8} | {'params 1p vs 2p: max':>20} {'norm':>9}")
    for r in rows:
        print(f"{r['case']:<9} {r['per_rank_batch']:>5} | {r['ours_1']:>9.1f} {r['ddp_1']:>9.1f} "
              f"{r['ours_over_ddp_1']:>6.3f} | {r['ours_2']:>9.1f} {r['ddp_2']:>9.1f} {r['ours_over_ddp_2']:>6.3f} {r['other_over_ddp_2']:>7.3f} {r['cpu_ours_over_ddp_2']:>5.3f} {r['cpu_other_over_ddp_2']:>7.3f} | "
              f"{r['efficiency_ours']:>8.3f} {r['efficiency_ddp']:>8.3f} | {r['max_rel_param_diff_1_vs_2']:>20.2e} "
              f"{r['norm_rel_param_diff_1_vs_2']:>9.2e}")
    print("samples/s per process (median); ratio = ours (as build composes it: "
          f"{rows[0]['step_text_2'] if rows else ''}) / DDP and oth/ddp = ours the other way (reduced "
          f"{'during the backward pass' if rows and rows[0]['other_overlaps'] else 'at the update'}) / DDP, "
          "each the median over repetitions of the ratio within a repetition; cpu, cpu oth: the same ratios of "
          "rank 0's CPU seconds (process time, gloo's threads included: the work, not the wait for a busy core); eff = per-process throughput on 2 over on 1; "
          "params: max over tensors of max|a-b|/max|a|, and |a-b|/|a| over all params, after the agreement steps")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_before": load_before, "load_after": load_after,
                                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
