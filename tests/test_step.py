"""Steps and step transformers: the functional step against torch's ordinary loop.

Where the functional path performs the same floating-point operations as
``loss.backward()`` + ``torch.optim`` (the plain step, BatchNorm, param
groups, frozen params, schedules inside ``fit``) the params are asserted
bit-identical with ``torch.equal``. Where the arithmetic differs by design
(gradient accumulation sums in another order, EMA by ``lerp``) the tolerance
and its reason are stated at the assertion.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import attrs
import pytest
import toolz
import torch
import torch.nn.functional as F
from torch import nn

from smartcash_fn import checkpoint, schedule
from smartcash_fn.data import TensorData
from smartcash_fn.errors import StateError, UserError
from smartcash_fn.loop import Loop, fit
from smartcash_fn.optim import adamw, frozen, label_by_prefix, multi_transform, sgd
from smartcash_fn.replay import verify
from smartcash_fn.state import Progress, TrainState
from smartcash_fn.step import (
    accumulate,
    autograd_backward,
    bf16,
    classification_loss,
    clip,
    ema,
    fp16,
    late_switch,
    make_step,
)

# --------------------------------------------------------------------------- small models and data


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def mlp_bn() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


def mlp_dropout() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))


def two_part() -> nn.Module:
    """``backbone.*`` and ``head.*`` params, for param groups and freezing."""
    return nn.Sequential(OrderedDict(
        backbone=nn.Sequential(nn.Linear(8, 16), nn.ReLU()),
        head=nn.Linear(16, 4),
    ))


def batches(n: int, size: int = 16, seed: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, 8, generator=g)
        out.append((x, x[:, :4].argmax(1)))
    return out


def reference_model(state: TrainState) -> nn.Module:
    """An ordinary module holding the state's params and buffers (for the hand-written loop)."""
    model = copy.deepcopy(state.model)
    model.load_state_dict({**state.params, **state.buffers})
    return model


def assert_params_equal(state: TrainState, model: nn.Module) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(state.params[name], p.detach()), name


def run(step, state: TrainState, data) -> list[TrainState]:
    """Every state along the way, the first one included."""
    states = [state]
    for batch in data:
        states.append(step(states[-1], batch))
    return states


# --------------------------------------------------------------------------- make_step


def test_make_step_is_bit_identical_to_torch_adamw_foreach_loop():
    data = batches(50)
    state = TrainState.create(mlp, adamw(1e-2), seed=0)
    first = {k: v.clone() for k, v in state.params.items()}
    model = reference_model(state)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2, foreach=True)
    step = make_step(classification_loss)

    for x, y in data:
        state = step(state, (x, y))
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        assert torch.equal(state.metrics["loss"], loss.detach())

    assert state.opt_state["count"] == 50
    assert_params_equal(state, model)
    for name, p in model.named_parameters():
        assert torch.equal(state.opt_state["exp_avg"][name], opt.state[p]["exp_avg"]), name
        assert torch.equal(state.opt_state["exp_avg_sq"][name], opt.state[p]["exp_avg_sq"]), name
    assert any(not torch.equal(first[k], state.params[k]) for k in first)


def test_late_switch_runs_the_late_forward_from_its_share_of_the_planned_epochs():
    def constant(value):
        return lambda apply, batch: apply(batch[0]).sum() * 0 + value

    state = TrainState.create(mlp, sgd(0.1), seed=0)
    step = late_switch(make_step(constant(1.0)), make_step(constant(2.0)), start=0.5)
    for planned, epoch, loss in ((6, 2, 1.0), (6, 3, 2.0), (7, 3, 1.0), (7, 4, 2.0)):
        s = state.replace(progress=Progress(epoch=epoch), run=attrs.evolve(state.run, epochs=planned))
        assert step(s, batches(1)[0]).metrics["loss"].item() == loss, (planned, epoch)
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(StateError, match="late_switch: start must be a number in"):
            late_switch(make_step(constant(1.0)), make_step(constant(2.0)), start=bad)


def test_step_leaves_the_old_state_untouched():
    state = TrainState.create(mlp_bn, sgd(0.1, momentum=0.9), seed=0)
    before = {k: v.clone() for k, v in {**state.params, **state.buffers}.items()}
    new = make_step(classification_loss)(state, batches(1)[0])
    for k, v in {**state.params, **state.buffers}.items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(new.params["0.weight"], state.params["0.weight"])
    assert state.progress == Progress() and state.metrics == {}


