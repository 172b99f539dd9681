"""Data-parallel training: the pure pieces directly, and two gloo processes under ``torchrun`` on the tiny recipe.

The ``torchrun`` runs share one uninterrupted two-process run (module
fixture); each is ``python -m torch.distributed.run --nproc-per-node 2
--master-port <free port> -m smartcash_fn train ...`` with ``tests/`` on the
path for the recipe's helper callbacks (``tests/_ddp_helpers.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch

from smartcash_fn import distributed
from smartcash_fn.cli import main
from smartcash_fn.data import LoaderData, Shard, TensorData, epoch_order, sharded
from smartcash_fn.errors import DataError
from smartcash_fn.loop import fit, validate
from smartcash_fn.replay import difference
from smartcash_fn.run.build import build
from smartcash_fn.run.recipe import load
from smartcash_fn.run.resume import state_in
from smartcash_fn.run.folders import find_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny.toml"
TESTS = Path(__file__).resolve().parent
PARAMS_TOLERANCE = 1e-5
"""Max abs difference of the final params, 2 processes x 16 vs 1 process x 32 (measured ~1e-7: the loss
mean and the gradient sum are added in another order)."""


# --------------------------------------------------------------------------- pure pieces


@pytest.mark.parametrize("n,world,bs", [(256, 2, 16), (10, 3, 2), (7, 2, 3), (5, 4, 1)])
def test_training_shards_together_are_the_single_process_batches(n, world, bs):
    order = epoch_order(0, 3, n, True)
    shards = [Shard(r, world).take(order) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == Shard(0, world).size(n) == -(-n // world)
    per = len(shards[0])
    padded = torch.cat([order] * world)[: per * world]
    for b in range(-(-per // bs)):  # the ranks' batch b together is the single-process batch b of bs * world
        together = torch.cat([s[b * bs:(b + 1) * bs] for s in shards])
        assert sorted(together.tolist()) == sorted(padded[b * bs * world:(b + 1) * bs * world].tolist())


@pytest.mark.parametrize("n,world", [(64, 2), (10, 3), (2, 4)])
def test_validation_blocks_cover_the_order_once_in_order(n, world):
    order = torch.arange(n)
    blocks = [Shard(r, world, even=False).take(order) for r in range(world)]
    assert torch.equal(torch.cat(blocks), order)
    assert [len(b) for b in blocks] == [Shard(r, world, even=False).size(n) for r in range(world)]


def test_shard_is_checked_and_sharded_data_takes_its_part():
    with pytest.raises(DataError):
        Shard(2, 2)
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    whole = TensorData((x, y), 2, shuffle=False)
    assert sharded(whole, Shard(0, 1)) is whole
    mine = sharded(whole, Shard(1, 2))
    assert len(mine) == 3
    assert [b[1].tolist() for b in mine.batches(0, 0)] == [[1, 3], [5, 7], [9]]
    assert [b[1].tolist() for b in mine.batches(0, 0, start=2)] == [[9]]
    loader = sharded(LoaderData(list(range(10)), 2, shuffle=False), Shard(1, 2))
    assert [[k[2] for k in keys] for keys in loader.batch_keys(0, 0)] == [[1, 3], [5, 7], [9]]
    with pytest.raises(DataError, match=r"cannot shard a object across 2 processes: .* wrap your batches in Batches"):
        sharded(object(), Shard(0, 2))


def test_bucket_plan_groups_consecutive_names_of_one_kind_under_the_cap():
    plan = distributed.bucket_plan
    assert plan([("a", 40, "f"), ("b", 40, "f"), ("c", 40, "f")], 100) == (("a", "b"), ("c",))
    assert plan([("a", 40, "f"), ("b", 40, "f"), ("c", 40, "f")], 100, 50) == (("a",), ("b", "c"))  # a small first
    assert plan([("a", 40, "f"), ("b", 40, "h"), ("c", 40, "h")], 100) == (("a",), ("b", "c"))
    assert plan([("big", 500, "f"), ("a", 1, "f")], 100) == (("big",), ("a",))
    assert plan([], 100) == ()
    mb = 2**20  # a 25 MB cap: a ResNet-sized gradient set is a handful of buckets, not one per tensor
    sizes = [(f"p{i}", 4 * mb, "f") for i in range(30)]
    assert len(plan(sizes, 25 * mb)) == 5


def test_the_overlapped_layout_puts_the_riders_in_the_first_bucket_or_in_their_own():
    f, h = (torch.float32, torch.device("cpu")), (torch.float64, torch.device("cpu"))
    grads = (("head.w", 10, 4, f), ("body.w", 300_000, 4, f), ("stem.w", 5, 4, f))  # reverse parameter order
    layout = distributed._layout(grads, (("metric:loss", 1, 4, f),), (("buffer:bn.mean", 3, 4, f),
                                                                      ("buffer:x", 2, 8, h)), 25 * 2**20, 2**20)
    first, second, odd = layout.buckets
    w = layout.where
    assert [w[k] for k in ("head.w", "metric:loss", "buffer:bn.mean")] == [(0, 0, 10), (0, 10, 1), (0, 11, 3)]
    assert (first.grads, first.mean_end, sum(first.sizes)) == (1, 11, 14)  # 1 MB cap: head alone; loss averaged
    assert layout.overlaps and not distributed._layout(grads[:1], (), (), 25 * 2**20, 2**20).overlaps
    assert [w[k] for k in ("body.w", "stem.w")] == [(1, 0, 300_000), (1, 300_000, 5)] and second.grads == 2
    assert w["buffer:x"] == (2, 0, 2) and odd.dtype == torch.float64 and (odd.grads, odd.mean_end) == (0, 0)


def test_the_overlapped_all_reduce_gives_the_bits_of_the_update_time_one(tmp_path):
    """Two gloo processes: the all-reduce launched during the backward pass (buckets of a 1 MB first cap, a
    BatchNorm, an unused layer) against the one at the update, plain, under accumulate(2) and under fp16()."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(TESTS / "_ddp_helpers.py"), str(tmp_path / "out.pt")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    r = torch.load(tmp_path / "out.pt")
    for a, b in (("overlap", "update"), ("overlap_acc", "update_acc"), ("overlap_fp16", "update_fp16")):
        for part in ("params", "buffers", "metrics"):
            assert r[a][part].keys() == r[b][part].keys()
            assert all(torch.equal(r[a][part][k], r[b][part][k]) for k in r[a][part]), (a, part)
        assert r[a]["extras"] == r[b]["extras"] and distributed.ACCUMULATING not in r[a]["extras"]
    assert not all(torch.equal(r["overlap"]["params"][k], r["overlap_acc"]["params"][k]) for k in r["overlap"]["params"])
    launched = r["overlap"]["launches"]
    # 2 buckets a step: the last layers' during the backward pass, the other (with the unused layer) after it
    assert launched == [True, False] * 4
    assert not any(r["update"]["launches"]) and not any(r["overlap_acc"]["launches"])  # accumulate: at the update
    # once per update: its 2 buckets (those of the overlapped plan, filled after the fact) for each of 2 updates
    assert len(r["overlap_acc"]["launches"]) == len(r["update_acc"]["launches"]) == 2 * 2
    assert "changed the gradient of" in r["refused"] and "overlap=False" in r["refused"]
    assert r["overlap_fp16_skipped"] == r["update_fp16_skipped"] == 0.0  # fp16 updated: a scale of 1 does not overflow


