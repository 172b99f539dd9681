"""Optimizers: bit-identical to torch.optim on CPU, pure, with plain serializable state.

Each parity test trains the same small model three ways for 100 steps:
torch.optim with ``foreach=True``, torch.optim with ``foreach=False``, and the
functional optimizer, whose gradients come from ``torch.func.functional_call``
at its own params. If the params are equal after every step, so are the
gradients, so equal params and moments after 100 steps show the whole
update is the same arithmetic. On CPU, torch 2.14's foreach and for-loop
paths also agree bit for bit with each other (CPU foreach kernels run the
same per-tensor kernels), so the functional optimizer is asserted to match
both.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch.func import functional_call

from smartcash_fn import optim as O
from smartcash_fn import schedule as S

STEPS = 100


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def make_batches(n: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1234)
    return [(torch.randn(32, 8, generator=gen), torch.randn(32, 4, generator=gen)) for _ in range(n)]


BATCHES = make_batches()
MODEL = make_model()  # a template for functional_call; its own params are never used


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def initial_params() -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in make_model().named_parameters()}


def grads_at(params, batch, trains=lambda name: True):
    x, y = batch
    leaves = {n: p.detach().requires_grad_(trains(n)) for n, p in params.items()}
    wanted = [n for n in leaves if trains(n)]
    loss = loss_fn(functional_call(MODEL, leaves, (x,)), y)
    return dict(zip(wanted, torch.autograd.grad(loss, [leaves[n] for n in wanted])))


def run_functional(opt, steps=STEPS, params=None, opt_state=None, lr_scale=1.0, batches=BATCHES):
    params = initial_params() if params is None else params
    opt_state = opt.init(params) if opt_state is None else opt_state
    for batch in batches[:steps]:
        params, opt_state = opt.update(grads_at(params, batch, opt.trains), opt_state, params, lr_scale)
    return params, opt_state


def run_torch(make_opt, foreach, lr_lambda=None, steps=STEPS):
    """Train with torch.optim; return params by name and the optimizer's state by param name."""
    model = make_model()
    opt = make_opt(model, foreach)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda else None
    for x, y in BATCHES[:steps]:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    name_of = {p: n for n, p in model.named_parameters()}
    params = {n: p.detach() for n, p in model.named_parameters()}
    state = {name_of[p]: s for p, s in opt.state.items()}
    return params, state


def assert_same_tensors(ours: dict, theirs: dict, what: str) -> None:
    assert ours.keys() == theirs.keys(), what
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), f"{what}[{name!r}] differs"


def assert_matches_torch(params, opt_state, torch_params, torch_state, kind):
    assert_same_tensors(params, torch_params, "params")
    if kind == "adam":
        assert opt_state["count"] == STEPS
        for name, s in torch_state.items():
            assert s["step"].item() == opt_state["count"]
        assert_same_tensors(opt_state["exp_avg"], {n: s["exp_avg"] for n, s in torch_state.items()}, "exp_avg")
        assert_same_tensors(
            opt_state["exp_avg_sq"], {n: s["exp_avg_sq"] for n, s in torch_state.items()}, "exp_avg_sq"
        )
    elif "momentum_buffer" in opt_state:
        assert_same_tensors(
            opt_state["momentum_buffer"],
            {n: s["momentum_buffer"] for n, s in torch_state.items()},
            "momentum_buffer",
        )


# --------------------------------------------------------------------------
# parity with torch.optim