def test_loss_parts_land_in_metrics_detached():
    def loss_fn(apply, batch):
        x, y = batch
        out = apply(x)
        ce = F.cross_entropy(out, y)
        l2 = 1e-3 * out.pow(2).mean()
        return ce + l2, {"ce": ce, "l2": l2, "samples": len(y)}

    state = TrainState.create(mlp, sgd(0.1), seed=0)
    x, y = batches(1)[0]
    new = make_step(loss_fn)(state, (x, y))
    out = state.apply(x)
    ce = F.cross_entropy(out, y)
    l2 = 1e-3 * out.pow(2).mean()
    assert set(new.metrics) == {"loss", "ce", "l2", "samples"}
    assert torch.equal(new.metrics["ce"], ce)
    assert torch.equal(new.metrics["l2"], l2)
    assert torch.equal(new.metrics["loss"], ce + l2)
    assert float(new.metrics["samples"]) == 16.0
    assert all(not v.requires_grad for v in new.metrics.values())


@pytest.mark.parametrize("bad, words", [
    (lambda out, y: F.cross_entropy(out, y, reduction="none"), ["scalar", "(16,)"]),
    (lambda out, y: F.cross_entropy(out, y).item(), ["scalar", "float"]),
    (lambda out, y: {"loss": F.cross_entropy(out, y)}, ["scalar", "dict"]),
])
def test_a_loss_that_is_not_a_scalar_tensor_is_a_clear_state_error(bad, words):
    state = TrainState.create(mlp, sgd(0.1), seed=0)
    step = make_step(lambda apply, b: bad(apply(b[0]), b[1]))
    with pytest.raises(StateError) as err:
        step(state, batches(1)[0])
    assert isinstance(err.value, UserError)
    for w in words:
        assert w in str(err.value)


def test_batchnorm_buffers_update_functionally_like_a_module():
    data = batches(12)
    state = TrainState.create(mlp_bn, sgd(0.05, momentum=0.9), seed=1)
    model = reference_model(state)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = make_step(classification_loss)
    seen = [state.buffers]
    for x, y in data:
        state = step(state, (x, y))
        seen.append(state.buffers)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    buffers = dict(model.named_buffers())
    assert set(buffers) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    for name, b in buffers.items():
        assert torch.equal(state.buffers[name], b), name
    assert int(state.buffers["1.num_batches_tracked"]) == 12
    assert_params_equal(state, model)
    # each step made fresh buffers: the first state's statistics are still the initial ones
    assert torch.equal(seen[0]["1.running_mean"], torch.zeros(16))
    assert int(seen[0]["1.num_batches_tracked"]) == 0
    assert all(a["1.running_mean"] is not b["1.running_mean"] for a, b in zip(seen, seen[1:]))


# --------------------------------------------------------------------------- dropout


def recording(outputs: list):
    def loss_fn(apply, batch):
        x, y = batch
        out = apply(x)
        outputs.append(out.detach())
        return F.cross_entropy(out, y)

    return loss_fn


def test_dropout_is_a_function_of_seed_and_step_not_of_the_global_rng():
    outputs: list[torch.Tensor] = []
    step = make_step(recording(outputs))
    state = TrainState.create(mlp_dropout, sgd(0.1), seed=3)
    batch = batches(1)[0]

    torch.manual_seed(1)
    a = step(state, batch)
    torch.manual_seed(12345)
    torch.rand(100)
    b = step(state, batch)
    assert torch.equal(outputs[0], outputs[1])
    assert verify(a, b) is None

    # the step neither reads nor advances the global generator
    torch.manual_seed(5)
    before = torch.get_rng_state()
    step(state, batch)
    assert torch.equal(torch.get_rng_state(), before)

    # dropout is really on: without it the output is another one
    state.model.eval()
    try:
        plain = state.apply(batch[0])
    finally:
        state.model.train()
    assert not torch.equal(outputs[0], plain)

    # another step number, or another seed, draws another mask (same params, same batch)
    step(state.replace(progress=Progress(step=1)), batch)
    step(state.replace(seed=4), batch)
    assert not torch.equal(outputs[0], outputs[3])
    assert not torch.equal(outputs[0], outputs[4])
    assert not torch.equal(outputs[3], outputs[4])


# --------------------------------------------------------------------------- param groups and freezing


