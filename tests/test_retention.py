"""Checkpoint retention as pure functions: the plan comes from the folder's names and the history."""

from __future__ import annotations

from smartcash_fn.callbacks import Monitor
from smartcash_fn.retention import Plan, Policy, best_value, epoch_save, kept, retention, step_save
from smartcash_fn.state import History, Progress


def history(*values: float, key: str = "val/loss", per_epoch: int = 2) -> History:
    return History(epochs=tuple({"epoch": i, "step": per_epoch * (i + 1), key: v} for i, v in enumerate(values)))


def test_best_value_folds_the_history_with_min_delta():
    h = history(0.9, 0.5, 0.48, 0.3)
    assert best_value(h.epochs, Monitor("val/loss")) == 0.3
    assert best_value(h.epochs[:3], Monitor("val/loss", min_delta=0.05)) == 0.5   # 0.48 is not 0.05 better
    assert best_value((), Monitor("val/loss")) is None


def test_kept_reads_periodic_and_top_files_from_their_names_and_skips_the_future():
    h = history(0.9, 0.5, 0.7)
    policy = Policy(every_epochs=1, monitor=Monitor("val/loss"), top_k=2)
    files = ["epoch-0002.pt", "step-00000003.pt", "epoch-0001.pt", "top-epoch-0001.pt", "top-epoch-0002.pt",
             "epoch-0009.pt", "step-00000099.pt", "last.pt", "best.pt", "notes.txt"]
    k = kept(files, h, policy, step=6)
    assert k.periodic == ("epoch-0001.pt", "step-00000003.pt", "epoch-0002.pt")   # oldest first, by step
    assert k.top == ((0.5, "top-epoch-0002.pt"), (0.9, "top-epoch-0001.pt"))      # best first


def test_retention_plans_best_top_k_and_keep_periodic():
    policy = Policy(every_epochs=1, monitor=Monitor("val/loss"), top_k=2, keep_periodic=2)
    h = history(0.9, 0.5, 0.4)
    files = ["epoch-0001.pt", "epoch-0002.pt", "top-epoch-0001.pt", "top-epoch-0002.pt", "best.pt", "last.pt"]
    plan = retention(files, h, policy, "epoch-0003.pt", True, step=6, value=0.4)
    assert plan == Plan(write="epoch-0003.pt", links=("last.pt", "best.pt", "top-epoch-0003.pt"),
                        delete=("epoch-0001.pt", "top-epoch-0001.pt"), is_best=True)
    # an epoch saved only for its top-k place is written straight to its top file
    h = history(0.9, 0.5, 0.7)
    plan = retention(files[2:], h, Policy(every_epochs=0, monitor=Monitor("val/loss"), top_k=2),
                     "epoch-0003.pt", False, step=6, value=0.7)
    assert plan == Plan("top-epoch-0003.pt", ("last.pt",), ("top-epoch-0001.pt",), is_best=False)


def test_what_is_due_at_a_batch_and_at_an_epoch_end():
    assert step_save(Policy(every_steps=2), Progress(0, 2, 2), batches=4, stopped=False) == "step-00000002.pt"
    assert step_save(Policy(every_steps=2), Progress(0, 4, 4), batches=4, stopped=False) is None   # the epoch's end
    policy = Policy(every_epochs=2, monitor=Monitor("val/acc", "max"), top_k=0)
    h = history(0.5, 0.7, 0.6, key="val/acc")
    assert epoch_save([], History(epochs=h.epochs[:2]), policy, Progress(2, 4, 0)) == ("epoch-0002.pt", True)
    assert epoch_save([], h, policy, Progress(3, 6, 0)) is None                      # not due, not best
    assert epoch_save([], history(0.5, 0.8, key="val/acc"), Policy(every_epochs=0, monitor=Monitor("val/acc", "max")),
                      Progress(2, 4, 0)) == ("epoch-0002.pt", False)               # best: saved, not periodic
