"""The trust boundary: a checkpoint's recipe may name only built-in components unless the user trusts its code.

A checkpoint whose recipe was edited to name ``os:system`` (digest recomputed:
it is unkeyed) is refused by resume, replay, eval and predict and flagged by
inspect, and nothing runs; ``--trust-code`` lets a legitimate custom
component through; ``check`` imports a recipe's own code without calling it
unless ``--trial``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import save_redigested
from smartcash_fn import checkpoint
from smartcash_fn.cli import main
from smartcash_fn.loop import fit
from smartcash_fn.run import recipe as rc
from smartcash_fn.run.build import build
from smartcash_fn.run.folders import find_checkpoint
from smartcash_fn.run.resume import recipe_of
from smartcash_fn.run.trust import Component, require_trusted, untrusted
from smartcash_fn.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"
QUIET = ["train.epochs=1", "schedule.warmup_steps=1", "data.params.samples=64", "data.params.val_samples=32", "loggers.csv=false",
         "loggers.jsonl=false", "loggers.tensorboard=false", "loggers.plots=false", "loggers.console=false",
         "loggers.summary=false"]

CUSTOM = '''
from smartcash_fn.builtin.synthetic import classification


def data(**params):
    """A user's own data factory: the built-in synthetic data, reached through an import path."""
    return classification(**params)
'''


def tampered(src: Path, dst: Path, **sections) -> Path:
    """A copy of checkpoint ``src`` whose recipe's sections are updated, with the (unkeyed) digest recomputed."""
    obj = torch.load(src, weights_only=True)
    for name, table in sections.items():
        obj["state"]["recipe"][name] = {**obj["state"]["recipe"][name], **table}
    save_redigested(obj, dst)
    checkpoint.read(dst)       # digest-valid: the integrity check cannot tell it from a real one
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trust") / "run"
    built = build(rc.load(TINY, QUIET), run, quiet=True)
    fit(built.template, built.loop)
    return run / "checkpoints" / "epoch-0001.pt"


def test_untrusted_lists_every_import_path_that_is_not_a_built_in():
    tree = {"data": {"use": "os:system", "params": {"command": "touch x", "hook": "mypkg.hooks:go"}},
            "train": {"loss": "smartcash_fn.step:classification_loss", "steps": [{"use": "clip"}, {"use": "a.b:c"}]},
            "run": {"out": "runs", "parent": "/tmp/runs/a/checkpoints/last.pt"}}
    assert untrusted(tree) == (Component("data.use", "os:system", ("data", "use")),
                               Component("data.params.hook", "mypkg.hooks:go", ("data", "params", "hook")),
                               Component("train.steps[1].use", "a.b:c", ("train", "steps", 1, "use")))
    with pytest.raises(CheckpointError, match=r"x.pt \(its recipe\): data.use = 'os:system'.*--trust-code"):
        require_trusted(tree, "x.pt")
    require_trusted(tree, "x.pt", trust_code=True)


@pytest.mark.parametrize("section", ["data", "model"])
def test_a_malicious_component_is_refused_by_every_command_and_runs_nothing(trained, tmp_path, monkeypatch, capsys,
                                                                            section):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    ckpt = tampered(trained, tmp_path / "evil" / "checkpoints" / "last.pt",
                    **{section: {"use": "os:system", "params": {"command": f"touch {marker}"}}})
    for argv in (["resume", str(ckpt)], ["resume", str(ckpt.parent.parent), "--set", "train.epochs=2"],
                 ["replay", str(ckpt), "--to-step", "3"], ["eval", str(ckpt)],
                 ["predict", str(ckpt), str(tmp_path), "--out", str(tmp_path / "pred")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {ckpt} (its recipe): {section}.use = 'os:system'"), (argv, err)
        assert "--trust-code" in err and "Traceback" not in err
        assert not marker.exists(), argv
    assert main(["inspect", str(ckpt)]) == 2                # refused like the others, naming the key and the flag
    err = capsys.readouterr().err
    assert f"{section}.use = 'os:system'" in err and "--trust-code" in err
    assert main(["inspect", str(ckpt), "--trust-code"]) == 0  # inspect never builds: with the flag it shows it
    out = capsys.readouterr().out
    assert f"UNTRUSTED:  the recipe names code that is not built in ({section}.use = 'os:system')" in out
    assert main(["inspect", str(ckpt), "--json", "--trust-code"]) == 0
    assert '"key": "' + section + '.use"' in capsys.readouterr().out
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="--trust-code"):      # the Python API is guarded the same way
        recipe_of(find_checkpoint(ckpt))


def test_trust_code_lets_a_legitimate_custom_component_through(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "mydata.py").write_text(CUSTOM)
    ckpt = tampered(trained, tmp_path / "own" / "checkpoints" / "epoch-0001.pt", data={"use": "mydata:data"})
    assert main(["replay", str(ckpt), "--to-step", "3"]) == 2
    assert "data.use = 'mydata:data'" in capsys.readouterr().err
    assert main(["replay", str(ckpt), "--to-step", "3", "--trust-code"]) == 0
    assert "replayed" in capsys.readouterr().out
    assert recipe_of(find_checkpoint(ckpt), trust_code=True).data.use == "mydata:data"


def test_check_imports_a_recipes_own_code_but_calls_it_only_with_trial(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    shutil.copy(TINY, tmp_path / "base.toml")
    (tmp_path / "r.toml").write_text(f'extends = "base.toml"\n[data]\nuse = "os:system"\n'
                                     f'[data.params]\ncommand = "touch {marker}"\n')
    assert main(["check", "r.toml"]) == 0
    out = capsys.readouterr().out
    assert "# imported, not called: data.use = 'os:system'" in out and "--trial" in out
    assert not marker.exists()
    (tmp_path / "r.toml").write_text('extends = "base.toml"\n[data]\nuse = "os:no_such_function"\n')
    assert main(["check", "r.toml"]) == 2
    assert "r.toml: data.use: cannot import 'os:no_such_function'" in capsys.readouterr().err
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "mydata.py").write_text(CUSTOM)
    (tmp_path / "r.toml").write_text('extends = "base.toml"\n[data]\nuse = "mydata:data"\n')
    assert main(["check", "r.toml", "--trial"]) == 0          # asked: built, and a trial step run
    assert "# trial step: loss" in capsys.readouterr().out


def test_a_team_key_tells_our_checkpoints_from_altered_ones(trained, tmp_path, monkeypatch):
    state = checkpoint.load(trained)
    monkeypatch.setenv("SMARTCASH_FN_KEY", "our team's secret")
    ours = checkpoint.save(state, tmp_path / "ours.pt")
    assert checkpoint.read(ours)["digest"].startswith("blake2b-256-keyed:")
    obj = torch.load(ours, weights_only=True)
    obj["state"]["seed"] = 1
    save_redigested(obj, tmp_path / "altered.pt")     # no key: unkeyed
    with pytest.raises(CheckpointError, match="not signed with a key: it was not written by your team"):
        checkpoint.read(tmp_path / "altered.pt")
    obj["digest"] = "blake2b-256-keyed:" + "0" * 64
    torch.save(obj, tmp_path / "forged.pt")
    with pytest.raises(CheckpointError, match="keyed digest does not match SMARTCASH_FN_KEY"):
        checkpoint.read(tmp_path / "forged.pt")
    monkeypatch.setenv("SMARTCASH_FN_KEY", "")
    with pytest.raises(CheckpointError, match="signed with a team key; set SMARTCASH_FN_KEY"):
        checkpoint.read(ours)
    assert checkpoint.read(tmp_path / "altered.pt")["state"]["seed"] == 1    # without a key: integrity only
