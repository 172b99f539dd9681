"""Invariant 1: a state, once returned to user code or passed to a callback, is never written in place.

Every tensor reachable from a state (params, buffers, optimizer moments,
EMA params, accumulated gradients, the best params, metrics, running sums)
is fingerprinted — a clone and its ``_version`` counter — the moment user
code or a callback sees it. Training goes on; afterwards each tensor must
still equal its clone and carry the same version. BatchNorm statistics are
checked by value too, because torch's batch-norm kernel updates running
statistics without bumping the version counter.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Iterator, Mapping

import attrs
import pytest
import toolz
import torch

import smartcash_fn as sf
from conftest import make_cnn, make_mlp, tiny_images, tiny_xy


def reachable(obj: Any, path: str = "state") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor reachable from ``obj`` (attrs records, mappings, sequences) with its dotted path."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif attrs.has(type(obj)):
        for f in attrs.fields(type(obj)):
            if f.name in ("model", "optimizer"):
                continue
            yield from reachable(getattr(obj, f.name), f"{path}.{f.name}")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from reachable(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from reachable(v, f"{path}[{i}]")


class Fingerprints:
    """Clones and version counters of every tensor of the states recorded so far."""

    def __init__(self) -> None:
        self.items: list[tuple[str, torch.Tensor, torch.Tensor, int]] = []
        self.states: dict[str, sf.TrainState] = {}

    def take(self, state: sf.TrainState, label: str) -> sf.TrainState:
        self.states[label] = state
        for path, t in reachable(state, label):
            self.items.append((path, t, t.detach().clone(), t._version))
        return state

    def paths(self) -> set[str]:
        return {p for p, *_ in self.items}

    def check(self) -> None:
        assert self.items, "nothing was fingerprinted"
        changed = [p for p, t, c, v in self.items if t._version != v or not torch.equal(t, c)]
        assert not changed, f"{len(changed)} tensors were written in place, e.g. {changed[:5]}"


OPTIMIZERS = {
    "adamw": lambda: sf.adamw(0.05, weight_decay=0.01),
    "sgd_nesterov": lambda: sf.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "multi_transform": lambda: sf.multi_transform(
        {"first": sf.adamw(0.05), "rest": sf.sgd(0.1, momentum=0.9)},
        sf.label_by_prefix({"0.": "first"}, default="rest")),
}


def _watching_loop(fp: Fingerprints, make_opt, directory, epochs: int) -> sf.Loop:
    x, y = tiny_xy()
    xv, yv = tiny_xy(24, seed=5)
    step = toolz.compose(sf.accumulate(2), sf.clip(0.5), sf.ema(0.8))(sf.make_step(sf.classification_loss))

    def watcher(event: str) -> sf.Callback:
        return sf.Callback(event, lambda s: fp.take(s, f"{event}@{s.progress.step}"), priority=500,
                           name=f"watch_{event}")

    return sf.Loop(
        step=step,
        data=sf.TensorData((x, y), 8),
        epochs=epochs,
        validation=sf.Validation(sf.TensorData((xv, yv), 12)),
        callbacks=(
            # "epoch" never improves in mode min: a stop after 3 more epochs and a restore, whatever the numerics
            sf.early_stopping(sf.Monitor("epoch", "min"), patience=3, restore_best=True),
            sf.reduce_on_plateau(sf.Monitor("epoch", "min"), factor=0.5, patience=0),
            sf.checkpointing(directory, every_epochs=1, every_steps=5, monitor="val/loss", top_k=2),
            sf.record_steps(3),
            sf.nan_guard(),
            sf.memory_cleanup(),
            [watcher(e) for e in ("training_start", "epoch_start", "batch_end", "validation_end",
                                  "epoch_end", "checkpoint_saved", "training_end")],
        ),
    )


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_no_state_seen_by_user_or_callback_is_written_later(opt, tmp_path):
    fp = Fingerprints()
    template = sf.TrainState.create(partial(make_mlp, dropout=0.2), OPTIMIZERS[opt](), seed=3)
    fp.take(template, "template")
    early = sf.fit(template, _watching_loop(fp, OPTIMIZERS[opt], tmp_path, epochs=2))
    fp.take(early, "early")
    # the early state carries every kind of tensor the invariant is about
    seen = fp.paths()
    for kind in ("early.params", "early.opt_state", "early.extras['ema']['params']", "early.best.params",
                 "early.metrics", "early.running" if early.running else "early.metrics"):
        assert any(p.startswith(kind) for p in seen), f"no tensor under {kind} was fingerprinted"
    assert any("['accumulate']['sum']" in p for p in seen), "no mid-accumulation state was seen by a callback"

    final = sf.fit(early, _watching_loop(fp, OPTIMIZERS[opt], tmp_path, epochs=7))
    fp.take(final, "final")
    # the run exercised what it claims to: plateau cut the lr, the best params were put back
    assert final.progress.epoch == 4 and final.stop is not None
    assert final.lr_scale == 0.5 ** 3
    assert final.callbacks["early_stopping"]["restored_epoch"] == 0
    assert final.params is final.best.params
    fp.check()
    # the training moved on: the params of the last batch differ from the early state's
    last = fp.states[f"batch_end@{final.progress.step}"]
    assert not any(torch.equal(early.params[k], last.params[k]) for k in early.params)


def test_best_params_are_a_reference_not_a_copy(tmp_path):
    seen: dict[int, sf.TrainState] = {}
    x, y = tiny_xy()
    loop = sf.Loop(step=sf.make_step(sf.classification_loss), data=sf.TensorData((x, y), 16), epochs=4,
                   validation=sf.Validation(sf.TensorData((x, y), 48)),
                   callbacks=(sf.keep_best("val/loss"),
                              sf.Callback("epoch_end", lambda s: seen.setdefault(s.progress.step, s),
                                          priority=0, name="remember")))
    final = sf.fit(sf.TrainState.create(make_mlp, sf.adamw(0.05), seed=0), loop)
    at_best = seen[final.best.step]
    assert all(final.best.params[k] is at_best.params[k] for k in at_best.params)


def test_batchnorm_buffers_update_functionally():
    x, y = tiny_images()
    loop1 = sf.Loop(step=toolz.compose(sf.clip(1.0), sf.ema(0.5))(sf.make_step(sf.classification_loss)),
                    data=sf.TensorData((x, y), 8), epochs=1, validation=sf.Validation(sf.TensorData((x, y), 16)))
    s0 = sf.TrainState.create(make_cnn, sf.adamw(1e-2), seed=0)
    s1 = sf.fit(s0, loop1)
    fp = Fingerprints()
    fp.take(s0, "s0")
    fp.take(s1, "s1")
    mean1 = s1.buffers["1.running_mean"].clone()
    tracked1 = int(s1.buffers["1.num_batches_tracked"])
    assert tracked1 == len(loop1.data)
    s3 = sf.fit(s1, attrs.evolve(loop1, epochs=3))
    fp.check()
    assert torch.equal(s1.buffers["1.running_mean"], mean1)
    assert not torch.equal(s3.buffers["1.running_mean"], mean1)
    assert int(s3.buffers["1.num_batches_tracked"]) == 3 * len(loop1.data)
    assert not torch.equal(s0.buffers["1.running_mean"], s1.buffers["1.running_mean"])


def test_apply_does_not_write_the_states_buffers():
    """``state.apply`` on a template left in training mode must not update the state's BatchNorm statistics."""
    x, y = tiny_images()
    s = sf.fit(sf.TrainState.create(make_cnn, sf.adamw(1e-2), seed=0),
               sf.Loop(step=sf.make_step(sf.classification_loss), data=sf.TensorData((x, y), 8), epochs=1))
    for training in (True, False):
        s.model.train(training)
        fp = Fingerprints()
        fp.take(s, "s")
        s.apply(x * 3 + 1)
        fp.check()