def test_regrouping_keeps_the_sample_position_and_the_epochs_running_means():
    from smartcash_fn.state import Progress
    state = build(load(TINY), quiet=True).template
    two = state.replace(progress=Progress(epoch=1, step=11, batch=3), running={"loss": torch.tensor(1.5)},
                        callbacks={"distributed": {"world": 2, "global_batch": 32}})
    one, note = distributed.regrouped(two, global_batch=16, size=1)
    assert one.progress.batch == 6 and float(one.running["loss"]) / 6 == pytest.approx(1.5 / 3)
    assert "trained on 2 processes and now goes on on 1" in note and "from sample 96 of epoch 2" in note
    alone = two.replace(callbacks={}, progress=Progress(epoch=1, step=19, batch=3))  # a 1 x 16 run records no world
    assert distributed.regrouped(alone, 32, 2) == (alone, None)  # without single_batch nothing is known of it
    back, note = distributed.regrouped(alone, 32, 2, single_batch=16)
    assert back.progress.batch == 1 and float(back.running["loss"]) == pytest.approx(1.5 / 3)  # sample 48 -> 32
    assert "from sample 32 of epoch 2 (it stopped at 48)" in note
    early = alone.replace(progress=Progress(epoch=1, step=17, batch=1))
    assert distributed.regrouped(early, 32, 2, single_batch=16)[0].running == {}  # batch 0: nothing trained yet
    same = two.replace(callbacks={"distributed": {"world": 1, "global_batch": 16}})
    assert distributed.regrouped(same, 16, 1) == (same, None)


