"""Determinism without holes: every draw in a step is seeded, the step counts itself, the caller's
generators are left alone, and resume/replay are bit-exact for models that draw in their forward pass
(EfficientNet's stochastic depth, ``torch.rand`` and ``torch.randperm`` in a user model)."""

from __future__ import annotations

import functools
import os

import attrs

import pytest
import toolz
import torch
from torch import nn

import smartcash_fn as sf
from smartcash_fn import checkpoint, rng
from smartcash_fn.replay import difference
from smartcash_fn.run import recipe as rc
from smartcash_fn.run.build import build
from smartcash_fn.step import claim, skipped

from conftest import make_mlp, tiny_xy
from test_rupiah_run import DEFAULT, SMALL

pytestmark = pytest.mark.usefixtures("one_thread")


class Noisy(nn.Module):
    """A user model that draws in its forward pass: ``torch.rand`` noise and a ``torch.randperm`` shuffle."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.a(x + 0.1 * torch.rand(x.shape)))
        keep = torch.randperm(h.shape[1])[: h.shape[1] // 2]
        return self.b(h.index_fill(1, keep, 0.0))


def _noisy_run():
    x, y = tiny_xy(n=24)
    template = sf.TrainState.create(Noisy, sf.adamw(1e-2), seed=3)
    loop = sf.Loop(step=sf.make_step(sf.classification_loss), data=sf.TensorData((x, y), 8), epochs=2)
    return template, loop


def _detector_run():
    sets = SMALL + ["model.params.backbone=efficientnet_b0", "data.params.train=4", "data.batch_size=2",
                    "train.epochs=2", "validation.every=0", "model.params.width=8"]
    built = build(rc.load(DEFAULT, sets=sets))
    return built.template, built.loop


def _resume_and_replay_match(template, loop, stop_at, tmp_path):
    full = sf.fit(template, loop)
    mid = sf.fit(template, loop, to_step=stop_at)
    assert mid.progress.step == stop_at
    path = checkpoint.save(mid, tmp_path / f"step-{stop_at}.pt")
    resumed = sf.fit(checkpoint.load(path, like=template), loop)
    assert sf.verify(resumed, full) is None
    replayed = sf.replay(path, loop, like=template, to_step=full.progress.step)
    assert sf.verify(replayed, full) is None
    return full


@pytest.mark.parametrize("stop_at", [1, 3], ids=["mid-epoch", "epoch-boundary"])
def test_user_model_drawing_rand_and_randperm_resumes_and_replays_bit_exact(stop_at, tmp_path):
    template, loop = _noisy_run()
    _resume_and_replay_match(template, loop, stop_at, tmp_path)


@pytest.mark.parametrize("stop_at", [1, 2], ids=["mid-epoch", "epoch-boundary"])
def test_efficientnet_detector_with_stochastic_depth_resumes_and_replays_bit_exact(stop_at, tmp_path):
    template, loop = _detector_run()
    depth = [m for m in template.model.modules() if type(m).__name__ == "StochasticDepth"]
    assert depth and any(m.p > 0 for m in depth), "efficientnet_b0 should hold active stochastic depth"
    _resume_and_replay_match(template, loop, stop_at, tmp_path)


@pytest.mark.parametrize("stop_at", [1, 2], ids=["mid-epoch", "epoch-boundary"])
def test_the_default_detector_in_bf16_resumes_and_replays_bit_exact(stop_at, tmp_path):
    # precision = "auto" is bf16 on a CPU that computes it natively; forced here, so any CPU checks the bf16 path
    sets = SMALL + ['train.precision="bf16"', "data.params.train=4", "data.batch_size=2", "train.epochs=2",
                    "validation.every=0"]
    built = build(rc.load(DEFAULT, sets=sets))
    assert built.step_text.startswith("compose(bf16(), ")
    full = _resume_and_replay_match(built.template, built.loop, stop_at, tmp_path)
    assert full.progress.step == 4


def test_the_forward_draws_do_not_depend_on_the_callers_generator():
    template, loop = _noisy_run()
    batch = next(iter(loop.data.batches(template.seed, 0, 0)))
    torch.manual_seed(1)
    a = loop.step(template, batch)
    torch.manual_seed(2)
    torch.rand(5)
    b = loop.step(template, batch)
    assert difference(dict(a.params), dict(b.params)) is None


def test_a_step_leaves_the_callers_cpu_generator_as_it_was():
    template, loop = _noisy_run()
    batch = next(iter(loop.data.batches(template.seed, 0, 0)))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loop.step(template, batch)
    assert torch.equal(torch.get_rng_state(), before)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))


def test_the_step_counts_itself_and_a_hand_written_loop_equals_fit():
    x, y = tiny_xy()
    data = sf.TensorData((x, y), 8)
    template = sf.TrainState.create(functools.partial(make_mlp, dropout=0.5), sf.adamw(1e-2), seed=5)
    step = sf.make_step(sf.classification_loss)
    state = template
    for i, batch in enumerate(data.batches(template.seed, 0, 0)):
        state = step(state, batch)
        assert state.progress.step == i + 1
    fitted = sf.fit(template, sf.Loop(step=step, data=data, epochs=1))
    assert fitted.progress.step == state.progress.step == len(data)
    assert difference(dict(state.params), dict(fitted.params)) is None
    assert difference(state.opt_state, fitted.opt_state) is None


def test_dropout_masks_differ_from_step_to_step():
    x, y = tiny_xy()
    template = sf.TrainState.create(functools.partial(make_mlp, dropout=0.5), sf.sgd(0.1), seed=5)
    step = sf.make_step(sf.classification_loss)
    batch = (x[:8], y[:8])
    first = step(template, batch)
    again = step(template, batch)
    later = step(template.replace(progress=sf.Progress(step=1)), batch)
    assert torch.equal(first.metrics["loss"], again.metrics["loss"])
    assert not torch.equal(first.metrics["loss"], later.metrics["loss"])


def test_the_loop_counts_a_plain_function_step_once_and_a_step_record_once():
    x, y = tiny_xy()
    data = sf.TensorData((x, y), 8)
    template = sf.TrainState.create(make_mlp, sf.sgd(0.1), seed=0)
    inner = sf.make_step(sf.classification_loss)

    def plain(state, batch):  # does not count: the loop does
        return state.replace(metrics={"loss": torch.tensor(0.0)})

    for step in (inner, lambda s, b: inner(s, b), plain):
        out = sf.fit(template, sf.Loop(step=step, data=data, epochs=2))
        assert out.progress.step == 2 * len(data)


def test_unseeded_step_is_available_but_off_is_the_exception():
    assert sf.make_step(sf.classification_loss).seeded
    assert not sf.make_step(sf.classification_loss, seeded=False).seeded


def test_cuda_indices_pick_the_cuda_devices_only():
    assert rng.cuda_indices([]) == ()
    assert rng.cuda_indices(["cpu", torch.device("cpu")]) == ()
    assert rng.cuda_indices(["cpu", "cuda:1", torch.device("cuda", 0), "cuda:1", 2]) == (0, 1, 2)
    assert rng.cuda_indices(["cuda"]) == (0,)
    assert rng.cuda_indices(["meta"]) == ()


def test_seeded_restores_the_cpu_generator_and_leaves_cuda_alone_when_not_named(monkeypatch):
    touched = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda i=0: touched.append(i))
    torch.manual_seed(9)
    before = torch.get_rng_state()
    with rng.seeded(0, "dropout", 1):
        inside = torch.rand(2)
    assert torch.equal(torch.get_rng_state(), before) and touched == []
    with rng.seeded(0, "dropout", 1):
        assert torch.equal(torch.rand(2), inside)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seeded_restores_the_cuda_generator_of_each_named_device():
    torch.cuda.manual_seed_all(11)
    before = torch.cuda.get_rng_state(0)
    with rng.seeded(0, "dropout", 1, devices=["cuda:0"]):
        a = torch.rand(3, device="cuda:0")
    with rng.seeded(0, "dropout", 1, devices=["cuda:0"]):
        b = torch.rand(3, device="cuda:0")
    assert torch.equal(a, b)
    assert torch.equal(torch.cuda.get_rng_state(0), before)


def test_two_emas_keep_their_averages_under_distinct_keys():
    x, y = tiny_xy()
    template = sf.TrainState.create(make_mlp, sf.sgd(0.1), seed=0)
    step = toolz.compose(sf.ema(0.5), sf.ema(0.9))(sf.make_step(sf.classification_loss))
    assert step.claims == ("ema", "ema-2")
    state = template
    for i in range(3):
        state = step(state, (x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]))
    fast, slow = state.extras["ema-2"]["params"], state.extras["ema"]["params"]
    assert set(state.extras) == {"ema", "ema-2"}
    assert not torch.equal(fast["0.weight"], slow["0.weight"])
    single = sf.ema(0.9)(sf.make_step(sf.classification_loss))
    assert single.claims == ("ema",)


def test_claim_and_skipped_are_the_transformer_authors_tools():
    base = sf.make_step(sf.classification_loss)
    key, inner = claim(base, "noise")
    key2, _ = claim(inner, "noise")
    assert (key, key2) == ("noise", "noise-2") and base.claims == ()
    state = sf.TrainState.create(make_mlp, sf.sgd(0.1), seed=0)
    assert skipped(state.replace(metrics={}), state)
    assert not skipped(state.replace(params=dict(state.params)), state)
    assert sf.skipped is skipped and sf.epoch_order is not None


def test_train_state_compares_and_hashes_by_identity():
    state = sf.TrainState.create(make_mlp, sf.sgd(0.1), seed=0)
    twin = state.replace()
    assert state == state and state != twin and not (state == twin)
    assert len({state, twin, state}) == 2


# --------------------------------------------------------------------------- environment and run.deterministic


def test_environment_notes_say_what_differs_and_nothing_when_alike():
    from smartcash_fn import environment as env
    now = env.current("cpu")
    assert env.notes(now, now) == ()
    older = {**now, "torch": "2.0.0"}
    (note,) = env.notes(older, now)
    assert "torch 2.0.0" in note and now["torch"] in note
    gpu = {**now, "device": "cuda", "device_name": "NVIDIA H200", "deterministic": True}
    text = " ".join(env.notes(gpu, now))
    assert "written on cuda, running on cpu" in text and "run.deterministic" in text
    other_gpu = {**gpu, "device_name": "NVIDIA A100", "deterministic": False}
    text = " ".join(env.notes(gpu, other_gpu))
    assert "NVIDIA H200" in text and "NVIDIA A100" in text and "are off now" in text
    assert env.notes({**now, "deterministic": True}, now) == ()  # on the CPU the kernel setting changes nothing
    assert env.notes({}, now) == ()


def test_a_checkpoint_records_its_environment_and_old_files_give_their_torch(tmp_path):
    from smartcash_fn import environment as env
    state = sf.TrainState.create(make_mlp, sf.sgd(0.1), seed=0)
    header = checkpoint.read(sf.save(state, tmp_path / "a.pt"))
    assert env.recorded_environment(header) == env.current("cpu")
    assert env.recorded_environment({"torch_version": "2.13.0"}) == {"torch": "2.13.0"}


def test_use_deterministic_costs_nothing_on_the_cpu(monkeypatch):
    from smartcash_fn import environment as env
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    env.use_deterministic(True, "cpu")
    assert torch.are_deterministic_algorithms_enabled() == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_an_op_without_a_deterministic_kernel_gets_an_error_naming_the_key():
    from smartcash_fn import environment as env
    from smartcash_fn.errors import RecipeError
    from smartcash_fn.run.build import explain_nondeterminism
    message = ("index_add_cuda_ does not have a deterministic implementation, but you set "
               "'torch.use_deterministic_algorithms(True)'. You can turn off determinism ...")
    assert env.nondeterministic_op(RuntimeError(message)) == "index_add_cuda_"
    assert env.nondeterministic_op(RuntimeError("shapes do not match")) is None

    def forward(state, params, batch):
        raise RuntimeError(message)

    recipe = rc.load(DEFAULT)
    assert recipe.run.deterministic is True
    base = sf.make_step(sf.classification_loss)
    step, _ = explain_nondeterminism(recipe, attrs.evolve(base, forward=forward), None)
    assert isinstance(step, sf.Step)
    state = sf.TrainState.create(make_mlp, sf.sgd(0.1), seed=0)
    with pytest.raises(RecipeError, match=r"run\.deterministic.*index_add_cuda_.*run\.deterministic = false"):
        step(state, tiny_xy(8))
    other, _ = explain_nondeterminism(recipe, lambda s, b: (_ for _ in ()).throw(RuntimeError("boom")), None)
    with pytest.raises(RuntimeError, match="boom"):
        other(state, None)
