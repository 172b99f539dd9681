"""The detection loss alone: forward + backward of the batched loss against the per-image reference.

At the default recipe's size (192 px, batch 16, the cspdarknet detector at
width 48) on the targets of 16 rendered training scenes: the head outputs
are leaves, so only the loss is timed. Both run side by side in one process,
interleaved, each the median of ``--repeats`` calls; the reference is the
per-image loss kept in ``tests/test_detection.py``. Pin it on a shared machine
and say the load with the figure::

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loss.py --repeats 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from smartcash_fn.smartcash import scenes as rupiah  # noqa: E402
from smartcash_fn.smartcash.detection import Layout, detection_collate, detection_loss  # noqa: E402
from smartcash_fn.smartcash.detector import Detector  # noqa: E402
from test_detection import reference_loss  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    scenes = rupiah.RupiahScenes("train", args.batch, 0, args.size, "mixed")
    images, targets, padded = detection_collate([scenes.sample(i, torch.Generator().manual_seed(i))
                                                 for i in range(args.batch)])
    model = Detector("cspdarknet", {"banknote": 7, "nominal": 7, "security": 3}, width=48, backbone_width=16)
    with torch.no_grad():
        raw = model(images)
    layout = Layout.of({g: len(v) for g, v in rupiah.LAYERS.items()})
    out = {g: [t.clone().requires_grad_(True) for t in ts] for g, ts in raw.items()}
    leaves = [t for ts in out.values() for t in ts]

    def batched() -> None:
        loss, _ = detection_loss(out, padded, layout, args.size)
        torch.autograd.grad(loss, leaves)

    def reference() -> None:
        loss, _ = reference_loss(out, targets, layout, args.size)
        torch.autograd.grad(loss, leaves)

    times: dict[str, list[float]] = {"batched": [], "reference": []}
    for fn in (batched, reference):
        fn()  # warm up
    for _ in range(args.repeats):
        for name, fn in (("batched", batched), ("reference", reference)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = int((padded["labels"] >= 0).sum())
    print(f"{args.size} px, batch {args.batch}, {n} targets, torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}")
    for k, v in med.items():
        print(f"{k:10s} forward+backward median {v * 1e3:7.2f} ms (min {min(times[k]) * 1e3:.2f})")
    print(f"batched / reference time: {med['batched'] / med['reference']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
