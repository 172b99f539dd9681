"""Synthetic Rupiah scenes written as a YOLO-format dataset that other detection tools can train on.

The layout is Ultralytics' (and the original SmartCash Roboflow export's)::

    OUT/data.yaml                       path, train, val, test, nc, names (the 17 classes in id order)
    OUT/images/{train,val,test}/*.jpg   8-bit RGB, size x size (JPEG quality 95, or lossless *.png)
    OUT/labels/{train,val,test}/*.txt   one line per object: "cls cx cy w h", normalised, 6 decimals

Scene ``i`` of a split is ``rupiah.scene(seed, split, i, size, scenario)``,
so an export is a pure function of its arguments (same bytes every time) and
matches what :class:`~smartcash_fn.smartcash.scenes.RupiahScenes` renders on the fly::

    yaml_path = export_synthetic("data/rupiah", n=1000, seed=0, size=640)
    boxes, labels = read_labels("data/rupiah/labels/val/val_000003.txt", size=640)

The folder is built beside ``out_dir`` and moved into place when complete, so
an interrupted export leaves nothing half-written under ``out_dir``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import torch
from torch.utils.data import DataLoader, Dataset
from PIL import Image

from ..environment import one_torch_thread
from ..errors import DataError
from . import scenes as rupiah

SPLIT_NAMES = ("train", "val", "test")

IMAGE_FORMATS = {"jpg": ("JPEG", {"quality": 95}), "png": ("PNG", {"compress_level": 1})}
"""How images are encoded (with Pillow): JPEG quality 95 (small, fast, like the Roboflow export) or lossless PNG."""


def encode_image(image: torch.Tensor, image_format: str = "jpg") -> bytes:
    """The bytes of a uint8 ``[3, H, W]`` image as a ``"jpg"`` or ``"png"`` file.

    ``Path("a.png").write_bytes(encode_image(scene(0, "train", 0).image, "png"))``
    """
    kind, options = IMAGE_FORMATS[image_format]
    out = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(out, format=kind, **options)
    return out.getvalue()


def split_sizes(n: int, fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> tuple[int, int, int]:
    """How many of ``n`` scenes go to train, val and test: floors, then the remainder by largest fraction.

    ``split_sizes(10) == (7, 2, 1)``; ``split_sizes(100) == (70, 15, 15)``.
    """
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise DataError(f"export-synthetic: n must be an integer >= 1, got {n!r}")
    ok = (isinstance(fractions, Sequence) and len(fractions) == 3
          and all(isinstance(f, (int, float)) and not isinstance(f, bool) and f >= 0 for f in fractions))
    if not ok or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"export-synthetic: split_fractions must be three numbers >= 0 (train, val, test) "
                        f"summing to 1, got {fractions!r}")
    exact = [n * float(f) for f in fractions]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[:n - sum(sizes)]:
        sizes[i] += 1
    return sizes[0], sizes[1], sizes[2]


def yolo_lines(boxes: torch.Tensor, labels: torch.Tensor, size: int) -> list[str]:
    """YOLO label lines ``"cls cx cy w h"`` (normalised by ``size``, 6 decimals) for xyxy pixel ``boxes``.

    ``yolo_lines(target["boxes"], target["labels"], 256)`` -> ``["0 0.512345 0.401234 0.600000 0.300000", ...]``
    """
    lines = []
    for (x1, y1, x2, y2), cls in zip(boxes.double().tolist(), labels.tolist()):
        cx, cy, w, h = (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size
        lines.append(f"{int(cls)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def read_labels(path: str | os.PathLike, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse a YOLO label file back to xyxy pixel boxes (float32 ``[K, 4]``) and class ids (int64 ``[K]``).

    ``boxes, labels = read_labels("OUT/labels/train/train_000000.txt", size=640)``
    """
    boxes, labels = [], []
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 5:
                raise ValueError
            cls, (cx, cy, w, h) = int(parts[0]), (float(p) for p in parts[1:])
        except ValueError:
            raise DataError(f"{path}:{number}: expected 'class cx cy w h' (an integer and four numbers), "
                            f"got {line!r}") from None
        if not 0 <= cls < len(rupiah.CLASSES):
            raise DataError(f"{path}:{number}: class {cls} is outside 0..{len(rupiah.CLASSES) - 1}")
        labels.append(cls)
        boxes.append(((cx - w / 2) * size, (cy - h / 2) * size, (cx + w / 2) * size, (cy + h / 2) * size))
    return torch.tensor(boxes, dtype=torch.float32).view(-1, 4), torch.tensor(labels, dtype=torch.int64)


