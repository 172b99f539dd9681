"""Shared test helpers: tiny models and tiny data, small enough for a 2-core CI machine.

Plain functions (importable as ``from conftest import make_mlp``, also from a
script run beside this file) and fixtures wrapping them::

    state = TrainState.create(make_mlp, adamw(1e-2), seed=0)
    x, y = tiny_xy()
    imgs, labels = tiny_images()
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

D_IN, HIDDEN, CLASSES = 8, 16, 4
IMG_CHANNELS, IMG_SIZE, IMG_CLASSES = 1, 6, 3


def make_mlp(dropout: float = 0.0) -> nn.Module:
    """An 8 -> 16 -> 4 classifier; ``dropout > 0`` puts a Dropout between the layers.

    ``TrainState.create(make_mlp, sgd(0.1))`` or ``partial(make_mlp, dropout=0.3)``.
    """
    layers: list[nn.Module] = [nn.Linear(D_IN, HIDDEN), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(HIDDEN, CLASSES))
    return nn.Sequential(*layers)


def make_cnn(dropout: float = 0.25) -> nn.Module:
    """A tiny image classifier with BatchNorm (running statistics as buffers) and Dropout.

    Input ``[N, 1, 6, 6]``, output ``[N, 3]``: ``TrainState.create(make_cnn, adamw(1e-2))``.
    """
    return nn.Sequential(
        nn.Conv2d(IMG_CHANNELS, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Flatten(),
        nn.Linear(4 * IMG_SIZE * IMG_SIZE, IMG_CLASSES),
    )


def tiny_xy(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random 8-feature inputs and labels in ``range(4)`` that depend on them (learnable)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g)
    y = (x[:, :CLASSES].argmax(1) + (torch.rand(n, generator=g) < 0.2).long()) % CLASSES
    return x, y


def tiny_images(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random ``1x6x6`` images and labels in ``range(3)`` for :func:`make_cnn`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IMG_CHANNELS, IMG_SIZE, IMG_SIZE, generator=g)
    y = torch.randint(0, IMG_CLASSES, (n,), generator=g)
    return x, y


class NoisyDataset(torch.utils.data.Dataset):
    """A map-style dataset whose ``sample(index, generator)`` adds random noise (an augmentation).

    The noise comes from the generator the data source hands in, so a batch
    is a function of ``(seed, epoch, index)`` alone, whatever the number of
    loader workers. ``reads`` lists the indices read in this process::

        ds = NoisyDataset(*tiny_xy()); LoaderData(ds, batch_size=8, workers=2)
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, noise: float = 0.1):
        self.x, self.y, self.noise = x, y, noise
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        self.reads.append(int(index))
        return self.x[index], self.y[index]

    def sample(self, index: int, generator: torch.Generator):
        x, y = self[index]
        return x + self.noise * torch.randn(x.shape, generator=generator), y


def save_redigested(obj: dict, dst: str | Path) -> Path:
    """Save the checkpoint dict ``obj`` (state changed by a test) at ``dst`` with its unkeyed digest recomputed.

    The file passes the integrity check, so what a test feeds a reader is digest-valid but malformed or tampered.
    """
    from smartcash_fn import checkpoint

    obj["digest"] = checkpoint.digest({k: v for k, v in obj.items() if k != "digest"})
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, dst)
    return dst


def random_targets(g: torch.Generator, batch: int, size: int, most: int, classes: int = 17, spread: float = 0.7,
                   least: float = 2.0) -> list[dict[str, torch.Tensor]]:
    """Random detection targets drawn from ``g``: image 0 has none, the others 0 to ``most`` boxes with sides of
    ``least`` to ``least + spread * size`` pixels around centres inside a ``size`` image, labels below ``classes``."""
    out = []
    for i in range(batch):
        k = 0 if i == 0 else int(torch.randint(0, most + 1, (1,), generator=g))
        centre = torch.rand(k, 2, generator=g) * size
        side = torch.rand(k, 2, generator=g) * size * spread + least
        out.append({"boxes": torch.cat([centre - side / 2, centre + side / 2], 1),
                    "labels": torch.randint(0, classes, (k,), generator=g)})
    return out


def assert_fixed_operations(loss_fn, make_outputs, size: int = 64) -> None:
    """Assert that ``loss_fn(outputs, padded)[0]`` and its backward record the same operations at batch 2 and 16
    with 1 and 40 targets an image, and none that waits for the device (a data-dependent shape, a value read,
    a copy from the host).

    ``make_outputs(generator, batch, size)`` gives a detector's raw outputs. Counted are the operations called
    by the loss or by autograd for its backward, not what an operation does inside (``zero_`` skips its
    ``fill_`` for small tensors on the CPU, a detail of that kernel); the synchronizations at any depth. One
    call of each size comes first: the tensors that depend on the grids (and the batch size) alone are made by it
    and shared by the later ones.
    """
    from smartcash_fn.smartcash.detection import detection_collate

    def recorded(batch: int, per_image: int) -> tuple[list[str], set[str]]:
        g = torch.Generator().manual_seed(0)
        out = make_outputs(g, batch, size)
        targets = []
        for _ in range(batch):
            centre = torch.rand(per_image, 2, generator=g) * size
            side = torch.rand(per_image, 2, generator=g) * size * 0.6 + 2
            targets.append({"boxes": torch.cat([centre - side / 2, centre + side / 2], 1),
                            "labels": torch.randint(0, 17, (per_image,), generator=g)})
        padded = detection_collate([(torch.zeros(3, size, size), t) for t in targets])[2]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            loss_fn(out, padded)[0].backward()
        aten = [e for e in prof.events() if e.name.startswith("aten::")]
        called = sorted(e.name for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
        return called, {e.name for e in aten}

    sizes = [(16, 1), (2, 40), (16, 40)]
    for batch, per_image in [(2, 1), *sizes]:  # a warm-up: what depends on the grids and batch size is made once
        recorded(batch, per_image)
    ops, every = recorded(2, 1)
    assert len(ops) > 100
    for batch, per_image in sizes:
        got, inside = recorded(batch, per_image)
        assert got == ops, (batch, per_image)
        every |= inside
    # lift_fresh: a tensor made from host data (torch.tensor), on a GPU a copy the host waits for
    assert not {"aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::masked_select",
                "aten::lift_fresh"} & every


def end_table(said: str, images: int, summary: str) -> str:
    """The detection table a run said at its end (``detection_table``), checked row by row and against summary.md.

    One title line, eval's header, a row per class in the layers' order, then per layer and for all classes.
    """
    from smartcash_fn.smartcash import scenes as rupiah

    title = f"Validation of the final params ({images} validation images)"
    assert said.count(f"{title}:\n") == 1
    after = said.split(f"{title}:\n", 1)[1].splitlines()
    rows = after[:next(i for i, r in enumerate(after) if r.startswith("all ")) + 1]
    table = "\n".join(rows)
    assert rows[0].split() == ["class", "layer", "gt", "dets", "P", "R", "F1", "AP50", "AP50-95"]
    assert [r.split()[0] for r in rows[2:19]] == list(rupiah.CLASSES)
    assert [r.split()[0] for r in rows[-4:]] == ["banknote", "nominal", "security", "all"]
    assert f"## {title}\n\n```text\n{table}\n```" in summary
    return table


@pytest.fixture
def xy() -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny classification data for :func:`make_mlp` (48 samples)."""
    return tiny_xy()


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny image data for :func:`make_cnn` (32 samples)."""
    return tiny_images()


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module with one torch thread: its tensors are tiny, and on a shared 2-core machine
    a second intra-op thread costs up to 10x. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
