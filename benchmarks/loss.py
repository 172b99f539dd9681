"""The two detection losses alone: forward + backward, each batched against its per-image reference.

At the default recipe's size (192 px, batch 16, the cspdarknet detector at
width 48, channels-last as the recipe) on the targets of 16 rendered training
scenes: the coupled head's ``detection_loss`` and the decoupled head's
``aligned_loss`` (the default's), each head's outputs leaves so only the loss
is timed. Everything runs side by side in one process, interleaved, each the
median of ``--repeats`` calls; the references are the per-image losses kept in
``tests/test_detection.py`` and ``tests/test_aligned.py`` (the aligned one
walks every cell in Python: ``--references 0`` leaves both out). Pin it on a
shared machine and say the load with the figure::

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loss.py --repeats 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from smartcash_fn.smartcash import scenes as rupiah  # noqa: E402
from smartcash_fn.smartcash.aligned import aligned_loss  # noqa: E402
from smartcash_fn.smartcash.detection import Layout, detection_collate, detection_loss  # noqa: E402
from smartcash_fn.smartcash.detector import Detector  # noqa: E402
from test_aligned import reference_loss as aligned_reference  # noqa: E402
from test_detection import reference_loss as coupled_reference  # noqa: E402


def _leaves(head: str, images: torch.Tensor) -> tuple[dict, list[torch.Tensor]]:
    """One head's raw outputs on ``images``, cloned as leaves that take gradients."""
    model = Detector("cspdarknet", {g: len(v) for g, v in rupiah.LAYERS.items()}, width=48, backbone_width=16,
                     head=head, channels_last=True)
    with torch.no_grad():
        raw = model(images)
    out = {g: [t.clone().requires_grad_(True) for t in ts] for g, ts in raw.items()}
    return out, [t for ts in out.values() for t in ts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--references", type=int, default=5, help="calls of each per-image reference (0: none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    scenes = rupiah.RupiahScenes("train", args.batch, 0, args.size, "mixed")
    images, targets, padded = detection_collate([scenes.sample(i, torch.Generator().manual_seed(i))
                                                 for i in range(args.batch)])
    layout = Layout.of({g: len(v) for g, v in rupiah.LAYERS.items()})
    coupled, coupled_leaves = _leaves("coupled", images)
    decoupled, decoupled_leaves = _leaves("decoupled", images)

    def timed(loss: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], None]:
        return lambda: torch.autograd.grad(loss(), leaves)

    runs = {
        "detection, batched": timed(lambda: detection_loss(coupled, padded, layout, args.size)[0], coupled_leaves),
        "task_aligned, batched": timed(lambda: aligned_loss(decoupled, padded, layout)[0], decoupled_leaves),
    }
    references = {
        "detection, per image": timed(lambda: coupled_reference(coupled, targets, layout, args.size)[0],
                                      coupled_leaves),
        "task_aligned, per image": timed(lambda: aligned_reference(decoupled, targets, layout)[0],
                                         decoupled_leaves),
    } if args.references > 0 else {}
    times: dict[str, list[float]] = {k: [] for k in (*runs, *references)}
    for fn in (*runs.values(), *references.values()):
        fn()  # warm up
    for i in range(args.repeats):
        for name, fn in (*runs.items(), *(references.items() if i < args.references else ())):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = int((padded["labels"] >= 0).sum())
    print(f"{args.size} px, batch {args.batch}, {n} targets, torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}")
    for k, v in med.items():
        print(f"{k:24s} forward+backward median {v * 1e3:8.2f} ms (min {min(times[k]) * 1e3:.2f}, "
              f"{len(times[k])} calls)")
    for loss in ("detection", "task_aligned"):
        if f"{loss}, per image" in med:
            print(f"{loss}: batched / per image {med[f'{loss}, batched'] / med[f'{loss}, per image']:.3f}")
    print(f"task_aligned / detection (batched): {med['task_aligned, batched'] / med['detection, batched']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