def data_yaml(path: str | os.PathLike, comment: str = "") -> str:
    """The ``data.yaml`` text for a dataset rooted at ``path`` (written by hand: no YAML library needed).

    Class names are quoted, so ``'001'`` stays a string. ``data_yaml("/data/rupiah")``
    """
    names = ", ".join(f"'{name}'" for name in rupiah.CLASSES)
    layers = "; ".join(f"{layer} {rupiah.CLASSES.index(c[0])}-{rupiah.CLASSES.index(c[-1])}"
                       for layer, c in rupiah.LAYERS.items())
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    root = str(Path(path)).replace("'", "''")
    return (f"{head}# layers: {layers}\n"
            f"path: '{root}'\n"
            "train: images/train\n"
            "val: images/val\n"
            "test: images/test\n"
            f"nc: {len(rupiah.CLASSES)}\n"
            f"names: [{names}]\n")


@attrs.frozen
class _Files(Dataset):
    """Scene ``i`` of a split as ``(i, bytes of its image file, text of its label file)``: for a DataLoader."""

    split: str
    n: int
    seed: int
    size: int
    scenario: tuple
    image_format: str

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, bytes, str]:
        s = rupiah.scene(self.seed, self.split, i, self.size, self.scenario)
        image = encode_image(s.image, self.image_format)
        lines = yolo_lines(s.boxes[s.kept], s.labels[s.kept], self.size)
        return i, image, "".join(line + "\n" for line in lines)


def _as_is(item: Any) -> Any:
    return item


def _looks_like_export(folder: Path) -> bool:
    return {p.name for p in folder.iterdir()} <= {"data.yaml", "images", "labels"}


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: folder exists and is not empty; choose a new folder, or pass --overwrite "
                            "(overwrite=True from Python) to replace a previous export")
        if not _looks_like_export(out):
            raise DataError(f"{out}: will not replace it: it holds more than data.yaml, images/ and labels/ "
                            "(not a previous export); choose a new folder")


def export_synthetic(out_dir: str | os.PathLike, n: int, seed: int = 0,
                     split_fractions: Sequence[float] = (0.7, 0.15, 0.15), size: int = 640,
                     scenario: str | rupiah.Scenario | Sequence[rupiah.Scenario] | None = None,
                     image_format: str = "jpg", workers: int = 0, overwrite: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """Render ``n`` scenes split train/val/test and write them as a YOLO dataset; return ``data.yaml``'s path.

    ``scenario=None`` is ``"mixed"``. ``image_format`` is ``"jpg"`` (quality
    95) or ``"png"`` (lossless: the file decodes to exactly
    ``scene(...).image``). ``workers > 0`` renders in that many processes
    (the files are the same); with ``workers=0`` the scenes are rendered here
    with one intra-op thread (restored afterwards: the tensors are small, so
    more threads only add overhead). ``overwrite=True`` replaces a previous
    export (a folder holding only ``data.yaml``, ``images/``, ``labels/``)
    once the new one is complete. ``progress(done, total)`` is called after
    each image::

        export_synthetic("data/rupiah_low_light", n=300, scenario="low_light", size=640)
    """
    sizes = split_sizes(n, split_fractions)
    if not (isinstance(seed, int) and not isinstance(seed, bool)):
        raise DataError(f"export-synthetic: seed must be an integer, got {seed!r}")
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 32):
        raise DataError(f"export-synthetic: size must be an integer >= 32 (pixels), got {size!r}")
    if image_format not in IMAGE_FORMATS:
        raise DataError(f"export-synthetic: image_format must be one of {', '.join(IMAGE_FORMATS)}, "
                        f"got {image_format!r}")
    if not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0):
        raise DataError(f"export-synthetic: workers must be an integer >= 0, got {workers!r}")
    choices = rupiah.resolve_scenario(scenario)
    name = scenario if isinstance(scenario, str) else ("mixed" if scenario is None else
                                                       "+".join(s.name for s in choices))
    out = Path(out_dir).absolute()
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        # a scene rendered here is made on one thread, as in a worker
        with one_torch_thread() if workers == 0 else contextlib.nullcontext():
            done = 0
            for split, count in zip(SPLIT_NAMES, sizes):
                images, labels = work / "images" / split, work / "labels" / split
                images.mkdir(parents=True)
                labels.mkdir(parents=True)
                if count == 0:
                    continue
                files = _Files(split, count, seed, size, choices, image_format)
                for i, image, text in DataLoader(files, batch_size=None, num_workers=min(workers, count),
                                                 collate_fn=_as_is):
                    stem = f"{split}_{i:06d}"
                    (images / f"{stem}.{image_format}").write_bytes(image)
                    (labels / f"{stem}.txt").write_text(text, encoding="utf-8")
                    done += 1
                    if progress is not None:
                        progress(done, n)
        comment = (f"SmartCash synthetic Rupiah banknotes (smartcash_fn.smartcash.scenes): seed {seed}, scenario {name}, "
                   f"{size}x{size} px, splits {sizes[0]}/{sizes[1]}/{sizes[2]}")
        (work / "data.yaml").write_text(data_yaml(out, comment), encoding="utf-8")
        _check_target(out, overwrite)  # nothing appeared meanwhile
        if out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(work, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out / "data.yaml"