CASES = {
    "sgd": (O.sgd(0.05), lambda m, f: torch.optim.SGD(m.parameters(), lr=0.05, foreach=f), "sgd"),
    "sgd_momentum": (
        O.sgd(0.05, momentum=0.9),
        lambda m, f: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, foreach=f),
        "sgd",
    ),
    "sgd_nesterov": (
        O.sgd(0.05, momentum=0.9, nesterov=True),
        lambda m, f: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, foreach=f),
        "sgd",
    ),
    "sgd_weight_decay": (
        O.sgd(0.05, momentum=0.8, weight_decay=1e-2),
        lambda m, f: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.8, weight_decay=1e-2, foreach=f),
        "sgd",
    ),
    "sgd_plain_weight_decay": (
        O.sgd(0.05, weight_decay=1e-2),
        lambda m, f: torch.optim.SGD(m.parameters(), lr=0.05, weight_decay=1e-2, foreach=f),
        "sgd",
    ),
    "sgd_dampening": (
        O.sgd(0.05, momentum=0.9, dampening=0.3),
        lambda m, f: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, dampening=0.3, foreach=f),
        "sgd",
    ),
    "adam": (O.adam(1e-2), lambda m, f: torch.optim.Adam(m.parameters(), lr=1e-2, foreach=f), "adam"),
    "adam_weight_decay": (
        O.adam(1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        lambda m, f: torch.optim.Adam(
            m.parameters(), lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, foreach=f
        ),
        "adam",
    ),
    "adamw": (O.adamw(1e-2), lambda m, f: torch.optim.AdamW(m.parameters(), lr=1e-2, foreach=f), "adam"),
    "adamw_strong_decay": (
        O.adamw(3e-3, betas=(0.85, 0.95), weight_decay=0.3),
        lambda m, f: torch.optim.AdamW(m.parameters(), lr=3e-3, betas=(0.85, 0.95), weight_decay=0.3, foreach=f),
        "adam",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bit_identical_to_torch_foreach_and_for_loop(case):
    opt, make_torch, kind = CASES[case]
    params, opt_state = run_functional(opt)
    for foreach in (True, False):
        torch_params, torch_state = run_torch(make_torch, foreach)
        assert_matches_torch(params, opt_state, torch_params, torch_state, kind)
    # the run did move the params (a no-op optimizer would not pass as "identical")
    assert not torch.equal(params["0.weight"], initial_params()["0.weight"])


SCHEDULED = {
    "adamw": (
        lambda lr: O.adamw(lr),
        lambda m, f: torch.optim.AdamW(m.parameters(), lr=1.0, foreach=f),
        "adam",
    ),
    "adam_weight_decay": (
        lambda lr: O.adam(lr, weight_decay=0.05),
        lambda m, f: torch.optim.Adam(m.parameters(), lr=1.0, weight_decay=0.05, foreach=f),
        "adam",
    ),
    "sgd_nesterov": (
        lambda lr: O.sgd(lr, momentum=0.9, nesterov=True),
        lambda m, f: torch.optim.SGD(m.parameters(), lr=1.0, momentum=0.9, nesterov=True, foreach=f),
        "sgd",
    ),
}


@pytest.mark.parametrize("case", list(SCHEDULED))
def test_schedule_drives_the_right_update(case):
    make, make_torch, kind = SCHEDULED[case]
    sched = S.warmup_cosine(2e-2, warmup_steps=10, total_steps=STEPS, start_factor=0.1)
    params, opt_state = run_functional(make(sched))
    # LambdaLR with base lr 1.0 sets lr = 1.0 * sched(k) (exact) before update k.
    for foreach in (True, False):
        torch_params, torch_state = run_torch(make_torch, foreach, lr_lambda=lambda k: sched(k))
        assert_matches_torch(params, opt_state, torch_params, torch_state, kind)
    # an off-by-one in the count would be caught: shifting the schedule changes the bits
    shifted, _ = run_functional(make(lambda k: sched(k + 1)))
    assert not torch.equal(shifted["0.weight"], params["0.weight"])


@pytest.mark.parametrize(
    "make,make_torch,kind",
    [
        (O.adamw(1e-2), lambda m, f: torch.optim.AdamW(m.parameters(), lr=1e-2 * 0.5, foreach=f), "adam"),
        (
            O.sgd(0.05, momentum=0.9),
            lambda m, f: torch.optim.SGD(m.parameters(), lr=0.05 * 0.5, momentum=0.9, foreach=f),
            "sgd",
        ),
    ],
    ids=["adamw", "sgd_momentum"],
)
def test_lr_scale_multiplies_the_lr(make, make_torch, kind):
    params, opt_state = run_functional(make, lr_scale=0.5)
    torch_params, torch_state = run_torch(make_torch, True)
    assert_matches_torch(params, opt_state, torch_params, torch_state, kind)


# --------------------------------------------------------------------------
# purity


def fingerprint(tree):
    """Every tensor reachable from tree: (the object, a clone of its values, its version counter)."""
    out = []

    def walk(node):
        if isinstance(node, torch.Tensor):
            out.append((node, node.clone(), node._version))
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(tree)
    return out


def assert_untouched(prints) -> None:
    for tensor, copy, version in prints:
        assert tensor._version == version
        assert torch.equal(tensor, copy)


PURE_CASES = {
    "sgd_nesterov_decay": O.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "sgd_plain": O.sgd(0.05),
    "sgd_momentum": O.sgd(0.05, momentum=0.9, dampening=0.1),
    "adam_weight_decay": O.adam(1e-2, weight_decay=0.1),
    "adamw": O.adamw(1e-2),
    "groups": O.multi_transform(
        {"backbone": O.frozen(), "head": O.adamw(1e-2)}, O.label_by_prefix({"0.": "backbone"}, "head")
    ),
}


@pytest.mark.parametrize("case", list(PURE_CASES))
def test_update_never_writes_into_its_inputs(case):
    opt = PURE_CASES[case]
    for steps in (0, 3):  # the first update (fresh state, momentum buffers created) and a later one
        params, opt_state = run_functional(opt, steps=steps)
        grads = grads_at(params, BATCHES[steps], opt.trains)
        state_before = repr({k: v for k, v in opt_state.items() if not isinstance(v, dict)})
        prints = fingerprint([params, grads, opt_state])
        new_params, new_state = opt.update(grads, opt_state, params)
        assert_untouched(prints)
        assert repr({k: v for k, v in opt_state.items() if not isinstance(v, dict)}) == state_before
        assert new_params is not params and new_state is not opt_state
        assert list(new_params) == list(params)
        for name in params:
            if name in grads:
                assert new_params[name] is not params[name]
                assert not torch.equal(new_params[name], params[name])
            else:
                assert new_params[name] is params[name]
        # nothing in the new state aliases a gradient the caller may reuse
        grad_ptrs = {g.data_ptr() for g in grads.values()}
        assert not any(t.data_ptr() in grad_ptrs for t, _, _ in fingerprint(new_state))


def test_params_without_gradients_come_back_unchanged():
    opt = O.adamw(1e-2)
    params = initial_params()
    opt_state = opt.init(params)
    grads = {"2.weight": torch.ones_like(params["2.weight"])}
    new_params, new_state = opt.update(grads, opt_state, params)
    for name in params:
        same = name != "2.weight"
        assert (new_params[name] is params[name]) == same
        assert (new_state["exp_avg"][name] is opt_state["exp_avg"][name]) == same
    assert new_state["count"] == 1 and opt_state["count"] == 0


def test_updates_run_without_autograd():
    params = {n: p.requires_grad_(True) for n, p in initial_params().items()}
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    opt = O.adamw(1e-2)
    new_params, _ = opt.update(grads, opt.init(params), params)
    assert all(p.grad_fn is None and not p.requires_grad for p in new_params.values())


# --------------------------------------------------------------------------
# frozen params and param groups


def test_frozen_returns_the_same_tensors():
    opt = O.frozen()
    params = initial_params()
    assert opt.init(params) == {}
    assert not opt.trains("0.weight")
    new_params, state = opt.update({}, {}, params)
    assert new_params is not params
    assert all(new_params[n] is params[n] for n in params)
    assert state == {}
    assert O.frozen() == O.frozen()


def test_frozen_backbone_and_trained_head_match_torch():
    opt = O.multi_transform(
        {"backbone": O.frozen(), "head": O.adamw(1e-2)}, O.label_by_prefix({"0.": "backbone"}, default="head")
    )
    assert [opt.trains(n) for n in initial_params()] == [False, False, True, True]
    start = initial_params()
    params, opt_state = run_functional(opt, params=start)
    assert params["0.weight"] is start["0.weight"] and params["0.bias"] is start["0.bias"]
    assert opt_state["backbone"] == {}

    def make_torch(model, foreach):
        for p in model[0].parameters():
            p.requires_grad_(False)
        return torch.optim.AdamW(model[2].parameters(), lr=1e-2, foreach=foreach)

    torch_params, torch_state = run_torch(make_torch, True)
    assert_same_tensors(params, torch_params, "params")
    assert_same_tensors(
        opt_state["head"]["exp_avg"], {n: s["exp_avg"] for n, s in torch_state.items()}, "exp_avg"
    )


def test_each_group_uses_its_own_lr():
    # SmartCash's split: a slow backbone and a fast head, as torch param groups
    opt = O.multi_transform(
        {"backbone": O.adamw(1e-3), "head": O.adamw(S.cosine(1e-2, STEPS), weight_decay=0.05)},
        {"0.weight": "backbone", "0.bias": "backbone", "2.weight": "head", "2.bias": "head"},
    )
    params, opt_state = run_functional(opt)
    head_sched = S.cosine(1e-2, STEPS)

    def make_torch(model, foreach):
        return torch.optim.AdamW(
            [
                {"params": model[0].parameters(), "lr": 1e-3},
                {"params": model[2].parameters(), "lr": 1.0, "weight_decay": 0.05},
            ],
            foreach=foreach,
        )

    lambdas = [lambda k: 1.0, lambda k: head_sched(k)]
    for foreach in (True, False):
        torch_params, torch_state = run_torch(make_torch, foreach, lr_lambda=lambdas)
        assert_same_tensors(params, torch_params, "params")
        for label in ("backbone", "head"):
            mine = opt_state[label]["exp_avg_sq"]
            assert_same_tensors(mine, {n: torch_state[n]["exp_avg_sq"] for n in mine}, f"{label} exp_avg_sq")


def test_mixed_optimizers_per_group_match_separate_torch_optimizers():
    opt = O.multi_transform(
        {"slow": O.sgd(0.02, momentum=0.9), "fast": O.adam(5e-3)},
        lambda name: "slow" if name.startswith("0.") else "fast",
    )
    params, opt_state = run_functional(opt)

    class Both(torch.optim.Optimizer):  # only to drive two torch optimizers from run_torch
        def __init__(self, model, foreach):
            self.parts = [
                torch.optim.SGD(model[0].parameters(), lr=0.02, momentum=0.9, foreach=foreach),
                torch.optim.Adam(model[2].parameters(), lr=5e-3, foreach=foreach),
            ]
            super().__init__(list(model.parameters()), {})
            self.state = {**self.parts[0].state}

        def step(self, closure=None):
            for part in self.parts:
                part.step()
            self.state = {**self.parts[0].state, **self.parts[1].state}

    torch_params, torch_state = run_torch(Both, True)
    assert_same_tensors(params, torch_params, "params")
    assert_same_tensors(
        opt_state["slow"]["momentum_buffer"],
        {n: torch_state[n]["momentum_buffer"] for n in ("0.weight", "0.bias")},
        "momentum_buffer",
    )
    assert_same_tensors(
        opt_state["fast"]["exp_avg"], {n: torch_state[n]["exp_avg"] for n in ("2.weight", "2.bias")}, "exp_avg"
    )


def test_label_by_prefix_takes_the_longest_match():
    labels = O.label_by_prefix({"backbone.": "backbone", "backbone.adapter.": "head"}, default="other")
    assert labels("backbone.stem.weight") == "backbone"
    assert labels("backbone.adapter.weight") == "head"
    assert labels("neck.weight") == "other"
    assert labels == O.label_by_prefix({"backbone.adapter.": "head", "backbone.": "backbone"}, "other")


# --------------------------------------------------------------------------
# serializable state


def assert_plain(node) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            assert isinstance(key, str)
            assert_plain(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            assert_plain(value)
    else:
        assert node is None or isinstance(node, (torch.Tensor, int, float, str, bool)), type(node)


def test_state_round_trips_through_torch_save_and_resumes_exactly():
    opt = O.multi_transform(
        {
            "backbone": O.sgd(S.step(0.05, 20), momentum=0.9, nesterov=True),
            "head": O.adamw(S.warmup_cosine(1e-2, 5, STEPS)),
            "unused": O.adam(1e-3),
        },
        O.label_by_prefix({"0.": "backbone", "2.": "head"}, default="unused"),
    )
    half = STEPS // 2
    params, opt_state = run_functional(opt, steps=half)
    assert_plain(opt_state)

    buffer = io.BytesIO()
    torch.save({"params": params, "opt_state": opt_state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["opt_state"]["head"]["count"] == half

    rest = BATCHES[half:]
    in_memory = run_functional(opt, steps=half, params=params, opt_state=opt_state, batches=rest)
    resumed = run_functional(opt, steps=half, params=loaded["params"], opt_state=loaded["opt_state"], batches=rest)
    assert_same_tensors(in_memory[0], resumed[0], "params")
    for label in ("backbone", "head"):
        for key, value in in_memory[1][label].items():
            if isinstance(value, dict):
                assert_same_tensors(value, resumed[1][label][key], f"{label}.{key}")
            else:
                assert value == resumed[1][label][key]


# --------------------------------------------------------------------------
# bad arguments


def one_param():
    return {"w": torch.zeros(2)}


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: O.sgd(-0.1), "sgd: lr must be"),
        (lambda: O.adamw(float("nan")), "adamw: lr must be"),
        (lambda: O.adam("1e-3"), "adam: lr must be"),
        (lambda: O.sgd(0.1, momentum=-0.9), "momentum"),
        (lambda: O.sgd(0.1, weight_decay=-1.0), "weight_decay"),
        (lambda: O.sgd(0.1, nesterov=True), "nesterov=True needs momentum > 0"),
        (lambda: O.sgd(0.1, momentum=0.9, dampening=0.1, nesterov=True), "dampening == 0"),
        (lambda: O.adam(1e-3, betas=(1.0, 0.999)), r"betas\[0\] must be a number in \[0, 1\)"),
        (lambda: O.adamw(1e-3, betas=(0.9, -0.1)), r"betas\[1\]"),
        (lambda: O.adamw(1e-3, betas=0.9), "betas must be a pair"),
        (lambda: O.adamw(1e-3, eps=-1e-8), "eps"),
        (lambda: O.adamw(1e-3, weight_decay=-0.01), "weight_decay"),
        (lambda: O.multi_transform({}, {}), "transforms must be a non-empty mapping"),
        (lambda: O.multi_transform({"a": "adamw"}, {}), r"transforms\['a'\] must be an Optimizer"),
        (lambda: O.multi_transform({"a": O.frozen()}, 3), "labels must be"),
        (
            lambda: O.multi_transform({"a": O.frozen()}, {"w": "b"}).init(one_param()),
            r"param 'w' has label 'b', which is not one of the transforms' labels \['a'\]",
        ),
        (lambda: O.multi_transform({"a": O.frozen()}, lambda n: "zz").trains("w"), r"param 'w' has label 'zz'"),
        (lambda: O.multi_transform({"a": O.frozen()}, {}).init(one_param()), "no label for param 'w'"),
        (lambda: O.label_by_prefix({"0.": 1}, "head"), "str labels"),
        (lambda: O.label_by_prefix({"0.": "a"}, None), "default"),
        (
            lambda: O.adamw(1e-3).update({"v": torch.zeros(2)}, O.adamw(1e-3).init(one_param()), one_param()),
            r"gradients for names that are not params: \['v'\]",
        ),
        (
            lambda: O.sgd(1e-3).update({"v": torch.zeros(2)}, {"count": 0}, one_param()),
            "not params",
        ),
        (
            lambda: O.adamw(1e-3).update({"w": torch.zeros(2)}, O.adamw(1e-3).init({}), one_param()),
            r"opt_state\['exp_avg'\] has no entry for param 'w'",
        ),
    ],
)
def test_bad_arguments_raise_clear_value_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_switch_freezes_then_trains_and_resumes_in_the_right_phase(tmp_path):
    """``switch`` keeps a group frozen (no gradient computed) for ``at`` updates, then trains it;
    a checkpoint taken before the switch resumes to the same bits."""
    import smartcash_fn as sf
    from smartcash_fn.optim import switch
    from smartcash_fn.step import _trainable

    def make():
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    labels = sf.label_by_prefix({"0.": "backbone"}, default="head")
    opt = sf.multi_transform({"backbone": switch(3, sf.frozen(), sf.adamw(1e-2)), "head": sf.adamw(1e-2)}, labels)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g)
    step = sf.make_step(sf.classification_loss)
    s0 = sf.TrainState.create(make, opt, seed=0)
    states = [s0]
    for _ in range(6):
        assert _trainable(states[-1]) == (("2.weight", "2.bias") if len(states) <= 3 else tuple(s0.params))
        states.append(step(states[-1], (x, y)))
    assert all(s.params["0.weight"] is s0.params["0.weight"] for s in states[:4])
    assert not torch.equal(states[4].params["0.weight"], s0.params["0.weight"])
    assert opt.lrs(states[2].opt_state, 1.0) == {"head": 0.01}
    assert opt.lrs(states[-1].opt_state, 0.5) == {"backbone": 0.005, "head": 0.005}
    sf.save(states[2], tmp_path / "early.pt")
    again = sf.load(tmp_path / "early.pt", like=s0)
    for _ in range(4):
        again = step(again, (x, y))
    assert sf.verify(again, states[-1]) is None
    with pytest.raises(ValueError, match="switch: at"):
        switch(-1, sf.frozen(), sf.adamw(1e-3))


def test_lrs_at_is_the_rate_each_update_uses_in_groups_and_phases():
    # a frozen phase then a warm-up, beside a cosine group: lrs_at(k) is what lrs said before update k
    opt = O.multi_transform(
        {"backbone": O.switch(3, O.frozen(), O.adamw(S.warmup_cosine(1e-3, warmup_steps=2, total_steps=5))),
         "head": O.sgd(S.cosine(1e-2, STEPS), momentum=0.9)},
        {"0.weight": "backbone", "0.bias": "backbone", "2.weight": "head", "2.bias": "head"},
    )
    params = initial_params()
    opt_state = opt.init(params)
    for k, batch in enumerate(BATCHES[:STEPS]):
        said = opt.lrs(opt_state, 0.5)
        at = opt.lrs_at(k, 0.5)
        assert {label: at[label] for label in said} == said, k  # lrs leaves out a phase not begun yet
        assert at["head"] == S.cosine(1e-2, STEPS)(k) * 0.5
        assert at.get("backbone") == (None if k < 3 else S.warmup_cosine(1e-3, 2, 5)(k - 3) * 0.5)
        params, opt_state = opt.update(grads_at(params, batch, opt.trains_in(opt_state)), opt_state, params, 0.5)
    assert O.adamw(1e-3).lrs_at(7) == {"": 1e-3} and O.frozen().lrs_at(7) == {}
