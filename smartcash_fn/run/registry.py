"""Components named in a recipe: built-in short names, or ``package.module:attr`` import paths.

A recipe names every component by a string. A short name (``"adamw"``,
``"clip"``, ``"early_stopping"``) is looked up in the built-ins of its kind;
a string with a colon is an import path to the user's own code (a model
factory, a loss, a step transformer, a callback factory)::

    resolve("optimizer", "adamw", where="recipes/a.toml: optimizer.use")      # smartcash_fn.optim.adamw
    resolve("loss", "smartcash_fn.step:classification_loss", where="recipes/a.toml: train.loss")  # or mypkg.losses:focal
    check_params(fn, {"max_norm": 10.0}, where="recipes/a.toml: train.steps[0]")

A :class:`Site` says where the recipe names a component and each of its
parameters, so that a factory's complaint about one argument names the key
the user wrote (``data.params.size``, or the ``--set`` argument that set it).

Built-ins are stored as import paths too, so naming a kind's entry costs
nothing until it is used. Every failure is a :class:`~smartcash_fn.errors.RecipeError`
that starts with ``where`` (the recipe file and the dotted key).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
from importlib import metadata
from typing import Any, Callable, Iterable, Mapping

import attrs

from ..errors import RecipeError, UserError

CORE: Mapping[str, Mapping[str, str]] = {
    "model": {
        "mlp": "smartcash_fn.builtin.models:mlp",
        "cnn": "smartcash_fn.builtin.models:cnn",
    },
    "data": {
        "synthetic": "smartcash_fn.builtin.synthetic:classification",
        "synthetic_images": "smartcash_fn.builtin.synthetic:images",
    },
    "loss": {
        "cross_entropy": "smartcash_fn.step:classification_loss",
    },
    "optimizer": {
        "sgd": "smartcash_fn.optim:sgd",
        "adam": "smartcash_fn.optim:adam",
        "adamw": "smartcash_fn.optim:adamw",
    },
    "schedule": {
        "constant": "smartcash_fn.schedule:constant",
        "step": "smartcash_fn.schedule:step",
        "multistep": "smartcash_fn.schedule:multistep",
        "cosine": "smartcash_fn.schedule:cosine",
        "warmup_cosine": "smartcash_fn.schedule:warmup_cosine",
        "warmup_linear": "smartcash_fn.schedule:warmup_linear",
        "one_cycle": "smartcash_fn.schedule:one_cycle",
    },
    "step": {
        "accumulate": "smartcash_fn.step:accumulate",
        "clip": "smartcash_fn.step:clip",
        "ema": "smartcash_fn.step:ema",
        "bf16": "smartcash_fn.step:bf16",
        "fp16": "smartcash_fn.step:fp16",
    },
    "callback": {
        "early_stopping": "smartcash_fn.run.build:early_stopping_callback",
        "reduce_on_plateau": "smartcash_fn.run.build:reduce_on_plateau_callback",
        "nan_guard": "smartcash_fn.callbacks:nan_guard",
        "memory_cleanup": "smartcash_fn.callbacks:memory_cleanup",
        "record_steps": "smartcash_fn.callbacks:record_steps",
    },
    "metrics": {
        "classification": "smartcash_fn.loop:classification_metrics",
    },
}
"""Kind -> short name -> import path of the generic library's own components."""

PLUGIN_GROUP = "smartcash_fn.components"
"""The entry-point group through which an installed application adds its components (SmartCash does)."""