def test_frozen_params_stay_the_same_tensors_and_get_no_gradient():
    opt = multi_transform({"backbone": frozen(), "head": adamw(1e-3)},
                          label_by_prefix({"backbone.": "backbone"}, default="head"))
    state = TrainState.create(two_part, opt, seed=0)
    start = dict(state.params)
    model = reference_model(state)
    model.backbone.requires_grad_(False)

    backbone_out_requires_grad: list[bool] = []
    hook = state.model.backbone.register_forward_hook(
        lambda mod, inp, out: backbone_out_requires_grad.append(out.requires_grad))
    leaves_seen: list[list[str]] = []

    def spy_backward(st, loss, leaves):
        leaves_seen.append(sorted(leaves))
        return autograd_backward(st, loss, leaves)

    step = attrs.evolve(make_step(classification_loss), backward=spy_backward)
    ref_opt = torch.optim.AdamW(model.head.parameters(), lr=1e-3, foreach=True)
    try:
        for x, y in batches(6):
            state = step(state, (x, y))
            ref_opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            ref_opt.step()
    finally:
        hook.remove()

    assert backbone_out_requires_grad == [False] * 6  # no graph is built through the backbone
    assert leaves_seen == [["head.bias", "head.weight"]] * 6
    for name in ("backbone.0.weight", "backbone.0.bias"):
        assert state.params[name] is start[name]
    for name in ("head.weight", "head.bias"):
        assert not torch.equal(state.params[name], start[name])
    assert state.opt_state["backbone"] == {}
    assert_params_equal(state, model)


def test_two_param_groups_with_different_lrs_match_torch_param_groups():
    opt = multi_transform({"backbone": adamw(1e-5), "head": adamw(1e-3)},
                          label_by_prefix({"backbone.": "backbone"}, default="head"))
    state = TrainState.create(two_part, opt, seed=0)
    model = reference_model(state)
    ref_opt = torch.optim.AdamW([{"params": model.backbone.parameters(), "lr": 1e-5},
                                 {"params": model.head.parameters(), "lr": 1e-3}], foreach=True)
    step = make_step(classification_loss)
    for x, y in batches(10):
        state = step(state, (x, y))
        ref_opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ref_opt.step()
    assert_params_equal(state, model)


def test_unfreezing_is_a_new_optimizer_continuing_the_run():
    labels = label_by_prefix({"backbone.": "backbone"}, default="head")
    phase1 = multi_transform({"backbone": frozen(), "head": adamw(1e-3)}, labels)
    state = TrainState.create(two_part, phase1, seed=2)
    start = dict(state.params)
    model = reference_model(state)
    model.backbone.requires_grad_(False)
    ref_opt = torch.optim.AdamW(model.head.parameters(), lr=1e-3, foreach=True)
    step = make_step(classification_loss)
    data = batches(10)
    for x, y in data[:5]:
        state = step(state, (x, y))
        ref_opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ref_opt.step()
    assert state.params["backbone.0.weight"] is start["backbone.0.weight"]

    phase2 = multi_transform({"backbone": adamw(5e-6), "head": adamw(1e-4)}, labels)
    state = state.replace(optimizer=phase2, opt_state=phase2.init(state.params))
    model.backbone.requires_grad_(True)
    ref_opt = torch.optim.AdamW([{"params": model.backbone.parameters(), "lr": 5e-6},
                                 {"params": model.head.parameters(), "lr": 1e-4}], foreach=True)
    for x, y in data[5:]:
        state = step(state, (x, y))
        ref_opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ref_opt.step()
    assert not torch.equal(state.params["backbone.0.weight"], start["backbone.0.weight"])
    assert state.progress.step == 10  # the step counts the batches it trains on
    assert_params_equal(state, model)


def test_a_new_optimizer_is_never_mistaken_for_a_freed_one():
    # the trainable-name cache is keyed by id(); Python reuses the id of a freed optimizer
    x, y = batches(1)[0]
    step = make_step(classification_loss)
    labels = label_by_prefix({"backbone.": "backbone"}, default="head")
    for _ in range(20):
        state = TrainState.create(two_part, multi_transform({"backbone": frozen(), "head": sgd(0.1)}, labels))
        step(state, (x, y))
        del state
        state = TrainState.create(two_part, sgd(0.1))
        new = step(state, (x, y))
        assert new.params["backbone.0.weight"] is not state.params["backbone.0.weight"]


# --------------------------------------------------------------------------- accumulate