def test_a_loaded_state_is_not_written_by_the_run_it_starts(tmp_path):
    x, y = tiny_images()
    loop = sf.Loop(step=sf.make_step(sf.classification_loss), data=sf.TensorData((x, y), 8), epochs=1)
    template = sf.TrainState.create(make_cnn, sf.sgd(0.05, momentum=0.9), seed=0)
    sf.save(sf.fit(template, loop), tmp_path / "a.pt")
    loaded = sf.load(tmp_path / "a.pt", like=template)
    fp = Fingerprints()
    fp.take(loaded, "loaded")
    later = sf.fit(loaded, attrs.evolve(loop, epochs=2))
    fp.check()
    assert later.progress.epoch == 2
    assert sf.verify(loaded, sf.load(tmp_path / "a.pt", like=template)) is None


def test_a_step_leaves_its_input_state_intact():
    x, y = tiny_xy()
    step = toolz.compose(sf.accumulate(2), sf.clip(0.1), sf.ema(0.9))(sf.make_step(sf.classification_loss))
    s = sf.TrainState.create(partial(make_mlp, dropout=0.5), sf.adamw(0.1), seed=0)
    fp = Fingerprints()
    for i in range(5):
        fp.take(s, f"s{i}")
        s = step(s, (x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]))
    fp.check()
    assert "accumulate" in s.extras and "ema" in s.extras
