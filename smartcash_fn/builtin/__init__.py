"""Tiny built-in components for recipes, tests and benchmarks: models (:mod:`.models`) and
synthetic data (:mod:`.synthetic`)::

    from smartcash_fn.builtin.models import mlp
    model = mlp(in_features=8, classes=3, hidden=[32])
"""
