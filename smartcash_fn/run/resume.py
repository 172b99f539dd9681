"""Going on from a checkpoint: its recipe, its state fitted to that recipe's build, and the checks between.

Every command and facade that continues, replays or loads a run (``resume``,
``replay``, ``eval``/``predict``'s detector, ``TrainingPipeline``, the
benchmarks) goes through these functions::

    found = find_checkpoint("runs/tiny")
    recipe = recipe_of(found)                         # the recipe the checkpoint carries
    built = build(recipe, "runs/tiny")
    state = state_in(found, built.template)           # params, moments, progress ... on the template
"""

from __future__ import annotations

from typing import Sequence

from .. import checkpoint, environment
from ..errors import CheckpointError, RecipeError
from ..replay import Difference, difference
from ..state import TrainState
from .folders import Found
from .recipe import Recipe, from_dict, to_dict
from .trust import require_trusted


def recipe_of(found: Found, sets: Sequence[str] = (), trust_code: bool = False) -> Recipe:
    """The resolved recipe inside the checkpoint (with ``--set`` overrides), errors naming the file.

    The checkpoint is data: its recipe may name only built-in components
    unless ``trust_code`` (the user vouches for the code it names; see
    :mod:`smartcash_fn.run.trust`). Checked after the overrides, before
    anything is imported or called::

        recipe_of(find_checkpoint("runs/tiny"), ["train.epochs=5"])
        recipe_of(find_checkpoint("runs/custom"), trust_code=True)     # a recipe naming mypkg.models:net
    """
    tree = found.obj["state"].get("recipe")
    if not tree:
        raise CheckpointError(f"{found.path}: the checkpoint holds no recipe (it was not made from one); resume it "
                              "from Python with smartcash_fn.resume(path, loop, like=template)")
    recipe = from_dict(tree, source=f"{found.path} (its recipe)", sets=sets)
    require_trusted(to_dict(recipe), str(found.path), trust_code)
    return recipe


def state_in(found: Found, like: TrainState) -> TrainState:
    """The state in the verified checkpoint, on ``like``'s model, optimizer and device (no second read).

    ``state = state_in(found, built.template)``; a malformed state is a :class:`CheckpointError` naming the file.
    """
    try:
        return checkpoint.from_tree(found.obj["state"], like, where=str(found.path))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{found.path}: the checkpoint's state is malformed ({type(e).__name__}: {e})") from None


def environment_notes(found: Found, like: TrainState) -> tuple[str, ...]:
    """Plain notes when the checkpoint was written under another torch, device kind or kernel setting than
    ``like``'s now (the bits may differ; not an error): ``for n in environment_notes(found, built.template): ...``
    """
    said = environment.notes(environment.recorded_environment(found.obj), environment.of_params(like.params))
    return tuple(f"{found.path}: {n}" for n in said)


def optimizer_misfit(template: TrainState, state: TrainState) -> Difference | None:
    """Where ``state``'s optimizer state does not fit ``template``'s (a changed optimizer or groups), or None.

    ``optimizer_misfit(built.template, state)`` before a fork or a config-driven resume replaces one with the other.
    """
    return difference(checkpoint.structure(template.opt_state), checkpoint.structure(state.opt_state), "opt_state")


def seed_mismatch(found: Found, recipe: Recipe, called: str = "the recipe") -> str | None:
    """A message when the recipe's ``run.seed`` is not the checkpoint's seed (a resumed run keeps its seed).

    ``called`` is what the user calls the recipe (``"the config"`` in the old pipeline's API).
    """
    seed = found.obj["state"].get("seed")
    if seed == recipe.run.seed:
        return None
    return (f"{recipe.where('run', 'seed')}: {called} says {recipe.run.seed}, but {found.path} was trained with "
            f"seed {seed}; a resumed run keeps its seed: set run.seed = {seed}")


def require_fit(template: TrainState, state: TrainState, where: str, what: str) -> None:
    """Raise a :class:`RecipeError` at ``where`` when ``state``'s optimizer state does not fit ``template``'s."""
    mismatch = optimizer_misfit(template, state)
    if mismatch is not None:
        raise RecipeError(f"{where}: {what} (first at {mismatch.path}); keep the optimizer and its parameter groups "
                          "the checkpoint was trained with")




def require_progress(state: TrainState, batches: int, where: str) -> None:
    """Raise a :class:`CheckpointError` at ``where`` when ``state``'s progress cannot belong to a run of
    ``batches`` batches per epoch (a batch index past the epoch's end)."""
    p = state.progress
    if p.batch > batches:
        raise CheckpointError(f"{where}: progress.batch is {p.batch}, but an epoch of this recipe has {batches} "
                              "batches; the checkpoint does not belong to this recipe's data")
