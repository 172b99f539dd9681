"""Data parallelism on ``torch.distributed``: the same pure step on every rank, gradients averaged in a transformer.

A run launched by ``torchrun`` is one process per rank, each running the
single-process loop on its :class:`~smartcash_fn.data.Shard` of the data.
Four pieces make the ranks one run, none of them a second loop:

- :func:`all_reduce_gradients` — a step transformer averaging the
  gradients in buckets (~25 MB, the first 1 MB, reverse parameter order):
  overlapped, each bucket's all-reduce starts while the backward pass goes
  on (what ``build`` picks on NCCL); otherwise the buckets are filled after
  autograd and reduced at the update (on gloo, see :func:`overlap_default`).
  The averaged gradients go to the inner update. Composed inside
  ``accumulate`` (which makes it reduce once, at the update) and outside
  ``clip`` (the clipped norm is that of the averaged gradients)::

      step = toolz.compose(accumulate(4), all_reduce_gradients(), clip(10.0))(make_step(loss_fn))

- :func:`replicas` — callbacks that, at ``training_start``, broadcast rank 0's
  params and buffers on a fresh run and check on every start and every epoch
  end that all ranks hold the same bits (an ``all_gather`` of a 64-bit hash,
  not of the tensors), and record the world size in ``state.callbacks``;
- :func:`agree_on_stop` — a stop decided on one rank (NaN guard, early
  stopping, a callback of the user's) stops every rank in the same step;
- :func:`sharded_validation` — each rank evaluates its contiguous block of
  the validation set; the evaluator's accumulators are gathered
  (``all_gather_object``) and merged in rank order, so the metrics equal a
  single-process evaluation of the whole set.

Without a process group (or with one rank) every piece is the identity, so a
recipe runs unchanged on 1 or N processes. :func:`init_from_env` joins the
group ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)::

    world = init_from_env(backend=None, device="cpu")     # gloo on CPUs, nccl on GPUs
    world.rank, world.size
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping, Sequence

import attrs
import torch
import torch.distributed as dist

from .data import Shard, sharded
from .errors import StateError
from .events import Callback
from .state import Stop, TrainState, Tensors

BUCKET_MB = 25.0
"""Default size of a gradient bucket in MB (that of ``DistributedDataParallel``)."""

FIRST_BUCKET_MB = 1.0
"""Cap of the first bucket launched during the backward pass, in MB (``DistributedDataParallel``'s too):
a small first bucket starts the communication early."""

ACCUMULATING = "accumulating"
"""The ``state.extras`` flag :func:`~smartcash_fn.step.accumulate` sets on the states it gives the phases
inside it: one backward's gradients are part of a sum, so a reduction there waits for the update."""

METRIC = "metric:"
"""Prefix of the step's metrics among the gradients being averaged (no param name holds a colon)."""

BUFFER = "buffer:"
"""Prefix of the buffers travelling with the gradients."""

STATE_KEY = "distributed"
"""Where :func:`replicas` records the world a run trained on: ``state.callbacks["distributed"]``."""


@attrs.frozen
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on its machine.

    ``World()`` is a single process; ``world().size > 1`` under ``torchrun --nproc-per-node 2``.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes files."""
        return self.rank == 0

    def shard(self, even: bool = True) -> Shard:
        """This rank's :class:`~smartcash_fn.data.Shard` (``even`` for training, blocks for validation)."""
        return Shard(self.rank, self.size, even)


def active() -> bool:
    """Whether a process group of more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def speaks() -> bool:
    """Whether this process prints a command's notes: rank 0 of the group, or before the group is up the one
    ``torchrun`` started as ``RANK`` 0 (and any process outside ``torchrun``): ``if speaks(): print(...)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return (os.environ.get("RANK") or "0") == "0"


def world() -> World:
    """The world of the initialized process group, or ``World()`` without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def backend_for(device: str | torch.device) -> str:
    """``nccl`` for a CUDA device, ``gloo`` otherwise: ``backend_for("cuda") == "nccl"``."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_device(device: str | torch.device, w: World | None = None) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for a CUDA device without an index under
    ``torchrun``, else ``device`` itself: ``local_device("cuda")`` is ``cuda:1`` on local rank 1."""
    device = torch.device(device)
    w = world() if w is None else w
    if device.type == "cuda" and device.index is None and w.size > 1:
        return torch.device("cuda", w.local_rank)
    return device


def init_from_env(backend: str | None = None, device: str | torch.device = "cpu",
                  timeout_s: float = 600.0) -> World:
    """Join the process group ``torchrun`` describes when ``WORLD_SIZE`` > 1; the resulting :class:`World`.

    ``backend`` None (or ``""``) picks :func:`backend_for` the device; a CUDA
    rank is pinned to ``cuda:LOCAL_RANK`` first. The group's store keys carry
    the restart count (:func:`restart_count`), so a group that
    ``torchrun --max-restarts`` brought back meets afresh. Idempotent; without
    ``WORLD_SIZE`` > 1 nothing happens and the world is a single process.
    """
    if dist.is_available() and dist.is_initialized():
        return world()
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    if not dist.is_available():
        raise StateError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    backend = backend or backend_for(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(local_device(device, World(int(os.environ.get("RANK", "0")), size, local)))
    timeout = timedelta(seconds=timeout_s)
    # the store torchrun's agent keeps across restarts still holds the last group's addresses: a prefix per
    # restart keeps a restarted group from dialing its dead predecessors
    store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
    store = dist.PrefixStore(f"smartcash_fn/restart-{restart_count()}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=size, timeout=timeout)
    return world()


def close() -> None:
    """Leave the process group (at the end of a command), if one is up."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def restart_count() -> int:
    """How many times ``torchrun --max-restarts`` has restarted this group (``TORCHELASTIC_RESTART_COUNT``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a group): ``run_dir = broadcast_object(run_dir)``."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a group)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (one tiny all-reduce; ``flag`` itself without a group).

    What keeps a per-rank decision (fp16's overflow skip) the same on every rank.
    """
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# --------------------------------------------------------------------------- replicas


def digest64(tensors: Mapping[str, torch.Tensor]) -> int:
    """A 64-bit hash of named tensors' names, dtypes, shapes and bits: equal on two ranks iff (almost surely) equal.

    ``digest64(state.params) == digest64(dict(state.params))``
    """
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def check_replicas(state: TrainState, where: str = "", buffers: bool = True) -> None:
    """Raise a :class:`StateError` naming the ranks when the ranks' params (and ``buffers``) differ (no-op alone)."""
    if not active():
        return
    named = {**state.params, **({f"buffer:{k}": v for k, v in state.buffers.items()} if buffers else {})}
    digests = gather_objects(digest64(named))
    if len(set(digests)) > 1:
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        raise StateError(f"{where or 'replicas'}: the params or buffers of rank(s) {', '.join(map(str, odd))} differ "
                         f"from rank 0's at step {state.progress.step}; the ranks no longer train one model")


def broadcast_tensors(tensors: Tensors) -> Tensors:
    """Rank 0's tensors on every rank, as new tensors (the given ones are not written)."""
    if not active() or not tensors:
        return tensors
    out = {}
    for k, v in tensors.items():
        t = v.detach().clone()
        dist.broadcast(t, src=0)
        out[k] = t
    return out


def regrouped(state: TrainState, global_batch: int, size: int, single_batch: int | None = None,
              name: str = STATE_KEY) -> tuple[TrainState, str | None]:
    """``state`` going on at ``size`` processes of ``global_batch`` samples a step together, and a note, or None.

    When ``state.callbacks[name]`` records another world (a checkpoint that
    records none was trained on one process with ``single_batch`` samples a
    step), the epoch goes on from the same sample position: ``progress.batch``
    is rescaled by the ratio of the global batches, rounded down (the samples
    in the rounded-off part are trained again), and the epoch's running sums
    (``state.running``, whose mean over ``progress.batch`` is the epoch's
    figure) are scaled by the same ratio, so the trained part of the epoch
    keeps its mean and its weight::

        state, note = regrouped(state, global_batch=16, size=1)   # a 2 x 16 checkpoint at batch 3: batch 6
    """
    was = state.callbacks.get(name)
    if was is None and size > 1 and single_batch is not None:
        was = {"world": 1, "global_batch": int(single_batch)}
    if was is None or was.get("world") in (None, size):
        return state, None
    p = state.progress
    at = p.batch * int(was.get("global_batch") or global_batch)
    batch = at // max(1, int(global_batch))
    running = {} if batch == 0 else state.running
    if batch and batch != p.batch:
        running = {k: v * (batch / p.batch) for k, v in state.running.items()}
    n = was["world"]
    note = (f"this run was trained on {n} process{'es' if n != 1 else ''} and now goes on on {size}: the data "
            f"order continues from sample {batch * global_batch} of epoch {p.epoch + 1} (it stopped at {at}), and "
            "the bits will differ from an uninterrupted run")
    return state.replace(progress=attrs.evolve(p, batch=batch), running=running), note


def replicas(global_batch: int, name: str = STATE_KEY, single_batch: int | None = None) -> Callback:
    """At ``training_start``: one model on every rank, and the world the run trains on recorded.

    A fresh run (step 0) takes rank 0's params and buffers; every start then
    checks that all ranks agree (:func:`check_replicas`). The world size and
    the global batch (``global_batch``: samples per step, all ranks together)
    are recorded in ``state.callbacks[name]``, so a checkpoint says where it
    was trained (a run that never ran on more than one process records
    nothing; ``single_batch`` is the global batch it had then). Resumed at
    another world size, the epoch goes on from the same sample position with
    the same running means (:func:`regrouped`) and rank 0 notes that the bits
    will differ from the uninterrupted run::

        loop = loop.add(replicas(global_batch=64), check_every_epoch())
    """

    def start(state: TrainState) -> TrainState:
        w = world()
        if w.size > 1 and state.progress.step == 0 and name not in state.callbacks:
            state = state.replace(params=broadcast_tensors(state.params), buffers=broadcast_tensors(state.buffers))
        check_replicas(state, "training_start")
        was = state.callbacks.get(name)
        if was is None and w.size == 1:
            return state  # a single-process run keeps its checkpoints as they always were
        state, note = regrouped(state, global_batch, w.size, single_batch if state.progress.step else None, name)
        if note is not None and speaks():
            print(f"note: {note}", file=sys.stderr, flush=True)
        now = {"world": w.size, "global_batch": int(global_batch)}
        if was != now:
            state = state.replace(callbacks={**state.callbacks, name: now})
        return state

    return Callback("training_start", start, priority=-2000, name=f"{name}_replicas")


def check_every_epoch(priority: int = 950, name: str = "replicas_check") -> Callback:
    """At each ``epoch_end``: raise when the ranks' params differ (a hash each, gathered).

    Buffers are rank 0's after each update, but not between the batches of an
    accumulated update, so only the params are checked here.
    """

    def fn(state: TrainState) -> TrainState:
        check_replicas(state, f"epoch {state.progress.epoch}", buffers=False)
        return state

    return Callback("epoch_end", fn, priority=priority, name=name)


def agree_on_stop(priority: int = 900, name: str = "agree_on_stop", every_batch: bool = True) -> tuple[Callback, ...]:
    """Make a stop decided on any rank the stop of every rank, in the same step.

    At ``epoch_end`` — and at every ``batch_end`` with ``every_batch`` — after
    the callbacks that decide (NaN guard, early stopping) and before the
    checkpoint writer, each rank says whether it stopped (one small
    all-reduce); when one did, every rank gets the same
    :class:`~smartcash_fn.state.Stop` naming the ranks and reasons, failed
    when any was. :func:`~smartcash_fn.run.build.build` leaves the batch-end
    check out when every batch-end decision reads agreed values (the NaN
    guard reads the step metrics :func:`all_reduce_gradients` averaged). The
    identity without a process group.
    """

    def fn(state: TrainState) -> TrainState:
        if not active():
            return state
        w = world()
        code = 0 if state.stop is None else (2 if state.stop.failed else 1)
        flags = torch.zeros(w.size, device=_comm_device())
        flags[w.rank] = code
        dist.all_reduce(flags)
        if not bool(flags.any()):
            return state
        reasons = gather_objects(None if state.stop is None else state.stop.reason)
        if None not in reasons and len(set(reasons)) == 1 and bool((flags == flags[0]).all()):
            return state  # every rank stopped alike (an agreed decision): keep its words
        said = "; ".join(f"rank {r}: {why}" for r, why in enumerate(reasons) if why is not None)
        return state.replace(stop=Stop(said, failed=bool((flags == 2).any())))

    epoch = Callback("epoch_end", fn, priority=priority, name=name)
    return (Callback("batch_end", fn, priority=priority, name=name), epoch) if every_batch else (epoch,)


# --------------------------------------------------------------------------- gradients


def bucket_plan(sizes: Sequence[tuple[str, int, Any]], cap_bytes: int,
                first_cap_bytes: int | None = None) -> tuple[tuple[str, ...], ...]:
    """Names grouped into buckets of at most ``cap_bytes`` (a larger tensor gets one of its own).

    ``sizes`` lists ``(name, nbytes, kind)`` in order; a bucket holds one
    ``kind`` (dtype and device) only, consecutive names, so its tensors
    flatten into one buffer. ``first_cap_bytes`` caps the first bucket
    (default ``cap_bytes``)::

        bucket_plan([("a", 40, "f32"), ("b", 40, "f32"), ("c", 40, "f32")], 100)   # (("a", "b"), ("c",))
        bucket_plan([("a", 40, "f32"), ("b", 40, "f32"), ("c", 40, "f32")], 100, 50)   # (("a",), ("b", "c"))
    """
    buckets: list[tuple[str, ...]] = []
    names: list[str] = []
    used, kind = 0, None
    for name, nbytes, k in sizes:
        cap = cap_bytes if buckets or first_cap_bytes is None else first_cap_bytes
        if names and (k != kind or used + nbytes > cap):
            buckets.append(tuple(names))
            names, used = [], 0
        names.append(name)
        used += nbytes
        kind = k
    if names:
        buckets.append(tuple(names))
    return tuple(buckets)


def accumulating(state: TrainState, on: bool = True) -> TrainState:
    """``state`` with the :data:`ACCUMULATING` flag set (``on``) or taken off; ``state`` itself when already so.

    ``accumulating(state).extras["accumulating"] is True``; ``accumulating(s, False)`` is ``s`` without it.
    """
    if on:
        return state if state.extras.get(ACCUMULATING) is True else \
            state.replace(extras={**state.extras, ACCUMULATING: True})
    if ACCUMULATING not in state.extras:
        return state
    return state.replace(extras={k: v for k, v in state.extras.items() if k != ACCUMULATING})


@attrs.frozen
class _Bucket:
    """One flat buffer of the overlapped reduction: ``names`` of ``sizes`` elements, the gradients first."""

    dtype: torch.dtype
    device: torch.device
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    grads: int  # how many slots autograd fills; the others (metrics, buffers) are filled before it starts
    mean_end: int  # elements [0, mean_end) are averaged over the ranks, the rest (buffers) only summed


@attrs.frozen
class _Layout:
    buckets: tuple[_Bucket, ...]
    where: Mapping[str, tuple[int, int, int]]  # name -> (bucket, offset, numel)

    @property
    def overlaps(self) -> bool:
        """Whether a bucket can start before the backward pass ends: more than one holds gradients."""
        return sum(1 for b in self.buckets if b.grads) > 1


_Spec = tuple[tuple[str, int, int, Any], ...]  # (name, numel, element size, (dtype, device))


@functools.lru_cache(maxsize=64)
def _layout(grads: _Spec, means: _Spec, sums: _Spec, cap_bytes: int, first_cap_bytes: int) -> _Layout:
    """Gradient buckets in ``grads`` order (the first capped at ``first_cap_bytes``); the metrics (``means``) and
    buffers (``sums``) ride in the first bucket when of its kind, else in buckets of their own at the end."""
    numel = {name: n for name, n, _, _ in grads + means + sums}
    kinds = {name: kind for name, _, _, kind in grads + means + sums}
    plan = bucket_plan([(name, n * es, kind) for name, n, es, kind in grads], cap_bytes, first_cap_bytes)
    groups = [(kinds[b[0]], list(b), []) for b in plan]  # (kind, averaged names, summed names)
    extra: dict[Any, tuple[Any, list[str], list[str]]] = {}
    for riders, summed in ((means, False), (sums, True)):
        for name, _, _, kind in riders:
            group = groups[0] if groups and groups[0][0] == kind else extra.setdefault(kind, (kind, [], []))
            group[2 if summed else 1].append(name)
    buckets, where = [], {}
    for i, ((dtype, device), averaged, summed) in enumerate(groups + list(extra.values())):
        at = 0
        for name in averaged + summed:
            where[name] = (i, at, numel[name])
            at += numel[name]
        count = len(plan[i]) if i < len(plan) else 0
        buckets.append(_Bucket(dtype, device, tuple(averaged + summed), tuple(numel[n] for n in averaged + summed),
                               count, sum(numel[n] for n in averaged)))
    return _Layout(tuple(buckets), where)


def _spec(tensors: Mapping[str, torch.Tensor], names: Sequence[str], prefix: str = "") -> _Spec:
    return tuple((prefix + k, tensors[k].numel(), tensors[k].element_size(), (tensors[k].dtype, tensors[k].device))
                 for k in names)


@attrs.frozen
class _Reduction:
    """One step's reduction: the bucket ``layout`` of gradients ``names`` (autograd's order), float ``metrics``
    and ``buffers``, and the ``riders`` (metrics, and rank 0's buffers or zeros) that travel with them."""

    layout: _Layout
    names: tuple[str, ...]
    metrics: tuple[str, ...]
    buffers: tuple[str, ...]
    riders: Mapping[str, torch.Tensor]


def _reduction(state: TrainState, grads: Tensors, bucket_mb: float, first_bucket_mb: float) -> _Reduction:
    main = dist.get_rank() == 0
    metrics = tuple(k for k, v in state.metrics.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    buffers = tuple(k for k, v in state.buffers.items() if v.is_floating_point())  # integer ones agree already
    names = tuple(grads)[::-1]  # the order autograd finishes them in, near enough: the last layer first
    layout = _layout(_spec(grads, names), _spec(state.metrics, metrics, METRIC),
                     _spec(state.buffers, buffers, BUFFER), max(1, int(bucket_mb * 2**20)),
                     max(1, int(first_bucket_mb * 2**20)))
    riders = {METRIC + k: state.metrics[k] for k in metrics}
    riders.update((BUFFER + k, state.buffers[k] if main else torch.zeros_like(state.buffers[k]))
                  for k in buffers)  # rank 0's buffers, summed with the others' zeros
    return _Reduction(layout, names, metrics, buffers, riders)


def _finished(state: TrainState, r: _Reduction, flats: Sequence[torch.Tensor], views: Mapping[str, torch.Tensor],
              works: Sequence[Any]) -> tuple[TrainState, Tensors]:
    """Wait for ``works``, average the gradients and metrics (the buffers are sums: rank 0's), and hand them out."""
    for work in works:
        work.wait()
    size = dist.get_world_size()
    for b, flat in zip(r.layout.buckets, flats):
        if b.mean_end:
            flat[:b.mean_end].div_(size)
    state = state.replace(metrics={**state.metrics, **{k: views[METRIC + k] for k in r.metrics}},
                          buffers={**state.buffers, **{k: views[BUFFER + k] for k in r.buffers}})
    return state, {k: views[k] for k in reversed(r.names)}


def _reduced_after(state: TrainState, grads: Tensors, r: _Reduction) -> tuple[TrainState, Tensors]:
    """``grads`` (all computed) averaged over the ranks with the step's metrics and rank 0's buffers: each bucket
    filled by one ``torch.cat`` (a new buffer) and all-reduced. Returns ``(state, grads)``, new tensors."""
    source = {**grads, **r.riders}
    flats = [torch.cat([source[k].reshape(-1) for k in b.names]) for b in r.layout.buckets]
    works = [dist.all_reduce(flat, async_op=True) for flat in flats]
    return _finished(state, r, flats, _views(r.layout, flats, {k: t.shape for k, t in source.items()}), works)


def _overlapped_backward(inner: Any, state: TrainState, loss: torch.Tensor, leaves: Tensors, bucket_mb: float,
                         first_bucket_mb: float) -> tuple[TrainState, Tensors]:
    """``inner``'s gradients averaged over the ranks, each bucket's all-reduce launched as soon as autograd has
    filled it, in plan order (the same collectives in the same order on every rank, whatever the timing);
    the metrics and rank 0's buffers ride in the first bucket. Returns ``(state, grads)``, both new tensors."""
    r = _reduction(state, leaves, bucket_mb, first_bucket_mb)
    if not r.layout.overlaps:  # one bucket of gradients: it could not start before the backward pass ends anyway
        return _reduced_after(state, inner.backward(state, loss, leaves), r)
    flats = [torch.empty(sum(b.sizes), dtype=b.dtype, device=b.device) for b in r.layout.buckets]
    views = _views(r.layout, flats, {**{k: t.shape for k, t in leaves.items()},
                                     **{k: t.shape for k, t in r.riders.items()}})
    if r.riders:
        torch._foreach_copy_([views[k] for k in r.riders], list(r.riders.values()))
    works = _launched_during(inner, state, loss, leaves, r.names, r.layout, flats, views)
    return _finished(state, r, flats, views, works)


def _views(layout: _Layout, flats: Sequence[torch.Tensor], shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Every name's part of its bucket's flat buffer, in the name's shape."""
    return {k: part.view(shapes[k]) for b, flat in zip(layout.buckets, flats)
            for k, part in zip(b.names, flat.split(b.sizes))}


def _launched_during(inner: Any, state: TrainState, loss: torch.Tensor, leaves: Tensors, names: Sequence[str],
                     layout: _Layout, flats: Sequence[torch.Tensor], views: Mapping[str, torch.Tensor]) -> list[Any]:
    """Run ``inner``'s backward with a hook on each leaf that notes its gradient; once a bucket has all of its
    gradients they are copied into it (one ``_foreach_copy_``) and its all-reduce launched, buckets strictly in
    plan order. Returns the works, every bucket launched."""
    where = layout.where
    missing = [b.grads for b in layout.buckets]
    pending: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in layout.buckets]
    works: list[Any] = []
    got: dict[str, torch.Tensor] = {}

    def launch_ready() -> None:
        while len(works) < len(flats) and missing[len(works)] == 0:
            ready = pending[len(works)]
            if ready:
                torch._foreach_copy_([view for view, _ in ready], [grad for _, grad in ready])
            works.append(dist.all_reduce(flats[len(works)], async_op=True))

    def hook(name: str) -> Callable[[torch.Tensor], None]:
        bucket, view = where[name][0], views[name]

        def note(grad: torch.Tensor) -> None:
            got[name] = grad
            pending[bucket].append((view, grad))
            missing[bucket] -= 1
            if not missing[bucket]:
                launch_ready()

        return note

    for k in names:  # the leaves are this step's own: their hooks go with them
        leaves[k].register_hook(hook(k))
    grads = inner.backward(state, loss, leaves)
    for k in names:
        mine = got.get(k)
        if mine is None:  # a leaf the loss does not use: autograd gave nothing, the backward zeros
            hook(k)(grads[k])
        elif grads[k] is not mine:
            raise StateError(f"all_reduce_gradients: the backward inside it changed the gradient of {k!r} after "
                             "autograd computed it, so the all-reduce launched during the backward pass sent the "
                             "wrong values; compose that transformer outside all_reduce_gradients, or use "
                             "all_reduce_gradients(overlap=False)")
    launch_ready()
    return works


def overlap_default() -> bool:
    """Whether :func:`~smartcash_fn.run.build.build` has the all-reduce run during the backward pass: on a
    backend whose collectives run beside the computation (NCCL, on a CUDA stream of its own), yes; on gloo,
    whose collectives take CPU time from the cores the ranks compute on, no — reduced at the update it
    measured as fast or faster there (``benchmarks/ddp.py``, docs/distributed.md)::

        all_reduce_gradients(overlap=overlap_default())
    """
    return active() and dist.get_backend() != "gloo"


def all_reduce_gradients(bucket_mb: float = BUCKET_MB, overlap: bool = True,
                         first_bucket_mb: float = FIRST_BUCKET_MB) -> Callable[[Any], Any]:
    """A step transformer averaging the gradients across ranks before the inner update.

    With ``overlap`` (the default) it wraps the ``backward`` phase: a hook on
    each of the step's own leaf tensors (not a module hook) notes the
    gradient as autograd computes it, and a bucket is filled and its
    ``all_reduce`` started as soon as all of its gradients are there — the last layers' first
    (buckets in reverse parameter order, the first one ``first_bucket_mb``),
    launched strictly in plan order, so every rank issues the same
    collectives in the same order whatever the timing and the sums are those
    of fixed buckets. The communication runs while the backward pass goes on,
    as in ``DistributedDataParallel``; the backward returns the averaged
    gradients. Under :func:`~smartcash_fn.step.accumulate` (the
    :data:`ACCUMULATING` flag) and with ``overlap=False`` the ``update`` phase
    reduces instead, once per update (on the accumulated mean), in the same
    buckets filled after the fact: the same sums.

    Put it inside ``accumulate`` and outside ``clip`` (clip the averaged
    gradients), as :func:`~smartcash_fn.run.build.build` does, with
    ``overlap=overlap_default()`` (overlapped on NCCL, not on gloo). The step's
    metrics (the loss and its parts) are averaged in the same collectives, so
    every rank records the loss of the global batch — the single-process
    figure — and a NaN guard reading it decides the same on every rank. The
    floating-point buffers the forward pass left (BatchNorm statistics)
    travel in them too, summed with zeros from every rank but 0: every rank
    gets rank 0's, as ``DistributedDataParallel``'s ``broadcast_buffers``
    gives, without a collective of their own. The identity on one process::

        step = all_reduce_gradients()(make_step(loss_fn))
    """
    if not bucket_mb > 0 or not first_bucket_mb > 0:
        raise StateError(f"all_reduce_gradients: bucket_mb and first_bucket_mb must be > 0, got {bucket_mb!r} "
                         f"and {first_bucket_mb!r}")

    def transform(inner: Any) -> Any:
        def backward(state: TrainState, loss: torch.Tensor, leaves: Tensors) -> Any:
            if not active() or state.extras.get(ACCUMULATING):
                return inner.backward(state, loss, leaves)
            return _overlapped_backward(inner, state, loss, leaves, bucket_mb, first_bucket_mb)

        def update(state: TrainState, grads: Tensors) -> TrainState:
            if not active() or (overlap and not state.extras.get(ACCUMULATING)):
                return inner.update(state, grads)  # one process, or reduced during the backward pass
            # the buckets of the overlapped plan, filled after the fact: one set of collectives, the same sums
            state, grads = _reduced_after(state, grads, _reduction(state, grads, bucket_mb, first_bucket_mb))
            return inner.update(state, grads)

        if overlap:
            return attrs.evolve(inner, backward=backward, update=update)
        return attrs.evolve(inner, update=update)

    return transform


# --------------------------------------------------------------------------- validation


def sharded_validation(validation: Any, w: World | None = None) -> Any:
    """``validation`` (a :class:`~smartcash_fn.loop.Validation`) evaluating this rank's block and finishing on all.

    Each rank updates the evaluator on its contiguous block of the validation
    data; ``finish`` gathers the accumulators (``all_gather_object``), merges
    them in rank order with the evaluator's ``merge`` and finishes on the
    whole — the metrics of a single-process evaluation (the detections
    themselves are gathered, not per-rank mAPs). An evaluator without
    ``merge``, or a single process, keeps the whole set on every rank::

        validation = sharded_validation(Validation(val_data, classification_metrics()))
    """
    w = world() if w is None else w
    ev = validation.evaluator
    if w.size == 1 or getattr(ev, "merge", None) is None:
        return validation

    def finish(acc: Any) -> Mapping[str, float]:
        parts = gather_objects(acc)
        return ev.finish(functools.reduce(ev.merge, parts))

    return attrs.evolve(validation, data=sharded(validation.data, w.shard(even=False)),
                        evaluator=attrs.evolve(ev, finish=finish))


# --------------------------------------------------------------------------- failures


@contextlib.contextmanager
def failures_named() -> Iterator[None]:
    """Say which rank failed: an exception leaving the block prints ``error: rank R of N failed: ...`` first.

    ``torchrun`` then stops the other ranks (their collectives fail as the
    rank's connections close) and reports the failed rank too::

        with failures_named():
            fit(state, loop)
    """
    try:
        yield
    except Exception as e:
        w = world()
        if w.size > 1 and not getattr(e, "rank_named", False):
            print(f"error: rank {w.rank} of {w.size} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            try:
                e.rank_named = True  # an outer block does not say it again
            except AttributeError:
                pass
        raise