def test_a_resume_on_another_world_size_keeps_the_epochs_mean(capsys):
    from smartcash_fn.state import Progress
    built = build(load(TINY), quiet=True)
    start = next(c for c in built.loop.callbacks if c.name == "distributed_replicas").fn
    two = built.template.replace(progress=Progress(epoch=0, step=3, batch=3), running={"loss": torch.tensor(6.0)},
                                 callbacks={"distributed": {"world": 2, "global_batch": 64}})
    one = start(two)  # world 1, 32 a batch
    assert one.progress.batch == 6 and float(one.running["loss"]) == 12.0
    assert one.callbacks["distributed"] == {"world": 1, "global_batch": 32}
    assert capsys.readouterr().err.count("note: this run was trained on 2 processes") == 1


def test_notes_are_printed_by_rank_0_only(monkeypatch):
    import io

    from smartcash_fn.report.console import console_logging
    from smartcash_fn.run.commands import note
    said = io.StringIO()
    with console_logging(said):
        monkeypatch.setenv("RANK", "1")
        note("from rank 1")
        monkeypatch.setenv("RANK", "0")
        note("from rank 0")
        monkeypatch.delenv("RANK")
        note("alone")
    assert said.getvalue() == "note: from rank 0\nnote: alone\n"


def test_sync_bn_is_refused_on_the_cpu_and_converts_for_cuda():
    from smartcash_fn.errors import RecipeError
    from smartcash_fn.optim import adamw
    from smartcash_fn.run.build import make_model_factory, make_data, with_sync_bn
    from smartcash_fn.state import TrainState
    from smartcash_fn.step import make_step
    recipe = load(TINY, ['model.use="cnn"', 'model.params={channels = [4, 8]}', 'data.use="synthetic_images"',
                         'data.params={samples = 64, val_samples = 8, size = 8, classes = 3}', "train.sync_bn=true"])
    factory = make_model_factory(recipe, make_data(recipe)[2])
    assert with_sync_bn(recipe, factory, 1, torch.device("cpu")) is factory  # one process: nothing to synchronise
    with pytest.raises(RecipeError, match=r"train\.sync_bn: SyncBatchNorm runs on CUDA devices only"):
        with_sync_bn(recipe, factory, 2, torch.device("cpu"))
    synced = with_sync_bn(recipe, factory, 2, torch.device("cuda"))  # the conversion only: no GPU needed
    a, b = (TrainState.create(f, adamw(1e-2), seed=0) for f in (factory, synced))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in b.model.modules())
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in a.model.modules())
    assert a.params.keys() == b.params.keys() and a.buffers.keys() == b.buffers.keys()  # checkpoints interchange
    step = make_step(lambda apply, batch: torch.nn.functional.cross_entropy(apply(batch[0]), batch[1]))
    batch = (torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]))
    a, b = step(a, batch), step(b.replace(params=a.params, buffers=a.buffers), batch)  # no group: plain BatchNorm
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert all(torch.equal(a.buffers[k], b.buffers[k]) for k in a.buffers)