def test_accumulate_equals_one_big_batch_with_one_update_per_k():
    k, b = 4, 8
    x, y = batches(1, size=k * b)[0]
    micro = [(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b]) for i in range(k)]
    state = TrainState.create(mlp, sgd(0.5), seed=0)

    big = make_step(classification_loss)(state, (x, y))
    states = run(accumulate(k)(make_step(classification_loss)), state, micro)

    for i, s in enumerate(states[1:k], start=1):  # accumulating: no update yet
        assert s.opt_state["count"] == 0
        assert s.params is state.params
        assert s.extras["accumulate"]["count"] == i
    acc = states[-1]
    assert acc.opt_state["count"] == 1
    assert "accumulate" not in acc.extras
    for name in state.params:
        assert not torch.equal(acc.params[name], state.params[name])
        # Not bit-exact: the mean of k micro-batch means sums the per-sample
        # gradients in another order than one batch's mean does.
        torch.testing.assert_close(acc.params[name], big.params[name], rtol=0, atol=1e-6)


def test_accumulate_updates_once_per_k_batches_over_a_run():
    state = TrainState.create(mlp, adamw(1e-2), seed=0)
    states = run(accumulate(3)(make_step(classification_loss)), state, batches(10))
    assert [s.opt_state["count"] for s in states] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert states[-1].extras["accumulate"]["count"] == 1


def test_accumulate_survives_a_checkpoint_mid_accumulation(tmp_path):
    step = accumulate(3)(make_step(classification_loss))
    data = batches(8)
    state = TrainState.create(mlp_bn, adamw(1e-2), seed=0)
    straight = run(step, state, data)[-1]

    mid = run(step, state, data[:4])[-1]  # one update done, one batch accumulated
    assert mid.extras["accumulate"]["count"] == 1
    checkpoint.save(mid, tmp_path / "mid.pt")
    loaded = checkpoint.load(tmp_path / "mid.pt", like=state)
    assert verify(loaded, mid) is None
    resumed = run(step, loaded, data[4:])[-1]

    assert verify(resumed, straight) is None
    for name in straight.params:
        assert torch.equal(resumed.params[name], straight.params[name])
    assert torch.equal(resumed.extras["accumulate"]["sum"]["0.weight"],
                       straight.extras["accumulate"]["sum"]["0.weight"])


@pytest.mark.parametrize("make", [lambda: accumulate(0), lambda: accumulate(2.0), lambda: clip(0.0),
                                  lambda: ema(1.0), lambda: fp16(growth_factor=1.0)])
def test_bad_transformer_arguments_are_user_errors(make):
    with pytest.raises(UserError):
        make()


# --------------------------------------------------------------------------- clip


def spy_step(seen: list):
    """``make_step`` whose update records (grads, state) instead of applying them."""
    return attrs.evolve(make_step(classification_loss), update=lambda st, g: (seen.append((g, st)), st)[1])


def test_clip_matches_clip_grad_norm_and_records_the_total_norm():
    state = TrainState.create(mlp, sgd(0.1), seed=0)
    batch = batches(1)[0]
    raw, clipped = [], []
    spy_step(raw)(state, batch)
    clip(0.05)(spy_step(clipped))(state, batch)
    (g_raw, _), (g_clip, st) = raw[0], clipped[0]

    model = reference_model(state)
    for name, p in model.named_parameters():
        p.grad = g_raw[name].clone()
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)

    assert float(total) > 0.05  # clipping really happened
    torch.testing.assert_close(st.metrics["grad_norm"], total, rtol=1e-7, atol=0)
    for name, p in model.named_parameters():
        assert not torch.equal(g_clip[name], g_raw[name])
        torch.testing.assert_close(g_clip[name], p.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g_clip.values()])),
        torch.tensor(0.05), rtol=1e-5, atol=0)


