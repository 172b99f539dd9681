"""The package layout's rules (docs/architecture.md), read from every module's own imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "smartcash_fn"
DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"

ALLOWED = {
    "core": {"core"},
    "report": {"core", "report"},
    "builtin": {"core", "builtin"},
    "run": {"core", "report", "builtin", "run"},
    "smartcash": {"core", "report", "builtin", "run", "smartcash"},
    "top": {"core", "report", "builtin", "run", "smartcash", "top"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    if parts[1] in ("cli", "__main__"):
        return "top"
    if parts[1] in ("run", "report", "builtin", "smartcash"):
        return parts[1]
    return "core"


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The package modules an ``ImportFrom`` names (a module, or modules imported from a package)."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = importer.split(".") if is_package else importer.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    if not base.startswith("smartcash_fn"):
        return []
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.append(sub if sub in MODULES else base)
    return found


def imports(module: str) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """(top-level, function-level) package imports of ``module`` as (target, imported name, line)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top, inner = [], []
    body = set(map(id, tree.body))
    for node in tree.body:  # `if TYPE_CHECKING:` imports declare the module's edges: they count as top-level
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            body.update(map(id, node.body))
    for node in ast.walk(tree):
        targets: list[tuple[str, str]] = []
        if isinstance(node, ast.ImportFrom):
            for target, alias in zip(resolve(module, path.name == "__init__.py", node), node.names):
                targets.append((target, alias.name))
        elif isinstance(node, ast.Import):
            targets = [(a.name, a.name) for a in node.names if a.name.startswith("smartcash_fn")]
        for target, name in targets:
            (top if id(node) in body else inner).append((target, name, node.lineno))
    return top, inner


def documented_deferrals() -> set[tuple[str, str]]:
    """``- `smartcash_fn.a` defers `smartcash_fn.b`: why`` lines under 'Documented deferrals'."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("### Documented deferrals", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^- `([\w.]+)` defers `([\w.]+)`", section, flags=re.M))


def test_every_module_is_in_a_layer_and_the_doc_names_every_wing():
    text = DOC.read_text(encoding="utf-8")
    for wing in ("run/", "report/", "builtin/", "smartcash/", "cli.py"):
        assert wing in text
    assert {layer(m) for m in MODULES} == set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_toward_the_root(module):
    top, inner = imports(module)
    wrong = [f"line {line}: {module} ({layer(module)}) imports {target} ({layer(target)})"
             for target, _, line in top + inner if layer(target) not in ALLOWED[layer(module)]]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_package_imports_are_at_the_top_unless_documented(module):
    _, inner = imports(module)
    allowed = documented_deferrals()
    hidden = [f"line {line}: {module} imports {target} inside a function"
              for target, _, line in inner if (module, target) not in allowed]
    assert not hidden, "\n".join(hidden) + "\n(move it to the top, or document the deferral in docs/architecture.md)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_crosses_a_module(module):
    top, inner = imports(module)
    private = [f"line {line}: {module} imports {name} from {target}" for target, name, line in top + inner
               if name.startswith("_") and name not in ("__version__",) and target != f"smartcash_fn.{name}"
               and f"{target}.{name}" not in MODULES]
    assert not private, "\n".join(private)


def test_no_cycle_among_top_level_imports():
    graph = {m: {t for t, _, _ in imports(m)[0] if t != m} for m in MODULES}
    for m in list(graph):  # a module's own package __init__ runs first anyway: not an edge of its own
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t in graph and t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_package_loads_none_of_its_own_modules_by_string():
    offenders = []
    for module, path in MODULES.items():
        if module in ("smartcash_fn._moved",):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"import_module\(\s*[\"']smartcash_fn", line):
                offenders.append(f"{module}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_a_wrong_way_edge_and_a_hidden_import(tmp_path, monkeypatch):
    """The rules can fail: a core module importing a wing, and a function-level import, are both caught."""
    fake = PACKAGE / "step.py"
    source = fake.read_text(encoding="utf-8") + "\n\ndef _probe():\n    from .run import build  # noqa\n"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source if self == fake
                        else Path.open(self, encoding=encoding).read())
    top, inner = imports("smartcash_fn.step")
    assert ("smartcash_fn.run.build", "build") in [(t, n) for t, n, _ in inner]
    assert "run" not in ALLOWED[layer("smartcash_fn.step")]


def test_old_module_paths_still_import_as_the_new_modules():
    import importlib
    import warnings

    from smartcash_fn import _moved

    for old, new in _moved.MOVED.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module(f"smartcash_fn.{old}")
        assert module is importlib.import_module(f"smartcash_fn.{new}"), old


def test_version_and_help_import_no_torch():
    import subprocess
    import sys

    code = ("import sys; from smartcash_fn.cli import main\n"
            "for argv in (['--version'], ['--help'], ['train', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout


def test_every_subcommand_has_a_description_examples_and_helped_arguments():
    import argparse

    from smartcash_fn.cli import parser

    seen = []

    def walk_parsers(p, path):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    seen.append(" ".join(path + [name]))
                    assert sub.description and len(sub.description) > 10, name
                    assert sub.epilog and sub.epilog.startswith("examples:"), name
                    for a in sub._actions:
                        if not a.option_strings and not isinstance(a, argparse._SubParsersAction):
                            assert a.help, f"{name}: positional {a.dest} has no help"
                    walk_parsers(sub, path + [name])

    walk_parsers(parser(), [])
    assert {"train", "resume", "replay", "check", "inspect", "export", "eval", "predict", "recipe copy",
            "data export-synthetic"} <= set(seen)