@pytest.mark.parametrize("world", [2, 3])
def test_batches_shard_whole_batches_and_together_are_the_sequence(world):
    from smartcash_fn.data import Batches
    seq = [(torch.full((2,), float(i)),) for i in range(7)]
    calls = []

    def stream(epoch):
        calls.append(epoch)
        return iter(seq)

    per = -(-7 // world)
    for data in (Batches(seq), Batches(stream, length=7)):
        ranks = [sharded(data, Shard(r, world)) for r in range(world)]
        assert {len(r) for r in ranks} == {per}
        taken = [[int(b[0][0]) for b in r.batches(0, 4)] for r in ranks]
        rounds = [[taken[r][b] for r in range(world)] for b in range(per)]  # the ranks' batch b together
        assert sum(rounds, []) == (list(range(7)) * 2)[:per * world]
        assert [int(b[0][0]) for b in ranks[1].batches(0, 4, start=1)] == taken[1][1:]  # a resume skips
    assert set(calls) == {4}
    blocks = [[int(b[0][0]) for b in sharded(Batches(seq), Shard(r, world, even=False)).batches(0, 0)]
              for r in range(world)]
    assert sum(blocks, []) == list(range(7))


def test_without_a_process_group_every_piece_is_the_identity():
    assert distributed.world() == distributed.World() and not distributed.active()
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.broadcast_object("x") == "x" and distributed.gather_objects(1) == [1]
    assert distributed.local_device("cuda") == torch.device("cuda")
    a = {"w": torch.arange(4.0)}
    assert distributed.digest64(a) == distributed.digest64({"w": torch.arange(4.0)})
    assert distributed.digest64(a) != distributed.digest64({"w": torch.arange(4.0) + 1e-7})


def test_build_adds_nothing_on_one_process():
    built = build(load(TINY), quiet=True)
    assert "all_reduce" not in built.step_text
    assert not any(c.name.startswith(("agree", "replicas_check")) for c in built.loop.callbacks)
    state = fit(built.template, attrs.evolve(built.loop, epochs=1))
    assert "distributed" not in state.callbacks  # a single-process run records no world


# --------------------------------------------------------------------------- torchrun


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cwd: Path, *args: str, nproc: int = 2, restarts: int = 0, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(free_port()), "--max-restarts", str(restarts), "--monitor-interval", "0.1", "-m", "smartcash_fn", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def recipe_file(folder: Path, *extra: str) -> Path:
    """The tiny recipe with the global batch kept (2 x 16 = 32), step checkpoints, no slow writers, and ``extra`` tables."""
    text = TINY.read_text()
    text = text.replace("[data]\n", "[data]\nglobal_batch = true\n")
    text = text.replace("[checkpoint]\n", "[checkpoint]\nevery_steps = 3\n")
    text = text.replace("tensorboard = true", "tensorboard = false").replace("plots = true", "plots = false")
    path = folder / "tiny.toml"
    path.write_text(text + "\n" + "\n".join(extra))
    return path


def digests_table(folder: Path) -> str:
    return f'[[callbacks]]\nuse = "_ddp_helpers:rank_digests"\nfolder = "{folder}"\n'


def final_state(run_dir: Path, recipe: Path):
    found = find_checkpoint(run_dir)
    return state_in(found, build(load(recipe), quiet=True).template)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """One uninterrupted two-process run: its folder, recipe and the per-rank digests."""
    tmp = tmp_path_factory.mktemp("ddp")
    recipe = recipe_file(tmp, digests_table(tmp / "digests"))
    out = torchrun(tmp, "train", str(recipe), "--out", "run", "--quiet")
    assert out.returncode == 0, out.stdout + out.stderr
    return tmp, recipe, out


def test_two_processes_make_one_run(two):
    tmp, recipe, out = two
    assert sorted(p.name for p in tmp.iterdir()) == ["digests", "run", "tiny.toml"]
    ckpts = sorted(p.name for p in (tmp / "run" / "checkpoints").iterdir())
    assert ckpts == ["best.pt", "epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt", "last.pt",
                     "step-00000003.pt", "step-00000006.pt", "step-00000009.pt", "step-00000012.pt",
                     "step-00000015.pt", "step-00000018.pt", "step-00000021.pt", "top-epoch-0003.pt"]
    assert out.stderr.count("finished 3 epochs (24 steps) in ") == 1  # rank 0 speaks; 8 batches of 16 per rank
    assert out.stderr.count("training tiny: 3 epochs of 8 batches on each of 2 processes -> run\n") == 1
    state = final_state(tmp / "run", recipe)
    assert state.callbacks["distributed"] == {"world": 2, "global_batch": 32}


def test_params_agree_on_every_rank_after_every_epoch(two):
    tmp = two[0]
    ranks = [[json.loads(line) for line in (tmp / "digests" / f"rank-{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert [r["epoch"] for r in ranks[0]] == [1, 2, 3]
    assert [r["digest"] for r in ranks[0]] == [r["digest"] for r in ranks[1]]


def test_two_processes_match_one_with_the_same_global_batch(two):
    tmp, recipe, _ = two
    built = build(load(recipe), quiet=True)
    state = fit(built.template, attrs.evolve(built.loop, callbacks=()))  # no digests from this process
    dist_state = final_state(tmp / "run", recipe)
    assert state.progress.step == dist_state.progress.step == 24
    worst = max(float((state.params[k] - dist_state.params[k]).abs().max()) for k in state.params)
    assert worst < PARAMS_TOLERANCE, worst
    for one, two_ in zip(state.history.epochs, dist_state.history.epochs):  # the global batch's loss is logged
        assert two_["train/loss"] == pytest.approx(one["train/loss"], rel=1e-5)


def test_gathered_validation_metrics_equal_one_process_on_the_same_params(two):
    tmp, recipe, _ = two
    built = build(load(recipe), quiet=True)
    for epoch in (1, 2, 3):
        found = find_checkpoint(tmp / "run" / "checkpoints" / f"epoch-{epoch:04d}.pt")
        state = state_in(found, built.template)
        whole = validate(state, built.loop.validation)
        recorded = {k: v for k, v in state.history.last().items() if k.startswith("val/")}
        assert recorded.keys() == whole.keys() == {"val/loss", "val/acc"}
        for k in whole:
            assert recorded[k] == pytest.approx(whole[k], rel=1e-12, abs=1e-12)


def test_a_mid_epoch_checkpoint_resumes_bit_for_bit_on_two_processes(two, tmp_path):
    tmp, recipe, _ = two
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp / "run" / "checkpoints" / "step-00000009.pt", tmp_path / "b" / "checkpoints")
    shutil.copy(tmp / "run" / "recipe.toml", tmp_path / "b")
    (tmp_path / "b" / "checkpoints" / "last.pt").write_bytes(b"torn")  # skipped, with a note
    out = torchrun(tmp_path, "resume", "b", "--quiet", "--trust-code")  # the probe
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr.count("resuming tiny at epoch 2/3, batch 2/8 (step 9) on each of 2 processes -> b\n") == 1
    assert out.stderr.count("note: skipped") == 1, out.stderr  # rank 0 speaks, not every rank
    a, b = final_state(tmp / "run", recipe), final_state(tmp_path / "b", recipe)
    for part in ("params", "buffers", "opt_state", "progress"):
        assert difference(getattr(a, part), getattr(b, part), part) is None, part


def test_a_two_process_checkpoint_goes_on_in_one_process_from_the_same_sample(two, tmp_path, capsys):
    tmp, recipe, _ = two
    ckpt = tmp / "run" / "checkpoints" / "step-00000009.pt"  # epoch 1, batch 1 of 8 (16 per rank, 32 together)
    assert main(["resume", str(ckpt), "--set", "callbacks=[]", "--out", str(tmp_path / "one"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "trained on 2 processes and now goes on on 1" in err and "from sample 32 of epoch 2" in err
    assert "bits will differ" in err
    state = final_state(tmp_path / "one", recipe)
    assert state.progress.epoch == 3 and state.callbacks["distributed"] == {"world": 1, "global_batch": 32}


def test_an_exception_on_rank_1_stops_both_ranks_and_names_it(tmp_path):
    recipe = recipe_file(tmp_path, '[[callbacks]]\nuse = "_ddp_helpers:fail_on_rank"\nrank = 1\nstep = 2\n')
    out = torchrun(tmp_path, "train", str(recipe), "--out", "run", "--quiet", timeout=120)
    assert out.returncode != 0
    assert "error: rank 1 of 2 failed: RuntimeError: boom at step 2" in out.stderr
    assert "Connection closed by peer" in out.stderr  # rank 0 stopped at its next collective, not at a timeout


def test_a_nan_on_rank_1_stops_both_ranks_in_the_same_step(tmp_path):
    recipe = recipe_file(tmp_path)
    text = recipe.read_text().replace('loss = "cross_entropy"', 'loss = "_ddp_helpers:nan_loss_on_rank"\n'
                                      'loss_params = {rank = 1, call = 4}')
    recipe.write_text(text)
    out = torchrun(tmp_path, "train", str(recipe), "--out", "run", "--quiet", timeout=120)
    assert out.returncode != 0, out.stdout + out.stderr  # a failed run: exit status 1 on both ranks
    # the 4th call of the loss (the first was the trial step): the 3rd batch of the first epoch, step 3
    assert out.stderr.count("stopped on error: non-finite loss, grad_norm at step 3 (epoch 1, batch 3)") == 1
    assert "Connection closed" not in out.stderr


@pytest.mark.slow
def test_a_killed_worker_restarts_and_ends_with_the_uninterrupted_bits(two, tmp_path):
    tmp, recipe, _ = two
    killer = f'[[callbacks]]\nuse = "_ddp_helpers:kill_once"\nmarker = "{tmp_path / "killed"}"\nrank = 1\nstep = 11\n'
    recipe2 = recipe_file(tmp_path, killer)
    out = torchrun(tmp_path, "train", str(recipe2), "--out", "run", "--quiet", restarts=1)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "killed").exists()
    assert "resuming" in out.stderr and "restart 1 of the group" in out.stderr
    a, b = final_state(tmp / "run", recipe), final_state(tmp_path / "run", recipe2)
    for part in ("params", "buffers", "opt_state", "progress"):
        assert difference(getattr(a, part), getattr(b, part), part) is None, part
