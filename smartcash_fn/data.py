"""Data sources that feed batches in a deterministic order, from any batch on.

The order of epoch ``e`` is ``rng.permutation(seed, e, n)`` (or ``range(n)``
without shuffling), whatever the source. Two sources share it:

- :class:`TensorData` — the fast path for in-memory tensors: a batch is a
  gather by index (``index_select``), no per-sample collate;
- :class:`LoaderData` — any ``torch.utils.data.Dataset`` through a
  ``DataLoader`` with workers. A dataset that defines
  ``sample(index, generator)`` gets a generator seeded from
  ``(seed, "augment", epoch, index)``, so augmentation does not depend on the
  number of workers or on where a run resumed.

Both start at any batch without reading the batches before it::

    data = TensorData((x, y), batch_size=64)
    for batch in data.batches(seed=0, epoch=3, start=10): ...
    len(data)   # batches per epoch
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import attrs
import torch
from torch.utils.data import DataLoader, Dataset

from . import rng
from .errors import DataError


class Data(Protocol):
    """What the loop needs of a data source: its length in batches and the batches of an epoch."""

    def __len__(self) -> int: ...

    def batches(self, seed: int, epoch: int, start: int = 0) -> Iterator[Any]: ...


def epoch_order(seed: int, epoch: int, n: int, shuffle: bool) -> torch.Tensor:
    """The sample order of ``epoch``: a seeded permutation, or ``arange(n)`` without shuffling."""
    return rng.permutation(seed, epoch, n) if shuffle else torch.arange(n)


@attrs.frozen
class Shard:
    """The part of each epoch's order one process of ``world`` takes: a pure function of the order, ``rank`` and ``world``.

    ``even`` (training): the order is padded by repeating its start until
    ``world`` divides it, and rank ``r`` takes every ``world``-th sample from
    ``r`` on — the semantics of ``torch.utils.data.DistributedSampler``
    without its mutable epoch. Every rank gets the same count, and the ranks'
    batch ``b`` together are samples ``[b * B * world, (b + 1) * B * world)``
    of the order (``B`` the per-rank batch): the single-process batch ``b``
    of size ``B * world``. Not ``even`` (validation): contiguous blocks, no
    padding, so the blocks in rank order are the whole order once::

        Shard(1, 2).take(torch.arange(5))               # tensor([1, 3, 0])
        Shard(1, 2, even=False).take(torch.arange(5))   # tensor([3, 4])
    """

    rank: int = 0
    world: int = 1
    even: bool = True

    def __attrs_post_init__(self) -> None:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.rank, self.world))
        if not ok or self.world < 1 or not 0 <= self.rank < self.world:
            raise DataError(f"Shard: need 0 <= rank < world, got rank={self.rank!r}, world={self.world!r}")

    def size(self, n: int) -> int:
        """How many of ``n`` samples this rank takes."""
        if self.world == 1:
            return n
        per = -(-n // self.world)
        return per if self.even else max(0, min(n, (self.rank + 1) * per) - self.rank * per)

    def take(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's samples of ``order`` (a 1-D tensor of indices), in order."""
        if self.world == 1:
            return order
        n = order.shape[0]
        per = -(-n // self.world)
        if not self.even:
            return order[self.rank * per:(self.rank + 1) * per]
        total = per * self.world
        padded = order if total == n else torch.cat([order] * -(-total // n))[:total]
        return padded[self.rank:total:self.world]


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def _check_batching(where: str, n: int, batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise DataError(f"{where}: batch_size must be an int >= 1, got {batch_size!r}")
    if n == 0:
        raise DataError(f"{where}: the dataset is empty")


@attrs.frozen
class Splits:
    """What a data factory returns: training data, optional validation data, and ``info`` for the model.

    ``info`` keys named like the model factory's arguments (``in_features``,
    ``classes``) fill them when the recipe leaves them out; ``collate_fn`` in
    ``info`` batches a ``Dataset``'s samples::

        def my_data(n: int = 256) -> Splits:
            x, y, xv, yv = torch.randn(n, 16), torch.randint(0, 4, (n,)), torch.randn(64, 16), torch.randint(0, 4, (64,))
            return Splits(train=(x, y), val=(xv, yv), info={"in_features": 16, "classes": 4})
    """

    train: Any
    val: Any = None
    info: Mapping[str, Any] = attrs.field(factory=dict)



@attrs.frozen
class TensorData:
    """In-memory tensors sharing their first dimension, batched by gathering indices.

    ``TensorData((x, y), batch_size=64)`` yields ``(x[idx], y[idx])`` tuples.
    """

    tensors: tuple[torch.Tensor, ...] = attrs.field(converter=tuple)
    batch_size: int = 32
    shuffle: bool = True
    drop_last: bool = False
    shard: Shard = Shard()

    def __attrs_post_init__(self) -> None:
        if not self.tensors or not all(isinstance(t, torch.Tensor) for t in self.tensors):
            raise DataError("TensorData: tensors must be a non-empty sequence of torch.Tensor")
        n = self.tensors[0].shape[0] if self.tensors[0].ndim else 0
        for i, t in enumerate(self.tensors):
            if t.ndim == 0 or t.shape[0] != n:
                raise DataError(
                    f"TensorData: tensor {i} has shape {tuple(t.shape)}; every tensor needs first dimension {n}"
                )
        _check_batching("TensorData", n, self.batch_size)

    @property
    def num_samples(self) -> int:
        return self.tensors[0].shape[0]

    def __len__(self) -> int:
        return _num_batches(self.shard.size(self.num_samples), self.batch_size, self.drop_last)

    def batches(self, seed: int, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self.shard.take(epoch_order(seed, epoch, self.num_samples, self.shuffle))
        bs = self.batch_size
        for b in range(start, len(self)):
            idx = order[b * bs:(b + 1) * bs]
            yield tuple(t.index_select(0, idx.to(t.device)) for t in self.tensors)


@attrs.frozen
class _Keyed(Dataset):
    """Maps a ``(seed, epoch, index)`` key to a sample, seeding augmentation from the key."""

    dataset: Any

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        seed, epoch, index = key
        sample = getattr(self.dataset, "sample", None)
        if sample is not None:
            return sample(index, rng.generator(seed, "augment", epoch, index))
        return self.dataset[index]


@attrs.frozen
class LoaderData:
    """A ``Dataset`` read through a ``DataLoader`` in the deterministic order, with ``workers`` processes.

    ``LoaderData(my_dataset, batch_size=16, workers=2, collate_fn=my_collate)``
    """

    dataset: Any
    batch_size: int = 32
    shuffle: bool = True
    drop_last: bool = False
    workers: int = 0
    collate_fn: Callable[[list[Any]], Any] | None = None
    pin_memory: bool = False
    prefetch_factor: int | None = None
    shard: Shard = Shard()

    def __attrs_post_init__(self) -> None:
        if not hasattr(self.dataset, "__len__") or not (
            hasattr(self.dataset, "__getitem__") or hasattr(self.dataset, "sample")
        ):
            raise DataError(
                f"LoaderData: dataset must define __len__ and __getitem__ (or sample), got {type(self.dataset).__name__}"
            )
        _check_batching("LoaderData", len(self.dataset), self.batch_size)
        if not isinstance(self.workers, int) or self.workers < 0:
            raise DataError(f"LoaderData: workers must be an int >= 0, got {self.workers!r}")

    def __len__(self) -> int:
        return _num_batches(self.shard.size(len(self.dataset)), self.batch_size, self.drop_last)

    def batch_keys(self, seed: int, epoch: int, start: int = 0) -> list[list[tuple[int, int, int]]]:
        """The sample keys of each batch from ``start`` on (this rank's, under a :class:`Shard`)."""
        order = self.shard.take(epoch_order(seed, epoch, len(self.dataset), self.shuffle)).tolist()
        bs = self.batch_size
        return [[(seed, epoch, i) for i in order[b * bs:(b + 1) * bs]] for b in range(start, len(self))]

    def batches(self, seed: int, epoch: int, start: int = 0) -> Iterator[Any]:
        keys = self.batch_keys(seed, epoch, start)
        if not keys:
            return iter(())
        kwargs: dict[str, Any] = {}
        if self.workers > 0 and self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        loader = DataLoader(
            _Keyed(self.dataset),
            batch_sampler=keys,
            num_workers=self.workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            **kwargs,
        )
        return iter(loader)


def as_data(source: Any, batch_size: int = 32, *, shuffle: bool = True, drop_last: bool = False,
            workers: int = 0, collate_fn: Callable[[list[Any]], Any] | None = None) -> Data:
    """Wrap ``source`` as a :class:`Data`: tensors become :class:`TensorData`, a Dataset :class:`LoaderData`.

    An object that already has ``batches`` and ``__len__`` is returned as is;
    ``workers`` and ``collate_fn`` apply to a Dataset::

        data = as_data((x, y), batch_size=64)                  # TensorData
        data = as_data(images, batch_size=16, workers=2)       # LoaderData
    """
    if hasattr(source, "batches") and hasattr(source, "__len__"):
        return source
    if isinstance(source, torch.Tensor):
        source = (source,)
    if isinstance(source, Sequence) and source and all(isinstance(t, torch.Tensor) for t in source):
        return TensorData(tuple(source), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        return LoaderData(source, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, workers=workers,
                          collate_fn=collate_fn)
    raise DataError(
        f"cannot batch a {type(source).__name__}; give tensors, a Dataset, or an object with "
        "batches(seed, epoch, start) and __len__"
    )


class Wrapping:
    """A source that wraps another in its ``data`` field: ``data``'s batch size and length are its own.

    The base of :class:`Finish`, :class:`Start` and the run's ``OnDevice``: ``len(Finish(a, b, 2)) == len(a)``.
    """

    __slots__ = ()
    data: Any

    @property
    def batch_size(self) -> int:
        return int(getattr(self.data, "batch_size", 0) or 0)

    def __len__(self) -> int:
        return len(self.data)


class _Phased(Wrapping):
    """What :class:`Finish` and :class:`Start` share: another source for some epochs, which must give as
    many batches as ``data``."""

    __slots__ = ()

    def _as_many(self, other: Any, which: str) -> None:
        if len(self.data) != len(other):
            raise DataError(f"{type(self).__name__}: the {which} epochs' data gives {len(other)} batches an epoch "
                            f"where the others' gives {len(self.data)}; they must give as many")


@attrs.frozen
class Finish(_Phased):
    """Data whose last ``epochs`` epochs of a run come from ``last`` instead of ``data``: the same samples
    as the validation sees them, say, after epochs of augmented ones.

    The loop asks :func:`epoch_data` for each epoch's source with the number of epochs planned
    (``state.run.epochs``: the loop's, or what a time budget fixed after the first epoch), so the switch
    follows the plan and a resumed or replayed run switches where the run that never stopped did. Both
    sources must give as many batches an epoch::

        data = Finish(LoaderData(scenes, 16), LoaderData(unaugmented(scenes), 16), epochs=2)
        epoch_data(data, epoch=8, planned=10) is data.last   # True: the 9th and 10th epochs (0-based 8, 9)
    """

    data: Any
    last: Any
    epochs: int

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise DataError(f"Finish: epochs must be an int >= 1, got {self.epochs!r}")
        self._as_many(self.last, "last")

    def batches(self, seed: int, epoch: int, start: int = 0) -> Iterator[Any]:
        """The batches of ``epoch`` from ``data``: without a plan no epoch is known to be among the last."""
        return self.data.batches(seed, epoch, start)

    def for_epoch(self, epoch: int, planned: int) -> Any:
        """The source of the 0-based ``epoch`` of a run of ``planned`` epochs (0: not known, ``data``'s)."""
        if planned > 0 and epoch >= planned - self.epochs:
            return self.last
        return epoch_data(self.data, epoch, planned)

    def epoch_cost(self, epoch: int, planned: int) -> float:
        """The step time of ``epoch`` relative to an epoch of ``data``: 1 for the last epochs (no dearer)."""
        return 1.0 if planned > 0 and epoch >= planned - self.epochs else epoch_cost(self.data, epoch, planned)


@attrs.frozen
class Start(_Phased):
    """Data whose first ``share`` of a run's planned epochs come from ``first`` instead of ``data``: smaller
    images, say, whose cheaper steps let a time budget fit more epochs. ``cost`` is what ``first``'s steps
    are expected to cost against ``data``'s (a recipe's budget times them instead: ``timed_costs``).

    Epoch ``e`` (0-based) of a run of ``planned`` epochs comes from ``first`` when ``e < share * planned``;
    before a plan is known (``planned`` 0: a time budget's first epoch) it comes from ``first`` too, so the
    epoch a budget times is one of ``first``'s, and :func:`epoch_cost` tells it which epochs are the cheap
    ones. Both sources must give as many batches an epoch::

        data = Start(LoaderData(scenes, 16), LoaderData(resized(scenes, 192), 16), share=0.45, cost=0.56)
        epoch_data(data, epoch=8, planned=20) is data.first   # True: epochs 0-8 (8 < 0.45 * 20)
        epoch_cost(data, epoch=9, planned=20)                 # 1.0, and 0.56 for the epochs before
    """

    data: Any
    first: Any
    share: float
    cost: float = 1.0

    def __attrs_post_init__(self) -> None:
        for key in ("share", "cost"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
                raise DataError(f"Start: {key} must be a number in (0, 1], got {v!r}")
        self._as_many(self.first, "first")

    def batches(self, seed: int, epoch: int, start: int = 0) -> Iterator[Any]:
        """The batches of ``epoch`` from ``first``: without a plan every epoch is taken for one of the first."""
        return self.first.batches(seed, epoch, start)

    def _early(self, epoch: int, planned: int) -> bool:
        return planned <= 0 or epoch < self.share * planned

    def for_epoch(self, epoch: int, planned: int) -> Any:
        """The source of the 0-based ``epoch`` of a run of ``planned`` epochs (0: not known, ``first``)."""
        return self.first if self._early(epoch, planned) else epoch_data(self.data, epoch, planned)

    def epoch_cost(self, epoch: int, planned: int) -> float:
        """The step time of ``epoch`` relative to an epoch of ``data``: ``cost`` for the first epochs."""
        return float(self.cost) if self._early(epoch, planned) else epoch_cost(self.data, epoch, planned)


def epoch_data(data: Any, epoch: int, planned: int) -> Any:
    """The source of the 0-based ``epoch``'s batches in a run of ``planned`` epochs: ``data.for_epoch(epoch,
    planned)`` where ``data`` has it (:class:`Finish`, :class:`Start`, or a wrapper passing it on), else
    ``data`` itself::

        for batch in epoch_data(loop.data, state.progress.epoch, state.run.epochs).batches(seed, epoch): ...
    """
    pick = getattr(data, "for_epoch", None)
    return data if pick is None else pick(epoch, planned)


def epoch_cost(data: Any, epoch: int, planned: int) -> float:
    """The step time of the 0-based ``epoch`` of a run of ``planned`` epochs, relative to an epoch of the
    data's main source: ``data.epoch_cost(epoch, planned)`` where ``data`` has it (:class:`Start`'s smaller
    first epochs), else 1. What a time budget plans with::

        sum(epoch_cost(data, e, 20) for e in range(20))   # 20 for plain data; 9 * 0.56 + 11 with Start
    """
    cost = getattr(data, "epoch_cost", None)
    return 1.0 if cost is None else float(cost(epoch, planned))


def unaugmented(dataset: Any) -> Any:
    """``dataset`` without its augmentation: its ``plain()`` where it has one; a record (attrs) with an
    ``augment`` field, with it set to None; a record wrapping another in its ``dataset`` field, wrapping
    that one unaugmented. :class:`DataError` for anything else::

        plain = unaugmented(RupiahScenes("train", 1000, augment=Jitter()))   # its augment is None
    """
    return _remade(dataset, "plain", (), "augment", None,
                   "cannot take the augmentation off a {}: give it a plain() method returning the dataset without "
                   "augmentation (or an attrs 'augment' field)")


def resized(dataset: Any, size: int) -> Any:
    """``dataset`` serving samples of ``size`` pixels: its ``resized(size)`` where it has one; a record (attrs)
    with a ``size`` field, with it set; a record wrapping another in its ``dataset`` field, wrapping that one
    resized. :class:`DataError` for anything else::

        small = resized(YoloDataset.scan(spec, "train", size=256), 192)   # its size is 192
    """
    return _remade(dataset, "resized", (size,), "size", size,
                   "cannot change the image size of a {}: give it a resized(size) method returning the dataset "
                   "serving samples of that size (or an attrs 'size' field)")


def _remade(dataset: Any, method: str, args: tuple, field: str, value: Any, refusal: str) -> Any:
    """``dataset.method(*args)`` where it has it; else the record with ``field`` set to ``value``; else the
    record wrapping another in ``dataset``, with that one remade; else :class:`DataError` (``refusal``
    formatted with the type's name)."""
    own = getattr(dataset, method, None)
    if callable(own):
        return own(*args)
    fields = attrs.fields_dict(type(dataset)) if attrs.has(type(dataset)) else {}
    if field in fields:
        return attrs.evolve(dataset, **{field: value})
    if "dataset" in fields:
        return attrs.evolve(dataset, dataset=_remade(dataset.dataset, method, args, field, value, refusal))
    raise DataError(refusal.format(type(dataset).__name__))


def sharded(data: Any, shard: Shard) -> Any:
    """``data`` (a :class:`TensorData`, :class:`LoaderData` or :class:`Batches`, or a wrapper of one in ``.data``)
    taking ``shard``.

    What a data-parallel run feeds each rank; with ``Shard(0, 1)`` the data is
    returned as is::

        mine = sharded(TensorData((x, y), 16), Shard(rank, world))   # len(mine) == ceil(ceil(n / world) / 16)
    """
    if shard.world == 1:
        return data
    if isinstance(data, Finish):
        return attrs.evolve(data, data=sharded(data.data, shard), last=sharded(data.last, shard))
    if isinstance(data, Start):
        return attrs.evolve(data, data=sharded(data.data, shard), first=sharded(data.first, shard))
    if isinstance(data, (TensorData, LoaderData, Batches)):
        return attrs.evolve(data, shard=shard)
    inner = getattr(data, "data", None)
    if inner is not None and attrs.has(type(data)) and "data" in attrs.fields_dict(type(data)):
        return attrs.evolve(data, data=sharded(inner, shard))
    raise DataError(f"cannot shard a {type(data).__name__} across {shard.world} processes: the data of a "
                    "data-parallel run must be TensorData, LoaderData or Batches (or a record wrapping one in its "
                    "'data' field), whose batches are a pure function of (seed, epoch, rank); wrap your batches "
                    "in Batches(...), or give each rank its own part yourself (smartcash_fn.distributed.world().rank)")


@attrs.frozen
class Batches:
    """The user's own batches: a sequence of batches, or a function ``epoch -> iterable of batches``.

    A sequence is indexed, so a resume skips batches without touching them; a
    function's iterable is advanced past the skipped batches (they are read).
    ``length`` is needed for a function (batches per epoch).

    Sharded (``shard``, set by :func:`sharded` in a data-parallel run), each
    process takes whole batches: the batch indices ``0 .. len - 1`` go through
    :meth:`Shard.take` as a sample order would, so with ``even`` rank ``r``
    trains on batches ``r, r + world, ...`` (padded by the first batches until
    every rank has as many) and the ranks' batch ``b`` together are the
    batches ``[b * world, (b + 1) * world)``; one batch of yours is one
    process's batch. A function is called on every rank and its iterable read
    past the batches of the other ranks (a padded batch calls it again)::

        Batches([(x0, y0), (x1, y1)])
        Batches(lambda epoch: my_stream(epoch), length=100)
        sharded(Batches([b0, b1, b2]), Shard(1, 2))       # batches b1, b0
    """

    source: Any
    length: int | None = None
    shard: Shard = Shard()

    def __attrs_post_init__(self) -> None:
        if callable(self.source) and not isinstance(self.source, Sequence):
            if not isinstance(self.length, int) or self.length < 1:
                raise DataError("Batches: a function of the epoch needs length=<batches per epoch>")
        elif not isinstance(self.source, Sequence) or len(self.source) == 0:
            raise DataError(f"Batches: source must be a non-empty sequence of batches or a function, "
                            f"got {type(self.source).__name__}")

    def _total(self) -> int:
        return len(self.source) if isinstance(self.source, Sequence) else int(self.length)

    def __len__(self) -> int:
        return self.shard.size(self._total())

    def batches(self, seed: int, epoch: int, start: int = 0) -> Iterator[Any]:
        n = self._total()
        if isinstance(self.source, Sequence):
            if self.shard.world == 1:
                return (self.source[i] for i in range(start, n))
            return (self.source[i] for i in self.shard.take(torch.arange(n))[start:].tolist())
        if self.shard.world == 1:
            return itertools.islice(iter(self.source(epoch)), start, n)
        return _picked(self.source, epoch, self.shard.take(torch.arange(n))[start:].tolist())


def _picked(source: Callable[[int], Any], epoch: int, wanted: list[int]) -> Iterator[Any]:
    """The items at the ``wanted`` positions of ``source(epoch)``'s iterable; a position before the last one
    read (a padded batch) starts the iterable again."""
    it, at = iter(source(epoch)), 0
    for i in wanted:
        if i < at:
            it, at = iter(source(epoch)), 0
        yield next(itertools.islice(it, i - at, None))
        at = i + 1
