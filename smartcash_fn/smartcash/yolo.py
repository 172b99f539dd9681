"""YOLO-format datasets (the Ultralytics / Roboflow layout SmartCash's data uses).

A ``data.yaml`` names each split's folders (or ``.txt`` lists of images) and the classes; each image
``…/images/<name>.jpg`` has a label file ``…/labels/<name>.txt`` of lines
``cls cx cy w h`` (normalized to the image; a polygon line counts as its
box). :func:`read_data_yaml` reads the file, :class:`YoloDataset` scans a
split — checking every image and label line — and serves letterboxed,
optionally augmented samples::

    spec = read_data_yaml("datasets/rupiah/data.yaml")
    ds = YoloDataset.scan(spec, "val", size=640, on_bad="skip")
    image, target = ds[0]          # [3, 640, 640] in [0, 1]; boxes xyxy pixels, global labels
    ds.problems                    # the bad files and lines, each with its file and line

Augmentation (``Augment``: one :func:`affine` for the flip, turn, scale and
shift, :func:`jitter_colours` for the colours) is a pure function of the generator the
loader passes to ``sample(index, generator)``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs
import torch
import yaml

from ..environment import one_torch_thread
from ..errors import DataError

log = logging.getLogger("smartcash_fn")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""The image files a dataset's folders and ``predict`` read (Ultralytics reads TIFF too: scanners and
microscopes write it)."""
PAD_VALUE = 114 / 255


