"""Writers that observe a run: CSV/JSONL/TensorBoard sinks (:mod:`.sinks`), plots (:mod:`.plots`),
the console (:mod:`.console`) and the summary (:mod:`.summary`).

Each is a callback that returns the state it was given; built on the core alone::

    from smartcash_fn.report import sinks
    loop = attrs.evolve(loop, callbacks=loop.callbacks + sinks.csv_log("runs/a"))
"""
