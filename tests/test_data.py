"""Data determinism: the order and the augmentation are functions of (seed, epoch, index) alone.

Both sources — :class:`TensorData` (gather by index) and :class:`LoaderData`
(a Dataset through a DataLoader with workers) — must give the same batches
for the same coordinates, start at any batch without reading the ones
before it, and refuse bad arguments with a :class:`DataError`.
"""

from __future__ import annotations

import attrs
import pytest
import torch

import smartcash_fn as sf
from smartcash_fn import rng
from smartcash_fn.callbacks import time_budget
from smartcash_fn.data import (Finish, Shard, Start, as_data, epoch_cost, epoch_data, epoch_order, resized, sharded,
                               unaugmented)
from smartcash_fn.optim import sgd
from conftest import NoisyDataset, tiny_xy


class PlainDataset(torch.utils.data.Dataset):
    """(x[i], y[i]) by index, no ``sample``: LoaderData reads it with ``__getitem__``."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def as_tuples(batches):
    return [tuple(b) for b in batches]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        len(p) == len(q) and all(torch.equal(s, t) for s, t in zip(p, q)) for p, q in zip(a, b))


def test_same_seed_and_epoch_give_the_same_order():
    x, y = tiny_xy(50)
    data = sf.TensorData((x, y), 8)
    assert same_batches(as_tuples(data.batches(3, 2)), as_tuples(data.batches(3, 2)))
    assert torch.equal(epoch_order(3, 2, 50, True), epoch_order(3, 2, 50, True))
    assert sorted(epoch_order(3, 2, 50, True).tolist()) == list(range(50))


def test_different_epochs_and_seeds_give_different_orders():
    orders = {tuple(epoch_order(seed, epoch, 50, True).tolist()) for seed in (0, 1) for epoch in range(4)}
    assert len(orders) == 8
    x, y = tiny_xy(50)
    data = sf.TensorData((x, y), 8)
    assert not same_batches(as_tuples(data.batches(0, 0)), as_tuples(data.batches(0, 1)))


def test_order_does_not_depend_on_the_global_generator():
    torch.manual_seed(1)
    a = epoch_order(5, 1, 30, True)
    torch.manual_seed(2)
    torch.rand(100)
    b = epoch_order(5, 1, 30, True)
    assert torch.equal(a, b)


def test_rng_keys_are_pure_functions_of_their_coordinates():
    assert rng.key(0, "order", 3) == rng.key(0, "order", 3)
    assert len({rng.key(0, "order", 3), rng.key(0, "order", 4), rng.key(0, "init", 3), rng.key(1, "order", 3),
                rng.key(0, "order", 3, 0)}) == 5
    assert 0 <= rng.key(123, "augment", 1, 2) < 2**63


def test_without_shuffle_the_order_is_the_index_order():
    x, y = tiny_xy(20)
    data = sf.TensorData((x, y), 8, shuffle=False)
    got = as_tuples(data.batches(0, 4))
    assert [len(b[0]) for b in got] == [8, 8, 4]
    assert torch.equal(torch.cat([b[0] for b in got]), x)


def test_drop_last_counts_and_sizes():
    x, y = tiny_xy(20)
    assert len(sf.TensorData((x, y), 8)) == 3
    kept = sf.TensorData((x, y), 8, drop_last=True)
    assert len(kept) == 2
    assert [len(b[0]) for b in kept.batches(0, 0)] == [8, 8]
    assert len(sf.LoaderData(PlainDataset(x, y), 8, drop_last=True)) == 2


@pytest.mark.parametrize("shuffle", [True, False])
def test_tensor_data_and_loader_data_give_identical_batches(shuffle):
    x, y = tiny_xy(30)
    t = sf.TensorData((x, y), 7, shuffle=shuffle)
    loader = sf.LoaderData(PlainDataset(x, y), 7, shuffle=shuffle)
    assert len(t) == len(loader) == 5
    for epoch in (0, 3):
        assert same_batches(as_tuples(t.batches(9, epoch)), as_tuples(loader.batches(9, epoch)))


@pytest.mark.parametrize("start", [0, 1, 3, 4, 5])
def test_start_yields_exactly_the_tail_of_the_epoch(start):
    x, y = tiny_xy(30)
    for data in (sf.TensorData((x, y), 7), sf.LoaderData(PlainDataset(x, y), 7)):
        full = as_tuples(data.batches(2, 1))
        tail = as_tuples(data.batches(2, 1, start))
        assert same_batches(tail, full[start:])
        assert len(tail) == len(data) - start


def test_start_skips_batches_without_reading_them():
    x, y = tiny_xy(30)
    ds = NoisyDataset(x, y)
    data = sf.LoaderData(ds, 7)
    order = epoch_order(4, 2, 30, True).tolist()
    list(data.batches(4, 2, 3))
    assert ds.reads == order[21:]

    touched = []

    class Watched(list):
        def __getitem__(self, i):
            touched.append(i)
            return super().__getitem__(i)

    batches = sf.Batches(Watched([(x[i:i + 5], y[i:i + 5]) for i in range(0, 30, 5)]))
    got = list(batches.batches(0, 0, 4))
    assert touched == [4, 5] and len(got) == 2


def test_augmentation_depends_on_seed_epoch_and_index_not_on_workers():
    x, y = tiny_xy(24)
    one = sf.LoaderData(NoisyDataset(x, y), 8, workers=0)
    two = sf.LoaderData(NoisyDataset(x, y), 8, workers=2)
    a = as_tuples(one.batches(1, 0))
    assert same_batches(a, as_tuples(two.batches(1, 0)))
    assert same_batches(a, as_tuples(one.batches(1, 0)))
    # a sample's augmentation differs between epochs (the order aside): compare sample 0 in both epochs
    def sample_zero(epoch):
        keys = [k for batch in one.batch_keys(1, epoch) for k in batch]
        flat = torch.cat([b[0] for b in one.batches(1, epoch)])
        return flat[[k[2] for k in keys].index(0)]
    assert not torch.equal(sample_zero(0), sample_zero(1))
    assert not torch.equal(sample_zero(0), x[0])


def test_loader_data_batch_keys_carry_seed_epoch_and_index():
    x, y = tiny_xy(10)
    keys = sf.LoaderData(PlainDataset(x, y), 4).batch_keys(7, 2, 1)
    assert [len(k) for k in keys] == [4, 2]
    assert all(k[:2] == (7, 2) for batch in keys for k in batch)
    assert [k[2] for k in keys[0]] == epoch_order(7, 2, 10, True).tolist()[4:8]


# --------------------------------------------------------------------------- bad input


def test_tensor_data_with_mismatched_lengths_names_the_tensor():
    with pytest.raises(sf.DataError, match=r"tensor 1 has shape \(5,\).*first dimension 6"):
        sf.TensorData((torch.zeros(6, 2), torch.zeros(5)), 2)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_batch_size_is_refused(bad):
    x, y = tiny_xy(10)
    with pytest.raises(sf.DataError, match="batch_size must be an int >= 1"):
        sf.TensorData((x, y), bad)
    with pytest.raises(sf.DataError, match="batch_size"):
        sf.LoaderData(PlainDataset(x, y), bad)


def test_other_bad_data_is_refused_with_data_errors():
    with pytest.raises(sf.DataError, match="non-empty sequence of torch.Tensor"):
        sf.TensorData(([1, 2, 3],), 2)
    with pytest.raises(sf.DataError, match="empty"):
        sf.TensorData((torch.zeros(0, 3),), 2)
    with pytest.raises(sf.DataError, match="workers must be an int >= 0"):
        sf.LoaderData(PlainDataset(*tiny_xy(10)), 2, workers=-1)
    with pytest.raises(sf.DataError, match="__len__ and __getitem__"):
        sf.LoaderData(object(), 2)
    with pytest.raises(sf.DataError, match="cannot batch a int"):
        as_data(3)
    with pytest.raises(sf.DataError, match="length="):
        sf.Batches(lambda epoch: [], length=None)
    assert issubclass(sf.DataError, sf.UserError)


# --------------------------------------------------------------------------- the last epochs from another source


@attrs.frozen
class Marked:
    """``(x[i], y[i])``; a sample drawn with ``augment`` on is marked by adding 100 to ``x``."""

    x: torch.Tensor
    y: torch.Tensor
    augment: bool | None = True

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def sample(self, i, generator):
        x, y = self[i]
        return (x + 100.0 if self.augment else x), y


def _finish(n: int = 16, epochs: int = 2) -> Finish:
    x, y = torch.rand(n, 3), torch.arange(n)
    return Finish(sf.LoaderData(Marked(x, y), 8), sf.LoaderData(unaugmented(Marked(x, y)), 8), epochs)


def test_finish_gives_the_last_planned_epochs_from_its_other_source():
    data = _finish(epochs=2)
    picked = [epoch_data(data, e, 5) for e in range(5)]
    assert [p is data.last for p in picked] == [False, False, False, True, True]
    assert epoch_data(data, 4, 0) is data.data  # no plan known: the first source
    assert epoch_data(data.data, 4, 5) is data.data  # a source without for_epoch is its own
    marked = [bool(b[0].min() >= 100) for b in data.data.batches(0, 3)]
    plain = [bool(b[0].max() < 100) for b in epoch_data(data, 3, 5).batches(0, 3)]
    assert all(marked) and all(plain) and len(data) == len(data.last) == 2
    # the same keys, the same order: only the augmentation is gone
    same = zip(data.data.batches(0, 3), data.last.batches(0, 3))
    assert all(torch.allclose(a[0] - 100.0, b[0], atol=1e-4) and torch.equal(a[1], b[1]) for a, b in same)


def test_the_loop_trains_the_last_planned_epochs_on_the_plain_samples():
    data = _finish(epochs=2)
    seen: list[tuple[int, bool]] = []

    def step(state, batch):
        seen.append((state.progress.epoch, bool(batch[0].min() >= 100)))
        return state

    template = sf.TrainState.create(lambda: torch.nn.Linear(3, 2), sgd(0.1), seed=0)
    sf.fit(template, sf.Loop(step=step, data=data, epochs=4))
    assert sorted(set(seen)) == [(0, True), (1, True), (2, False), (3, False)]
    # a time budget's recorded plan (4 of 20 epochs) moves the switch with it, on a resume as on the first run
    seen.clear()
    planned = template.replace(callbacks={"time_budget": {"max_time": 60.0, "cap": 20, "epochs": 4}})
    sf.fit(planned, sf.Loop(step=step, data=data, epochs=20).add(time_budget(60.0)))
    assert sorted(set(seen)) == [(0, True), (1, True), (2, False), (3, False)]


def test_finish_and_unaugmented_refuse_what_they_cannot_do():
    x, y = torch.rand(16, 3), torch.arange(16)
    with pytest.raises(sf.DataError, match="epochs must be an int >= 1"):
        Finish(sf.LoaderData(Marked(x, y), 8), sf.LoaderData(Marked(x, y), 8), 0)
    with pytest.raises(sf.DataError, match="gives 4 batches an epoch where the others' gives 2"):
        Finish(sf.LoaderData(Marked(x, y), 8), sf.LoaderData(Marked(x, y), 4), 1)
    with pytest.raises(sf.DataError, match="cannot take the augmentation off a NoisyDataset"):
        unaugmented(NoisyDataset(x, y))

    @attrs.frozen
    class Wrapped:
        dataset: Marked

    class Own(NoisyDataset):
        def plain(self):
            return "plain"

    assert unaugmented(Wrapped(Marked(x, y))).dataset.augment is None  # a wrapper's dataset, unaugmented
    assert unaugmented(Own(x, y)) == "plain"


@attrs.frozen
class Sized:
    """``(x[i] * size, y[i])``: a sample shows the size it was served at."""

    x: torch.Tensor
    y: torch.Tensor
    size: int = 256

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] * self.size, self.y[i]


def _start(n: int = 16, share: float = 0.45) -> Start:
    x, y = torch.rand(n, 3) + 1.0, torch.arange(n)
    return Start(sf.LoaderData(Sized(x, y), 8), sf.LoaderData(resized(Sized(x, y), 128), 8), share, 0.25)


def test_start_gives_the_first_share_of_the_planned_epochs_from_its_other_source():
    data = _start(share=0.45)
    assert [epoch_data(data, e, 20) is data.first for e in range(20)] == [e < 9 for e in range(20)]
    assert epoch_data(data, 7, 0) is data.first  # no plan known yet: a budget's first epoch is one of the first
    assert [epoch_cost(data, e, 20) for e in (0, 8, 9, 19)] == [0.25, 0.25, 1.0, 1.0]
    assert epoch_cost(data.data, 0, 20) == 1.0  # a source without epoch_cost costs 1
    small = next(iter(data.batches(0, 0)))[0] / next(iter(data.data.batches(0, 0)))[0]
    assert torch.allclose(small, torch.full_like(small, 0.5))  # the same samples in the same order, at 128 of 256
    # inside a Finish (as a recipe builds it): the last epochs from the plain source, the first from the small one
    x, y = torch.rand(16, 3), torch.arange(16)
    both = Finish(Start(sf.LoaderData(Marked(x, y), 8), sf.LoaderData(Marked(x + 1, y), 8), 0.3, 0.5),
                  sf.LoaderData(unaugmented(Marked(x, y)), 8), 2)
    picked = [epoch_data(both, e, 10) for e in range(10)]
    assert [p is both.data.first for p in picked] == [True] * 3 + [False] * 7
    assert [p is both.last for p in picked] == [False] * 8 + [True] * 2
    assert [epoch_cost(both, e, 10) for e in range(10)] == [0.5] * 3 + [1.0] * 7
    halves = sharded(data, Shard(1, 2))
    assert isinstance(halves, Start) and halves.first.shard == halves.data.shard == Shard(1, 2)


def test_the_loop_trains_the_first_planned_epochs_on_the_small_samples():
    data = _start(share=0.5)
    seen: list[tuple[int, bool]] = []

    def step(state, batch):
        seen.append((state.progress.epoch, bool(batch[0].max() < 2 * 128 + 1e-3)))
        return state

    template = sf.TrainState.create(lambda: torch.nn.Linear(3, 2), sgd(0.1), seed=0)
    sf.fit(template, sf.Loop(step=step, data=data, epochs=4))
    assert sorted(set(seen)) == [(0, True), (1, True), (2, False), (3, False)]


def test_start_and_resized_refuse_what_they_cannot_do():
    x, y = torch.rand(16, 3), torch.arange(16)
    for share in (0, 1.5, True):
        with pytest.raises(sf.DataError, match="share must be a number in"):
            Start(sf.LoaderData(Sized(x, y), 8), sf.LoaderData(Sized(x, y), 8), share)
    with pytest.raises(sf.DataError, match="cost must be a number in"):
        Start(sf.LoaderData(Sized(x, y), 8), sf.LoaderData(Sized(x, y), 8), 0.5, 2.0)
    with pytest.raises(sf.DataError, match="gives 4 batches an epoch where the others' gives 2"):
        Start(sf.LoaderData(Sized(x, y), 8), sf.LoaderData(Sized(x, y), 4), 0.5)
    with pytest.raises(sf.DataError, match="cannot change the image size of a NoisyDataset"):
        resized(NoisyDataset(x, y), 64)

    @attrs.frozen
    class Wrapped:
        dataset: Sized

    class Own(NoisyDataset):
        def resized(self, size):
            return ("resized", size)

    assert resized(Wrapped(Sized(x, y)), 64).dataset.size == 64  # a wrapper's dataset, resized
    assert resized(Own(x, y), 64) == ("resized", 64)
