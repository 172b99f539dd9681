"""The README's Python examples run as written, top to bottom, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 6, "the README should show state, step, callback, fit, save/load, resume/replay"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["state"].progress.step > 0
    assert namespace["s2"].progress.epoch == 2


def test_readme_opens_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    first = re.search(r"```(?:bash)?\n(.*?)```", text, re.S).group(1)
    lines = [ln for ln in first.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == 2
    assert "smartcash-fn train" in lines[0] and "pytest" in lines[1]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert lines[1] in ci