def test_clip_below_the_threshold_leaves_the_gradients_alone():
    state = TrainState.create(mlp, sgd(0.1), seed=0)
    batch = batches(1)[0]
    raw, clipped = [], []
    spy_step(raw)(state, batch)
    clip(1e6)(spy_step(clipped))(state, batch)
    (g_raw, _), (g_clip, st) = raw[0], clipped[0]
    for name in g_raw:
        assert torch.equal(g_clip[name], g_raw[name])
    expected = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in g_raw.values()]))
    torch.testing.assert_close(st.metrics["grad_norm"], expected, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- ema


def hand_ema(param_sets: list[dict], decay: float) -> dict:
    """The EMA by its definition, in float64: starts at the first update's params."""
    avg = {k: v.double() for k, v in param_sets[0].items()}
    for ps in param_sets[1:]:
        avg = {k: decay * avg[k] + (1 - decay) * ps[k].double() for k in avg}
    return avg


def test_ema_equals_a_hand_computation():
    state = TrainState.create(mlp_bn, sgd(0.2), seed=0)
    states = run(ema(0.9)(make_step(classification_loss)), state, batches(6))
    entry = states[-1].extras["ema"]
    assert entry["count"] == 6
    expected = hand_ema([s.params for s in states[1:]], 0.9)
    for name, v in entry["params"].items():
        # lerp in float32 against the definition in float64
        torch.testing.assert_close(v.double(), expected[name], rtol=0, atol=1e-6)
    # (the Linear bias before BatchNorm gets a zero gradient; the weights move)
    assert not torch.equal(entry["params"]["0.weight"], states[-1].params["0.weight"])
    assert entry["buffers"]["1.running_mean"] is states[-1].buffers["1.running_mean"]
    # the params themselves are untouched by ema
    plain = run(make_step(classification_loss), state, batches(6))[-1]
    for name in plain.params:
        assert torch.equal(plain.params[name], states[-1].params[name])


def test_ema_warmup_ramps_the_decay_by_the_update_count():
    state = TrainState.create(mlp, sgd(0.2), seed=0)
    states = run(ema(0.9, warmup=3.0)(make_step(classification_loss)), state, batches(6))
    sets = [s.params for s in states[1:]]
    avg = {k: v.double() for k, v in sets[0].items()}
    for n, ps in enumerate(sets[1:], start=2):
        d = 0.9 * (1 - math.exp(-n / 3.0))
        avg = {k: d * avg[k] + (1 - d) * ps[k].double() for k in avg}
    for name, v in states[-1].extras["ema"]["params"].items():
        torch.testing.assert_close(v.double(), avg[name], rtol=0, atol=1e-6)
    # a ramped average sits nearer the latest params than the fixed-decay one
    fixed = run(ema(0.9)(make_step(classification_loss)), state, batches(6))[-1].extras["ema"]["params"]
    last = states[-1].params
    gap = lambda e: sum(float((e[k] - last[k]).abs().sum()) for k in last)  # noqa: E731
    assert gap(states[-1].extras["ema"]["params"]) < gap(fixed)
    with pytest.raises(StateError, match="warmup"):
        ema(0.9, warmup=-1)


def test_ema_every_n_updates():
    state = TrainState.create(mlp, sgd(0.2), seed=0)
    states = run(ema(0.5, every=2)(make_step(classification_loss)), state, batches(5))
    entry = states[-1].extras["ema"]
    assert entry["count"] == 5
    expected = hand_ema([states[1].params, states[2].params, states[4].params], 0.5)
    for name, v in entry["params"].items():
        torch.testing.assert_close(v.double(), expected[name], rtol=0, atol=1e-6)


def test_accumulate_clip_ema_compose_and_ema_sees_only_real_updates():
    step = toolz.compose(accumulate(2), clip(0.1), ema(0.9))(make_step(classification_loss))
    state = TrainState.create(mlp, sgd(0.5), seed=0)
    states = run(step, state, batches(6))
    assert "ema" not in states[1].extras
    assert [s.extras["ema"]["count"] for s in states[2:]] == [1, 1, 2, 2, 3]
    assert [s.opt_state["count"] for s in states] == [0, 0, 1, 1, 2, 2, 3]
    assert all("grad_norm" in s.metrics for s in states[2::2])
    updated = [states[2].params, states[4].params, states[6].params]
    expected = hand_ema(updated, 0.9)
    for name, v in states[-1].extras["ema"]["params"].items():
        torch.testing.assert_close(v.double(), expected[name], rtol=0, atol=1e-6)
    # the same run without ema reaches the same params: clip and accumulate were in effect either way
    no_ema = run(toolz.compose(accumulate(2), clip(0.1))(make_step(classification_loss)), state, batches(6))[-1]
    for name in no_ema.params:
        assert torch.equal(no_ema.params[name], states[-1].params[name])
    unclipped = run(accumulate(2)(make_step(classification_loss)), state, batches(6))[-1]
    assert not torch.equal(unclipped.params["0.weight"], states[-1].params["0.weight"])


# --------------------------------------------------------------------------- mixed precision


def test_bf16_runs_in_bfloat16_and_trains():
    dtypes: list[torch.dtype] = []

    def loss_fn(apply, batch):
        x, y = batch
        out = apply(x)
        dtypes.append(out.dtype)
        return F.cross_entropy(out, y)

    state = TrainState.create(mlp, adamw(1e-2), seed=0)
    data = batches(4, size=32)
    step = bf16()(make_step(loss_fn))
    losses = []
    for i in range(40):
        state = step(state, data[i % 4])
        losses.append(float(state.metrics["loss"]))
    assert set(dtypes) == {torch.bfloat16}
    assert all(v.dtype == torch.float32 for v in state.params.values())
    assert state.metrics["loss"].dtype == torch.float32
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])


