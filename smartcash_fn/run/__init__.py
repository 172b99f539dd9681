"""Running recipes: the schema and loading (:mod:`.recipe`), component names (:mod:`.registry`), the
built-in recipes (:mod:`.library`), what a checkpoint may name (:mod:`.trust`), building a run
(:mod:`.build`), run folders, their lock and signals (:mod:`.folders`, :mod:`.lock`, :mod:`.interrupt`),
going on from a checkpoint (:mod:`.resume`), exporting a model (:mod:`.export`), its footprint
(:mod:`.footprint`) and the generic commands (:mod:`.commands`).

Built on the core; it may use the writers of :mod:`smartcash_fn.report` and the tiny
components of :mod:`smartcash_fn.builtin`, and never names an application::

    from smartcash_fn.run import build, recipe
    built = build.build(recipe.load("recipes/tiny.toml"), "runs/tiny")
"""
