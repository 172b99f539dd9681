"""Running recipes: the schema and loading (:mod:`.recipe`), component names (:mod:`.registry`),
building a run from a recipe (:mod:`.build`), run folders and checkpoints in them (:mod:`.folders`)
and the generic commands (:mod:`.commands`).

Built on the core; it may use the writers of :mod:`smartcash_fn.report` and the tiny
components of :mod:`smartcash_fn.builtin`, and never names an application::

    from smartcash_fn.run import build, recipe
    built = build.build(recipe.load("recipes/tiny.toml"), "runs/tiny")
"""