@functools.cache
def builtins() -> Mapping[str, Mapping[str, str]]:
    """Kind -> short name -> import path: :data:`CORE` plus every installed plugin's table.

    A plugin is an entry point in the group ``smartcash_fn.components`` naming a
    mapping of the same shape (``smartcash_fn.smartcash:COMPONENTS`` is one), so
    the generic layers never name an application::

        builtins()["model"]["detector"]   # 'smartcash_fn.smartcash.components:detector'
    """
    merged = {kind: dict(table) for kind, table in CORE.items()}
    for ep in sorted(metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        for kind, table in ep.load().items():
            merged.setdefault(kind, {}).update(table)
    return {kind: dict(table) for kind, table in merged.items()}


def names(kind: str) -> tuple[str, ...]:
    """The built-in short names of ``kind``: ``names("optimizer") == ("sgd", "adam", "adamw")``."""
    return tuple(builtins().get(kind, {}))


def is_import_path(name: str) -> bool:
    """Whether ``name`` is an import path (``package.module:attr``) rather than a short name."""
    return ":" in name


def suggest(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'lr'?"`` when a choice is close to ``word``, else ``""``: ``suggest("lrr", ["lr", "eps"])``."""
    near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""


def import_path(path: str, where: str) -> Any:
    """The object at ``package.module:attr`` (``attr`` may be dotted: ``module:Class.method``).

    ``import_path("smartcash_fn.optim:adamw", where="a.toml: optimizer.use")``;
    a module that cannot be imported, or lacks the attribute, raises a
    :class:`RecipeError` starting with ``where``.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr or ":" in attr:
        raise RecipeError(f"{where}: {path!r} is not an import path; write it as 'package.module:attr'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise RecipeError(
                f"{where}: cannot import {path!r}: no module named {missing!r}; check the spelling, and that "
                "the package is installed or its folder is on PYTHONPATH"
            ) from None
        raise RecipeError(f"{where}: importing module {module_name!r} failed: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing
        raise RecipeError(f"{where}: importing module {module_name!r} failed: {type(e).__name__}: {e}") from None
    obj: Any = module
    done = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            choices = [n for n in dir(obj) if not n.startswith("_")]
            raise RecipeError(f"{where}: cannot import {path!r}: {done!r} has no attribute {part!r}"
                              f"{suggest(part, choices)}")
        obj = getattr(obj, part)
        done = f"{done}{':' if done == module_name else '.'}{part}"
    return obj


def resolve(kind: str, name: str, where: str) -> Any:
    """The component ``name`` of ``kind``: a built-in short name or an import path.

    ``resolve("step", "clip", where="a.toml: train.steps[0].use")`` is :func:`smartcash_fn.step.clip`.
    """
    table = builtins()
    if kind not in table:
        raise ValueError(f"resolve: unknown component kind {kind!r}; kinds are {', '.join(table)}")
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{where}: expected the name of a {kind} (a string), got {name!r}")
    if is_import_path(name):
        return import_path(name, where)
    table = table[kind]
    if name not in table:
        hint = suggest(name, table)
        module, _, attr = name.rpartition(".")
        dotted = f"; an import path needs a colon before the attribute: '{module}:{attr}'" if module else ""
        raise RecipeError(
            f"{where}: unknown {kind} {name!r}{hint or dotted}\n  built-in {kind}s: "
            f"{', '.join(table) or '(none)'}; or give an import path 'package.module:attr'"
        )
    return import_path(table[name], where)


def parameters(fn: Callable[..., Any]) -> Mapping[str, inspect.Parameter] | None:
    """``fn``'s keyword-capable parameters, or None when it takes ``**kwargs`` (or has no signature)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n: p for n, p in sig.parameters.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` can be called with the keyword argument ``name``."""
    params = parameters(fn)
    return params is None or name in params


def check_params(fn: Callable[..., Any], params: Mapping[str, Any], where: str | Callable[[str | None], str],
                 supplied: Iterable[str] = (), key: str = "", label: str | None = None) -> None:
    """Check that ``fn(**supplied, **params)`` fits ``fn``'s signature before calling it.

    ``supplied`` names the arguments the builder passes itself; ``key`` is the
    dotted prefix of the params in the recipe, and ``where`` the file they
    come from (or a function of the param's name, None for a missing one,
    giving the file); ``label`` is the component's name as the recipe wrote
    it (default: the function's name). Unknown names get a did-you-mean;
    required parameters left out are listed::

        check_params(clip, {"max_nrom": 1.0}, where="a.toml", key="train.steps[0]")
        # RecipeError: a.toml: train.steps[0].max_nrom: clip takes no parameter 'max_nrom'; did you mean 'max_norm'?
    """
    file_of = where if callable(where) else (lambda _name: where)
    sig_params = parameters(fn)
    if sig_params is None:
        return
    label = label or getattr(fn, "__name__", "the component")
    prefix = f"{key}." if key else ""
    supplied = set(supplied)
    for name in params:
        if name not in sig_params or name in supplied:
            takes = [n for n in sig_params if n not in supplied]
            raise RecipeError(
                f"{file_of(name)}: {prefix}{name}: {label} takes no parameter {name!r}{suggest(name, takes)}"
                f" (its parameters: {', '.join(takes) or 'none'})"
            )
    missing = [n for n, p in sig_params.items()
               if p.default is inspect.Parameter.empty and n not in params and n not in supplied]
    if missing:
        keys = " and ".join(f"{prefix}{m}" for m in missing)
        raise RecipeError(f"{file_of(None)}: {keys}: required by {label}; add "
                          f"{'it' if len(missing) == 1 else 'them'} to the recipe")


_ALLOCATION = ("can't allocate memory", "not enough memory", "out of memory", "cannot allocate memory",
               "DefaultCPUAllocator", "Trying to create tensor with negative dimension", "cannot be represented",
               "overflow")


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message, shortened to 200 characters."""
    text = (str(e).strip().splitlines() or [""])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def too_big(e: BaseException) -> bool:
    """Whether ``e`` says a size was too large to allocate or represent (not a bug in the component)."""
    if isinstance(e, (MemoryError, OverflowError)):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e) for m in _ALLOCATION)


@attrs.frozen
class Site:
    """Where a recipe names a component: ``where`` (``"<file>: <key>"`` of its name), the ``label`` the recipe
    wrote (``"synthetic"``, not the function's name), and ``params``: the ``"<file>: <key>"`` of each argument
    the recipe gave.

    :func:`call` blames the argument a factory's error names on its key::

        from smartcash_fn.builtin.synthetic import classification
        site = Site("a.toml: data.use", "synthetic", {"samples": "--set data.params.samples=0: data.params.samples"})
        call(classification, site, samples=0)
        # RecipeError: --set data.params.samples=0: data.params.samples: synthetic: samples must be an integer > 0
    """

    where: str
    label: str = ""
    params: Mapping[str, str] = attrs.field(factory=dict)


_HEAD = re.compile(r"(\w+): ")
_FIRST_WORD = re.compile(r"(\w+)(?=[\s=:,\[]|$)")


def _own_names(fn: Callable[..., Any], label: str) -> set[str]:
    """The names a component calls itself in its messages: its function name, the recipe's label, its short names."""
    names = {getattr(fn, "__name__", ""), label}
    path = f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}"
    names.update(n for table in builtins().values() for n, p in table.items() if p == path)
    return names - {""}


def blame(fn: Callable[..., Any], site: str | Site, e: BaseException) -> str:
    """The one-line message of a factory's error ``e``: the key it is about, the component's label, the reason.

    The key is the argument named by ``e.param`` (a :class:`~smartcash_fn.errors.UserError`'s), else the
    argument the message starts with (``"hidden must be ..."``, after the component's own name), when the
    recipe gave it; else ``site.where``. ``blame(mlp, site, ValueError("mlp: hidden must be ..."))``
    """
    site = site if isinstance(site, Site) else Site(site)
    label = site.label or getattr(fn, "__name__", "component")
    text = str(e)
    head = _HEAD.match(text)
    if head and head.group(1) in _own_names(fn, label):
        text = text[head.end():]  # "mlp: hidden must ...": the label said once, as the recipe wrote it
    param = getattr(e, "param", None)
    if param is None:
        first = _FIRST_WORD.match(text)
        param = first.group(1) if first else None
    where = site.params.get(param, site.where) if param is not None else site.where
    return f"{where}: {label}: {text}"


def call(fn: Callable[..., Any], where: str | Site, /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with a ``ValueError``/``TypeError``/``UserError`` from bad values turned into a
    RecipeError naming the key to fix (see :class:`Site` and :func:`blame`).

    ``call(clip, "a.toml: train.steps[0]", max_norm=-1.0)`` raises
    ``RecipeError("a.toml: train.steps[0]: clip: max_norm must be > 0, got -1.0")``.
    """
    try:
        return fn(*args, **kwargs)
    except (MemoryError, OverflowError, RuntimeError) as e:
        if not too_big(e):
            raise
        site = where if isinstance(where, Site) else Site(where)
        label = site.label or getattr(fn, "__name__", "component")
        raise RecipeError(f"{site.where}: {label}: its parameters ask for more memory than this machine has "
                          f"({type(e).__name__}: {first_line(e)}); make the sizes in its params smaller") from None
    except (UserError, ValueError, TypeError) as e:
        raise RecipeError(blame(fn, where, e)) from None
