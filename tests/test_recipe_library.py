"""The built-in recipes ship in the package and are found by name: recipe list/show/copy/reference, train NAME."""

from __future__ import annotations

import pytest

from smartcash_fn.cli import main
from smartcash_fn.run import library


def test_every_built_in_recipe_is_package_data_and_loads():
    from smartcash_fn.run.recipe import load

    assert library.names() == ("rupiah_efficientnet_b4", "rupiah_synthetic", "rupiah_yolo", "tiny")
    for name in library.names():
        assert library.path_of(name).parent == library.FOLDER
        assert load(library.path_of(name)).run.name == name
        assert library.describe(name).endswith(".")


def test_recipe_list_show_copy_and_reference(tmp_path, capsys):
    assert main(["recipe", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "rupiah_synthetic" in out and "(the default)" in out
    assert main(["recipe", "show", "tiny"]) == 0
    assert capsys.readouterr().out == library.path_of("tiny").read_text(encoding="utf-8")
    dest = tmp_path / "mine.toml"
    assert main(["recipe", "copy", "tiny", str(dest)]) == 0
    assert dest.read_text(encoding="utf-8") == library.path_of("tiny").read_text(encoding="utf-8")
    dest.write_text("# mine\n")
    assert main(["recipe", "copy", "tiny", str(dest)]) == 2                      # never overwrites silently
    assert "--force" in capsys.readouterr().err and dest.read_text() == "# mine\n"
    assert main(["recipe", "copy", "tiny", str(dest), "--force"]) == 0
    assert main(["recipe", "copy", "tiny", str(tmp_path)]) == 0 and (tmp_path / "tiny.toml").is_file()
    assert main(["recipe", "reference"]) == 0 and "### `[run]`" in capsys.readouterr().out


def test_a_misspelt_name_gets_a_suggestion(capsys):
    assert main(["recipe", "show", "tinny"]) == 2
    assert "did you mean 'tiny'" in capsys.readouterr().err


@pytest.mark.parametrize("arg, stem", [(None, "rupiah_synthetic"), ("tiny", "tiny")])
def test_a_name_or_nothing_means_a_built_in_recipe(arg, stem, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert library.resolve(arg) == library.path_of(stem)
    assert library.resolve("recipes/tiny.toml").as_posix() == "recipes/tiny.toml"    # a path stays a path


def test_train_and_check_take_a_built_in_name(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    assert main(["check", "tiny"]) == 0 and "# ok:" in capsys.readouterr().out
    assert main(["train", "tiny", "--quiet", "--out", "run", "--set", "train.epochs=1"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
