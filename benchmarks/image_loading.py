"""Reading a phone-sized JPEG for the detector: a full decode against the decode scaled for the input size.

Writes ``--photos`` photo-like JPEGs (``--width`` x ``--height``, smooth colour
fields with sensor-like noise, quality 90) to a temporary folder, then times
``yolo.load_image`` followed by ``yolo.letterbox`` to ``--size`` pixels with and
without ``fit`` (:func:`smartcash_fn.smartcash.yolo.draft_scale`), the two
alternated, each the best of ``--repeats`` passes over the photos. It also
prints how far the letterboxed pixels of the two ways are apart. Pin it on a
shared machine and say the load with the figure::

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/image_loading.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smartcash_fn.smartcash import yolo  # noqa: E402


def write_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """``count`` JPEGs that compress like photos: smooth fields of colour and per-pixel noise."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        field = torch.nn.functional.interpolate(torch.rand(1, 3, 30, 40, generator=g), size=(height, width),
                                                mode="bicubic")[0]
        pixels = (field + 0.05 * torch.randn(3, height, width, generator=g)).clamp(0, 1).mul(255).byte()
        path = folder / f"photo{i}.jpg"
        Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy()).save(path, quality=90)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from PIL import Image

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    none = torch.zeros(0, 4)
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photos(Path(tmp), args.photos, args.width, args.height)
        best = {"full decode": float("inf"), "scaled decode": float("inf")}
        for _ in range(args.repeats):
            for label, fit in (("full decode", None), ("scaled decode", args.size)):
                t0 = time.perf_counter()
                for p in photos:
                    yolo.letterbox(yolo.load_image(p, fit=fit), none, args.size)
                best[label] = min(best[label], (time.perf_counter() - t0) / len(photos))
        full = yolo.letterbox(yolo.load_image(photos[0]), none, args.size)[0]
        scaled = yolo.letterbox(yolo.load_image(photos[0], fit=args.size), none, args.size)[0]
        with Image.open(photos[0]) as im:
            scale = yolo.draft_scale(im, args.size)
    print(f"{args.photos} JPEGs of {args.width} x {args.height}, letterboxed to {args.size} px, "
          f"{torch.get_num_threads()} thread(s); the scaled decode reads them at 1/{scale}")
    for label, seconds in best.items():
        print(f"  {label:<14} {seconds * 1000:8.1f} ms a photo")
    print(f"  ratio          {best['full decode'] / best['scaled decode']:8.2f}x")
    diff = (full - scaled).abs()
    print(f"  letterboxed pixels apart (0-1 scale): mean {diff.mean():.4f}, max {diff.max():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