# --------------------------------------------------------------------------- data.yaml


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """A ``data.yaml`` document read by PyYAML's ``BaseLoader``: every scalar stays a string.

    So ``001`` is the class name ``"001"``, not the integer 1; block scalars
    (``download: |``), flow lists over several lines and nested mappings read
    as YAML says. A syntax error names ``source`` and the line::

        parse_yaml("names: ['001', '002']\\nnc: 2\\n", "data.yaml")   # {'names': ['001', '002'], 'nc': '2'}
    """
    try:
        doc = yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DataError(f"{source}{line}: not valid YAML ({problem})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise DataError(f"{source}: expected a mapping of keys (names, train, val, ...), got a {type(doc).__name__}")
    return doc


def _count(value: Any, where: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise DataError(f"{where}: expected a whole number, got {value!r}") from None


@attrs.frozen
class DataSpec:
    """A read ``data.yaml``: each split's sources (absolute image folders or ``.txt`` lists of images, in the
    file's order), class names, and each class's layer."""

    source: Path
    splits: Mapping[str, tuple[Path, ...]]
    names: tuple[str, ...]
    layers: Mapping[str, tuple[str, ...]]


def layer_of(name: str) -> str:
    """SmartCash's layer of a class name: ``l2_…`` nominal, ``l3_…`` security, others banknote."""
    return "nominal" if name.startswith("l2_") else "security" if name.startswith("l3_") else "banknote"


def group_layers(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Class names grouped by :func:`layer_of`, in first-seen order."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(layer_of(n), []).append(n)
    return {k: tuple(v) for k, v in out.items()}


def read_data_yaml(path: str | os.PathLike) -> DataSpec:
    """Read a ``data.yaml`` (Ultralytics / Roboflow layout); errors name the file and the key or line."""
    path = Path(path)
    if path.is_dir():
        path = path / "data.yaml"
    if not path.is_file():
        raise DataError(f"{path}: no such data.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    doc = parse_yaml(text, str(path))
    names = doc.get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(names, key=int)
        except (TypeError, ValueError):
            raise DataError(f"{path}: names: a mapping needs integer keys 0..n-1") from None
        if [int(k) for k in ids] != list(range(len(ids))):
            raise DataError(f"{path}: names: a mapping needs the keys 0..{len(ids) - 1}, one each; got "
                            f"{', '.join(str(k) for k in ids)}")
        names = [names[k] for k in ids]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: names: expected a list of class names")
    if "nc" in doc and _count(doc["nc"], f"{path}: nc") != len(names):
        raise DataError(f"{path}: nc is {doc['nc']} but names lists {len(names)} classes")
    base = path.parent
    if doc.get("path"):
        if not isinstance(doc["path"], str):
            raise DataError(f"{path}: path: expected a folder (a path), got {doc['path']!r}")
        root = Path(doc["path"])
        base = root if root.is_absolute() else (path.parent / root)
    splits = {}
    for split in ("train", "val", "test"):
        value = doc.get(split)
        if value:
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str) and v for v in values):
                raise DataError(f"{path}: {split}: expected a folder of images or a .txt list of them, or a list "
                                f"of those, got {value!r}")
            splits[split] = tuple(_source(base, v) for v in values)
    if not splits:
        raise DataError(f"{path}: no train, val or test entry")
    return DataSpec(source=path, splits=splits, names=tuple(names), layers=group_layers(names))


def _source(base: Path, value: str) -> Path:
    """A split entry of a data.yaml as an absolute path: relative to ``base`` (the ``path`` key's folder, else
    the file's); Roboflow exports write '../train/images' for the folder beside data.yaml."""
    p = Path(value)
    source = (p if p.is_absolute() else base / p).resolve()
    if not source.exists() and value.startswith("../") and (base / value[3:]).exists():
        source = (base / value[3:]).resolve()
    return source


# --------------------------------------------------------------------------- scanning


@attrs.frozen
class Problem:
    """A bad file or line: where it is and what is wrong (``str()`` gives ``file:line: message``)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


def label_path(image: Path) -> Path:
    """The label file of an image: ``…/images/…/x.jpg`` → ``…/labels/…/x.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_labels(path: Path, num_classes: int, tolerance: float = 1e-3) -> tuple[torch.Tensor, list[Problem]]:
    """The rows ``[cls, cx, cy, w, h]`` of a label file, and a :class:`Problem` for each bad line.

    A line is a box ``cls cx cy w h`` or a polygon ``cls x1 y1 x2 y2 x3 y3 …`` (three points or more, as a
    segmentation export writes them), which counts as the box around its points. A class may be written as
    a whole number in any form (``1``, ``1.0``); a line that repeats an earlier one's class and box is a
    problem (it would count one object twice), and the first stays. A byte-order mark at the file's start
    (Windows' UTF-8) is not part of the first line.
    """
    rows, problems, seen = [], [], {}
    if not path.exists():
        return torch.zeros((0, 5)), []  # an image without a label file has no objects
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return torch.zeros((0, 5)), [Problem(str(path), 0, f"unreadable label file ({e})")]
    for no, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            problems.append(Problem(str(path), no, f"expected 5 fields 'cls cx cy w h' or a polygon 'cls x1 y1 x2 y2 "
                                                   f"x3 y3 ...', got {len(fields)}"))
            continue
        try:
            numbers = [float(f) for f in fields]
        except ValueError:
            problems.append(Problem(str(path), no, f"not numbers: {line.strip()!r}"))
            continue
        if not all(map(math.isfinite, numbers)):
            problems.append(Problem(str(path), no, f"not finite numbers: {line.strip()!r}"))
            continue
        if not numbers[0].is_integer():
            problems.append(Problem(str(path), no, f"class {fields[0]} is not a whole number"))
            continue
        cls, numbers = int(numbers[0]), numbers[1:]
        if len(numbers) == 4:
            cx, cy, w, h = numbers
        else:  # a polygon: the box around its points
            x1, x2, y1, y2 = min(numbers[0::2]), max(numbers[0::2]), min(numbers[1::2]), max(numbers[1::2])
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        if not 0 <= cls < num_classes:
            problems.append(Problem(str(path), no, f"class {cls} outside 0..{num_classes - 1}"))
            continue
        if w <= 0 or h <= 0:
            problems.append(Problem(str(path), no, f"box of non-positive size w={w} h={h}"))
            continue
        lo, hi = -tolerance, 1 + tolerance
        if not (lo <= cx - w / 2 and cx + w / 2 <= hi and lo <= cy - h / 2 and cy + h / 2 <= hi):
            problems.append(Problem(str(path), no, f"box outside the image (cx={cx} cy={cy} w={w} h={h})"))
            continue
        row = (cls, cx, cy, w, h)
        if row in seen:
            problems.append(Problem(str(path), no, f"the same class and box as line {seen[row]}"))
            continue
        seen[row] = no
        rows.append(list(row))
    return (torch.tensor(rows, dtype=torch.float32) if rows else torch.zeros((0, 5))), problems


def _readable(image: Path, fit: int | None = None) -> str | None:
    """Why ``image`` cannot be used, or None: its header is checked, then every pixel decoded, at the scale
    :func:`load_image` reads it for an input of ``fit`` pixels (the decoder still reads all of the file).

    ``verify()`` alone passes a JPEG truncated after an intact header, which
    would fail only when sampled, mid-run, past ``on_bad``; decoding at the
    scan finds it where ``on_bad`` decides.
    """
    try:
        from PIL import Image

        with Image.open(image) as im:
            im.verify()
        with Image.open(image) as im:
            _draft(im, fit)
            im.load()
            return _unusable_mode(im)
    except Exception as e:  # noqa: BLE001 - any failure means unreadable
        return f"unreadable image ({type(e).__name__}: {e})"


# --------------------------------------------------------------------------- samples


WIDE_GREY = ("I", "I;16", "I;16L", "I;16B", "I;16N")
"""Pillow's modes of a greyscale image wider than 8 bits (a 16-bit PNG or TIFF): ``convert("RGB")`` would clip
each value at 255, so almost every pixel of such an image would read as white."""


def load_image(path: str | os.PathLike, fit: int | None = None) -> torch.Tensor:
    """An image file as float32 ``[3, H, W]`` in [0, 1] (RGB), turned upright as its EXIF orientation says.

    A phone stores a photo as its sensor read it and records how to turn it; viewers, annotation tools
    and Ultralytics show and label it turned, so labels and predicted boxes refer to the upright image.
    With ``fit`` (the input size it will be letterboxed to), a large JPEG is decoded smaller
    (:func:`draft_scale`): a 4000 x 3000 photo for a 640-px input as 1000 x 750, about a quarter of the
    time to read and letterbox. Labels are fractions of the image, so they hold at any scale::

        load_image("photo.jpg", fit=640).shape   # [3, 750, 1000] for a 4000 x 3000 photo: read at 1/4
        load_image("photo.jpg", fit=32).shape    # [3, 32, 48] for a 96 x 64 one: at 1/2, still 32 long
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        why = _unusable_mode(im)
        if why:
            raise DataError(f"{path}: {why}")
        _draft(im, fit)
        upright = ImageOps.exif_transpose(im)
        if upright.mode in WIDE_GREY:
            return _wide_grey(upright)
        rgb = upright.convert("RGB")
        t = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
    return t.permute(2, 0, 1).float().div_(255)


def draft_scale(image: Any, fit: int) -> int:
    """The 1/8, 1/4 or 1/2 scale (8, 4, 2; else 1) at which :func:`load_image` decodes an opened Pillow image
    for an input of ``fit`` pixels: JPEG only, whose decoder scales in the frequency domain while it reads
    (Pillow's ``draft``, an averaging downscale); the largest scale that keeps the long side at least ``fit``
    and divides both sides, so every decoded pixel is whole and a label's fraction lands where it did.

    ``draft_scale(Image.open("IMG_0001.jpg"), 640)`` is 4 for a 4000 x 3000 photo, 1 for a 1000 x 750 one.
    """
    if image.format != "JPEG":
        return 1
    w, h = image.size
    return next((s for s in (8, 4, 2) if max(w, h) // s >= fit and w % s == 0 and h % s == 0), 1)


def _draft(image: Any, fit: int | None) -> None:
    """Set an opened Pillow image, before it is loaded, to decode at :func:`draft_scale` for ``fit`` (None: whole)."""
    s = 1 if fit is None else draft_scale(image, fit)
    if s > 1:
        image.draft(None, (image.width // s, image.height // s))


def _unusable_mode(image: Any) -> str | None:
    """Why a Pillow image's pixels cannot be read as colours, or None: a floating-point image (mode ``F``, a
    float TIFF) carries no range its values are meant in (0-1? 0-255?), and read as colours it would be black."""
    if image.mode == "F":
        return "a floating-point image (Pillow mode F): its values have no known range; save it with 8 or 16 bits"
    return None


def _wide_grey(image: Any) -> torch.Tensor:
    """A 16-bit greyscale Pillow image as float32 ``[3, H, W]``: 65535 is white, as OpenCV and Ultralytics read it
    (their 8 bits are the high 8 of the 16)."""
    import numpy as np

    grey = torch.from_numpy(np.asarray(image).astype(np.float32)).div_(65535).clamp_(0, 1)
    return grey.expand(3, *grey.shape).contiguous()


def letterbox(image: torch.Tensor, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize keeping the aspect ratio so the long side is ``size``, pad to a square with grey.

    ``boxes`` (xyxy pixels) follow the image.
    """
    _, h, w = image.shape
    r = size / max(h, w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    resized = torch.nn.functional.interpolate(image[None], size=(nh, nw), mode="bilinear",
                                              align_corners=False, antialias=True)[0]
    top, left = (size - nh) // 2, (size - nw) // 2
    out = torch.full((3, size, size), PAD_VALUE, dtype=image.dtype)
    out[:, top:top + nh, left:left + nw] = resized
    shift = torch.tensor([left, top, left, top], dtype=boxes.dtype)
    return out, boxes * r + shift


def mosaic(tiles: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], centre: tuple[int, int],
           origin: tuple[int, int], min_visible: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four square samples ``(image, boxes, labels)`` of side ``S`` as one ``S × S`` sample.

    The tiles are laid on a ``2S × 2S`` grey canvas around ``centre`` (top-left,
    top-right, bottom-left, bottom-right, each touching the centre with its
    inner corner) and the window of side ``S`` at ``origin`` is cut out, so
    each tile shows the part of it nearest the centre. A box keeps the part of
    it inside the window; it is dropped when less than ``min_visible`` of its
    area is left (a note cut down to a corner no longer shows what it is)::

        tile = (torch.rand(3, 64, 64), torch.tensor([[8.0, 8, 40, 30]]), torch.tensor([2]))
        image, boxes, labels = mosaic([tile] * 4, centre=(64, 64), origin=(32, 32))
        image.shape, len(labels)      # (torch.Size([3, 64, 64]), 2): two boxes fall outside the window
    """
    size = tiles[0][0].shape[-1]
    cx, cy = centre
    ox, oy = origin
    canvas = torch.full((3, 2 * size, 2 * size), PAD_VALUE, dtype=tiles[0][0].dtype)
    boxes_out, labels_out = [], []
    for k, (image, boxes, labels) in enumerate(tiles):
        x0 = cx - size if k in (0, 2) else cx  # the tile's top-left corner on the canvas
        y0 = cy - size if k in (0, 1) else cy
        cx0, cy0 = max(x0, 0), max(y0, 0)  # the part of the tile on the canvas
        cx1, cy1 = min(x0 + size, 2 * size), min(y0 + size, 2 * size)
        canvas[:, cy0:cy1, cx0:cx1] = image[:, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        boxes_out.append(boxes + torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype))
        labels_out.append(labels)
    boxes = torch.cat(boxes_out) - torch.tensor([ox, oy, ox, oy], dtype=torch.float32)
    labels = torch.cat(labels_out)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = boxes.clamp(0, size)
    left = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = left >= min_visible * area.clamp(min=1e-9)
    keep &= (clipped[:, 2] - clipped[:, 0] >= 2) & (clipped[:, 3] - clipped[:, 1] >= 2)
    return canvas[:, oy:oy + size, ox:ox + size].contiguous(), clipped[keep], labels[keep]


def _hue_rotation(turn: float, dtype: torch.dtype) -> torch.Tensor:
    """The 3 × 3 rotation of RGB space by ``turn`` of the colour wheel about the grey axis (:func:`turn_hue`)."""
    c, third = math.cos(2 * math.pi * turn), 1.0 / 3.0
    r = math.sin(2 * math.pi * turn) / math.sqrt(3)
    return torch.tensor([[c + (1 - c) * third, (1 - c) * third - r, (1 - c) * third + r],
                         [(1 - c) * third + r, c + (1 - c) * third, (1 - c) * third - r],
                         [(1 - c) * third - r, (1 - c) * third + r, c + (1 - c) * third]], dtype=dtype)


def turn_hue(image: torch.Tensor, turn: float) -> torch.Tensor:
    """``image`` (``[3, H, W]`` RGB in [0, 1]) with its colours turned by ``turn`` of the colour wheel.

    A rotation of RGB space about the grey axis ``r = g = b``: greys stay grey,
    each pixel keeps its mean of R, G and B and its distance from grey, and its
    hue moves red towards green for ``turn > 0``. It is one 3 × 3 matrix applied
    to every pixel, where torchvision's HSV hue shift converts each pixel to HSV
    and back, a small fraction of its time (docs/detector.md). Results outside
    [0, 1] are clamped::

        turn_hue(torch.tensor([1.0, 0, 0]).view(3, 1, 1), 1 / 3).flatten()   # pure red turned a third: green
    """
    rotation = _hue_rotation(turn, image.dtype)
    return (rotation @ image.reshape(3, -1)).reshape(image.shape).clamp_(0, 1)


LUMA = (0.2989, 0.587, 0.114)
"""The weights of R, G and B in an image's grey (ITU-R 601, as torchvision's ``rgb_to_grayscale``)."""


def jitter_colours(image: torch.Tensor, brightness: float, contrast: float, saturation: float,
                   turn: float = 0.0) -> torch.Tensor:
    """``image`` (``[3, H, W]`` RGB in [0, 1]) with its brightness, contrast and saturation scaled by these
    factors (1: unchanged) and its hue turned by ``turn`` (:func:`turn_hue`), clamped into [0, 1] once.

    Brightness scales every value; contrast blends the image with its mean grey, saturation each pixel
    with its own grey, by the factor (torchvision's definitions). All three are linear in the pixel and,
    before clamping, commute (the grey of a pixel of grey ``g`` is ``g``), so they are one 3 × 3 matrix
    and one grey offset, the hue turn folded in: one pass over the pixels where torchvision's
    ``ColorJitter`` makes several, each clamped (a value pushed past 1 by one factor stays past it here
    until the end)::

        jitter_colours(image, 1.2, 0.8, 1.1, turn=0.01)   # brighter, flatter, more colourful, a little greener
    """
    luma = torch.tensor(LUMA, dtype=torch.float64)
    mean_grey = float(luma @ image.mean((1, 2), dtype=torch.float64))
    saturate = saturation * torch.eye(3, dtype=torch.float64) + (1 - saturation) * luma.expand(3, 3)
    matrix = brightness * contrast * (_hue_rotation(turn, torch.float64) @ saturate)
    offset = brightness * (1 - contrast) * mean_grey  # a grey: the hue turn leaves it as it is
    out = torch.addmm(torch.full((3, 1), offset, dtype=image.dtype), matrix.to(image.dtype), image.reshape(3, -1))
    return out.reshape(image.shape).clamp_(0, 1)


def affine(image: torch.Tensor, boxes: torch.Tensor, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` (``[3, H, W]``) and its ``boxes`` (xyxy pixels) moved by the 2 × 3 ``matrix``.

    Coordinates are those of the pixels' edges: pixel ``(row i, column j)``
    covers ``[j, j + 1] × [i, i + 1]``, and a point ``(x, y)`` goes to
    ``matrix @ (x, y, 1)``. The image resamples bilinearly at each output
    pixel's centre, carried back through the inverse; what comes from outside
    the image is the padding grey (the image is resampled as its difference
    from the grey, so an edge pixel half inside is half grey, not darker). A
    box goes to the box around its moved corners, clipped to the image. One
    ``grid_sample`` on a grid built row by column, a third of the time of
    torchvision's ``affine`` at 256 px::

        shift = torch.tensor([[1.0, 0.0, 8.0], [0.0, 1.0, 0.0]])      # 8 px to the right
        moved, b = affine(torch.rand(3, 64, 64), torch.tensor([[4.0, 4.0, 20.0, 20.0]]), shift)
        b                                                           # [[12., 4., 28., 20.]]
    """
    _, h, w = image.shape
    (p, q, r), (t, u, v) = matrix.tolist()
    det = p * u - q * t
    # the inverse move, scaled to grid_sample's [-1, 1] (align_corners=False: -1 is the image's edge)
    ip, iq, it, iu = u / det * 2 / w, -q / det * 2 / w, -t / det * 2 / h, p / det * 2 / h
    ir, iv = -(ip * r + iq * v) - 1, -(it * r + iu * v) - 1
    xs = torch.arange(w, dtype=image.dtype) + 0.5  # the output pixels' centres
    ys = torch.arange(h, dtype=image.dtype) + 0.5
    grid = torch.empty(1, h, w, 2, dtype=image.dtype)
    torch.add((xs * ip + ir)[None, :], (ys * iq)[:, None], out=grid[0, :, :, 0])
    torch.add((xs * it)[None, :], (ys * iu + iv)[:, None], out=grid[0, :, :, 1])
    moved = torch.nn.functional.grid_sample((image - PAD_VALUE)[None], grid, mode="bilinear",
                                            padding_mode="zeros", align_corners=False)[0].add_(PAD_VALUE)
    corners = boxes[:, [[0, 1], [2, 1], [0, 3], [2, 3]]].double()  # [n, 4 corners, (x, y)]
    m = matrix.double()
    placed = corners @ m[:, :2].T + m[:, 2]
    limit = m.new_tensor([w, h, w, h])
    out = torch.cat([placed.amin(1), placed.amax(1)], 1).clamp(min=0)
    return moved, torch.minimum(out, limit).to(boxes.dtype)


@attrs.frozen
class Augment:
    """Training augmentation: mosaic, horizontal flip, random affine and colour jitter, on image and boxes.

    Every draw comes from the generator handed in, so a sample's augmentation
    is a function of ``(seed, epoch, index)``. ``mosaic`` is the probability
    that a sample is a :func:`mosaic` of itself and three other samples of
    the split, drawn by that generator (the affine and the colours then apply
    to the whole mosaic). ``brightness``, ``contrast`` and ``saturation`` scale
    by a factor drawn from ``[1 - v, 1 + v]`` and ``hue`` turns the colours by up
    to that fraction of the colour wheel, all four in one pass
    (:func:`jitter_colours`). ``degrees`` is 0 by default: a turned image's box is the box around the turned
    box, larger than the object inside it unless the object filled its box (a note already askew, a printed
    number, a security thread do not), so turning teaches boxes too large (docs/detector.md).
    The flip, turn, scale and shift are one :func:`affine` (bilinear: the nearest pixel moves an edge by up to
    half a pixel from where the box says it is, a tenth of a microtext strip's height; docs/detector.md).
    ``Augment(flip=0.0, degrees=5, translate=0.1, scale=(0.8, 1.2), mosaic=1.0)``
    """

    mosaic: float = 0.0
    flip: float = 0.0
    degrees: float = 0.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.02
    min_area: float = 4.0

    def __attrs_post_init__(self) -> None:
        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        ranges = {"mosaic": (0, 1), "flip": (0, 1), "degrees": (0, 180), "translate": (0, 1), "brightness": (0, math.inf),
                  "contrast": (0, math.inf), "saturation": (0, math.inf), "hue": (0, 0.5), "min_area": (0, math.inf)}
        for name, (lo, hi) in ranges.items():
            v = getattr(self, name)
            if not (number(v) and lo <= v <= hi):
                raise DataError(f"augment: {name} must be a number in [{lo}, {hi}], got {v!r}")
        lo_hi = self.scale
        if not (isinstance(lo_hi, tuple) and len(lo_hi) == 2 and all(number(v) for v in lo_hi)
                and 0 < lo_hi[0] <= lo_hi[1]):
            raise DataError(f"augment: scale must be two numbers 0 < low <= high, got {lo_hi!r}")

    def matrix(self, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        """The 2 × 3 move of one sample (see :func:`affine`), drawn from ``generator``.

        The image is mirrored (with probability ``flip``), turned by up to
        ``degrees`` and scaled within ``scale`` about its centre, then shifted by
        up to ``translate`` of its side in each direction.
        """
        u = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
        mirror = -1.0 if u[0] < self.flip else 1.0
        angle = math.radians((2 * u[1] - 1) * self.degrees)
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * u[2]
        tx, ty = (2 * u[3] - 1) * self.translate * w, (2 * u[4] - 1) * self.translate * h
        c, si = s * math.cos(angle), s * math.sin(angle)
        # about the centre: x' = centre + R·S·(mirror x - centre) + shift
        a, b, d, e = c * mirror, -si, si * mirror, c
        cx, cy = w / 2, h / 2
        return torch.tensor([[a, b, cx + tx - a * cx - b * cy],
                             [d, e, cy + ty - d * cx - e * cy]], dtype=torch.float64)

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = image.shape[-2:]
        img, bb = affine(image, boxes, self.matrix(h, w, generator))
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        ranges = [(max(0.0, 1 - v), 1 + v) for v in (self.brightness, self.contrast, self.saturation)]
        factors = [lo + (hi - lo) * x for x, (lo, hi) in zip(u, ranges)]
        turn = (2 * u[3] - 1) * self.hue
        if factors != [1.0, 1.0, 1.0] or turn:
            img = jitter_colours(img, *factors, turn=turn)
        area = (bb[:, 2] - bb[:, 0]).clamp(min=0) * (bb[:, 3] - bb[:, 1]).clamp(min=0)
        keep = area >= self.min_area
        return img, bb[keep], labels[keep]


def _split_images(source_yaml: Path, split: str, source: Path, bad: Callable[[Problem], None]) -> list[Path]:
    """The images of one source of a split: a folder (every image under it, sorted; its ``labels/`` folder
    must exist and a label file without its image is a problem) or a ``.txt`` list (a path a line, relative
    to the list's folder unless absolute; ``#`` starts a comment; a listed file that is missing or not an
    image is a problem)."""
    where = f"{source_yaml}: {split}"
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        label_dir = label_path(source / "x.jpg").parent
        if not label_dir.is_dir():
            raise DataError(f"{where}: no labels folder {label_dir} for the images in {source}; YOLO data keeps "
                            "the labels of images/x.jpg in labels/x.txt (an empty file for an image without "
                            "objects)")
        stems = {p.with_suffix("").name for p in found}
        for lp in sorted(label_dir.rglob("*.txt")):
            if lp.with_suffix("").name not in stems:
                bad(Problem(str(lp), 0, "label file without an image (missing image)"))
        return found
    if source.suffix.lower() != ".txt":
        raise DataError(f"{where}: folder {source} does not exist" if not source.exists() else
                        f"{where}: {source} is neither a folder of images nor a .txt list of them")
    if not source.is_file():
        raise DataError(f"{where}: image list {source} does not exist")
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: cannot read the image list {source} ({e})") from None
    found = []
    for no, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        image = Path(entry) if Path(entry).is_absolute() else (source.parent / entry).resolve()
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            bad(Problem(str(source), no, f"{entry}: not an image ({', '.join(IMAGE_SUFFIXES)})"))
        elif not image.is_file():
            bad(Problem(str(source), no, f"{entry}: no such image ({image})"))
        else:
            found.append(image)
    if found and not any(label_path(img).parent.is_dir() for img in found):
        raise DataError(f"{where}: no labels folder {label_path(found[0]).parent} for the images listed in "
                        f"{source}; YOLO data keeps the labels of images/x.jpg in labels/x.txt")
    return found


@attrs.frozen
class YoloDataset:
    """One split of a YOLO-format dataset, checked at scan time, serving letterboxed samples.

    ``on_bad`` is ``"skip"`` (leave bad images and lines out, with a warning
    each) or ``"fail"`` (raise :class:`DataError` at the first); ``problems``
    lists what was found, so a run summary can count it.
    """

    images: tuple[Path, ...]
    labels: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    size: int = 640
    augment: Augment | None = None
    problems: tuple[Problem, ...] = ()

    @classmethod
    def scan(cls, spec: DataSpec, split: str, size: int = 640, augment: Augment | None = None,
             on_bad: str = "skip") -> "YoloDataset":
        """Scan ``spec``'s ``split``: list the images, parse their labels, check every file.

        A split's sources are read in order: a folder's images sorted by path,
        a ``.txt`` list's in its order.
        Every image is decoded (a truncated file is found here, not mid-run);
        a missing ``labels/`` folder is a :class:`DataError`; an image without
        its label file is kept as an image without objects and counted in
        ``problems``, whatever ``on_bad`` says.
        """
        if on_bad not in ("skip", "fail"):
            raise DataError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}")
        if split not in spec.splits:
            raise DataError(f"{spec.source}: {split}: the data.yaml has no {split!r} split "
                            f"(it has {', '.join(spec.splits)})")
        problems: list[Problem] = []
        images: list[Path] = []
        labels: list[torch.Tensor] = []

        def bad(p: Problem) -> None:
            if on_bad == "fail":
                raise DataError(f"{p} (data: {spec.source}, split {split})")
            log.warning("skipping %s", p)
            problems.append(p)

        sources = spec.splits[split]
        found = [img for source in sources for img in _split_images(spec.source, split, source, bad)]
        for img in found:
            why = _readable(img, size)
            if why:
                bad(Problem(str(img), 0, why))
                continue
            if not label_path(img).exists():  # counted, not skipped: read as an image without objects
                problems.append(Problem(str(label_path(img)), 0, f"missing label file of {img.name} (read as an "
                                                                 "image without objects)"))
            rows, line_problems = parse_labels(label_path(img), len(spec.names))
            for p in line_problems:
                bad(p)
            images.append(img)
            labels.append(rows)
        if not images:
            raise DataError(f"{spec.source}: {split}: no readable images in {', '.join(map(str, sources))}")
        return cls(images=tuple(images), labels=tuple(labels), names=spec.names, size=size, augment=augment,
                   problems=tuple(problems))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.sample(index, None)

    def sample(self, index: int, generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Image ``index`` letterboxed to ``size``; augmented when the dataset has ``augment`` and a generator is given.

        Made on one torch thread, so its pixels are the same in the main process and in a loader worker
        (which has one) whatever the machine's thread count.
        """
        with one_torch_thread():
            return self._sample(index, generator)

    def _sample(self, index: int, generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        aug = self.augment if generator is not None else None
        if aug is not None and aug.mosaic > 0 and float(torch.rand((), generator=generator)) < aug.mosaic:
            others = torch.randint(0, len(self), (3,), generator=generator).tolist()
            centre = torch.randint(self.size // 2, self.size * 3 // 2 + 1, (2,), generator=generator).tolist()
            lo = (max(0, centre[0] - self.size), max(0, centre[1] - self.size))
            origin = [int(torch.randint(lo[i], min(centre[i], self.size) + 1, (), generator=generator))
                      for i in range(2)]
            tiles = [self._letterboxed(i) for i in [index, *others]]
            image, boxes, labels = mosaic(tiles, tuple(centre), tuple(origin))
            image, boxes, labels = aug(image, boxes, labels, generator)
            return image, {"boxes": boxes.float(), "labels": labels}
        image, boxes, labels = self._letterboxed(index)
        if aug is not None:
            image, boxes, labels = aug(image, boxes, labels, generator)
        return image, {"boxes": boxes.float(), "labels": labels}

    def _letterboxed(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = load_image(self.images[index], fit=self.size)
        _, h, w = image.shape
        rows = self.labels[index]
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).clamp(min=0)
        boxes = torch.minimum(boxes, torch.tensor([w, h, w, h], dtype=boxes.dtype))
        labels = rows[:, 0].long()
        image, boxes = letterbox(image, boxes, self.size)
        return image, boxes.float(), labels