def scaled_loss(outputs: list | None = None):
    """Cross-entropy times a factor carried in the batch; a huge factor overflows the fp16 backward."""

    def loss_fn(apply, batch):
        x, y, factor = batch
        out = apply(x)
        if outputs is not None:
            outputs.append(out.dtype)
        return F.cross_entropy(out, y) * factor

    return loss_fn


def test_fp16_good_step_unscales_and_counts():
    dtypes: list[torch.dtype] = []
    x, y = batches(1)[0]
    state = TrainState.create(mlp, sgd(0.1), seed=0)
    new = fp16()(make_step(scaled_loss(dtypes)))(state, (x, y, 1.0))
    assert dtypes == [torch.float16]
    assert new.extras["loss_scale"] == {"scale": 65536.0, "good_steps": 1}
    assert float(new.metrics["skipped"]) == 0.0
    assert new.opt_state["count"] == 1
    full = make_step(scaled_loss())(state, (x, y, 1.0))
    for name in state.params:
        # the gradients were divided by the scale again: the update is the fp32 one up to fp16 rounding
        torch.testing.assert_close(new.params[name], full.params[name], rtol=0, atol=2e-3)
        assert not torch.equal(new.params[name], state.params[name])


def test_fp16_skips_a_step_with_an_inf_gradient_and_backs_off():
    x, y = batches(1)[0]
    state = TrainState.create(mlp, sgd(0.1), seed=0)
    step = ema(0.9)(fp16()(make_step(scaled_loss())))
    good = step(state, (x, y, 1.0))
    bad = step(good, (x, y, 1e30))
    assert torch.isfinite(bad.metrics["loss"])  # the loss is finite; its scaled fp16 gradient is not
    assert float(bad.metrics["skipped"]) == 1.0
    assert bad.params is good.params
    assert bad.opt_state is good.opt_state
    assert bad.extras["loss_scale"] == {"scale": 32768.0, "good_steps": 0}
    assert bad.extras["ema"] is good.extras["ema"]
    for v in bad.params.values():
        assert torch.isfinite(v).all()


def test_fp16_loss_scale_follows_torch_grad_scaler():
    pattern = [0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    p = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=0.0)
    theirs = []
    for bad in pattern:
        opt.zero_grad()
        scaler.scale((p * (float("inf") if bad else 1.0)).sum()).backward()
        scaler.step(opt)
        scaler.update()
        theirs.append(scaler.get_scale())

    x, y = batches(1)[0]
    state = TrainState.create(mlp, sgd(0.01), seed=0)
    step = fp16(init_scale=8.0, growth_interval=3)(make_step(scaled_loss()))
    ours, skipped = [], []
    for bad in pattern:
        state = step(state, (x, y, 1e30 if bad else 1.0))
        ours.append(state.extras["loss_scale"]["scale"])
        skipped.append(int(state.metrics["skipped"]))
    assert skipped == pattern
    assert ours == theirs
    assert ours[2] == 16.0  # grew after growth_interval good steps


# --------------------------------------------------------------------------- schedules inside fit


def test_adamw_with_a_cosine_schedule_in_fit_matches_torch_lambdalr():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=g)
    y = x[:, :4].argmax(1)
    data = TensorData((x, y), batch_size=8)  # 5 batches an epoch, shuffled by the seed
    sched = schedule.cosine(1e-2, total_steps=15, min_lr=1e-4)
    state = TrainState.create(mlp, adamw(sched, weight_decay=0.05), seed=4)
    model = reference_model(state)
    out = fit(state, Loop(step=make_step(classification_loss), data=data, epochs=3))

    # base lr 1.0 so that LambdaLR's lr (base_lr * lambda) is the schedule's value itself
    opt = torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.05, foreach=True)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: sched(k))
    lrs = []
    for epoch in range(3):
        for bx, by in data.batches(4, epoch):
            lrs.append(opt.param_groups[0]["lr"])
            opt.zero_grad()
            F.cross_entropy(model(bx), by).backward()
            opt.step()
            lr_sched.step()
    assert lrs == [sched(k) for k in range(15)]
    assert out.progress.step == 15 and out.opt_state["count"] == 15
    assert_params_equal(out, model)
