"""SmartCash: detecting Indonesian Rupiah banknotes, built on the smartcash_fn core.

The application wing: synthetic Rupiah scenes (:mod:`.scenes`), YOLO-format
data and export (:mod:`.yolo`, :mod:`.export`), the detector (:mod:`.detector`),
its targets, loss and decoding (:mod:`.detection`), the decoupled head's loss (:mod:`.aligned`), COCO-style metrics
(:mod:`.metrics`), plots (:mod:`.plots`), the end-of-training table (:mod:`.table`), inference (:mod:`.inference`), the
recipe components (:mod:`.components`), its commands (:mod:`.commands`) and
the old pipeline's API (:mod:`.compat`).

It plugs into the generic layers through the entry point
``smartcash_fn.components = smartcash:COMPONENTS``; nothing generic names it::

    from smartcash_fn.run import registry
    registry.resolve("model", "detector", where="recipe: model.use")
"""

COMPONENTS = {
    "model": {"detector": "smartcash_fn.smartcash.components:detector"},
    "data": {
        "rupiah_synthetic": "smartcash_fn.smartcash.components:rupiah_synthetic",
        "yolo_dataset": "smartcash_fn.smartcash.components:yolo_dataset",
    },
    "loss": {"detection": "smartcash_fn.smartcash.components:detection",
             "task_aligned": "smartcash_fn.smartcash.components:task_aligned"},
    "callback": {"detection_plots": "smartcash_fn.smartcash.plots:detection_plots",
                 "detection_table": "smartcash_fn.smartcash.table:detection_table"},
    "metrics": {"detection": "smartcash_fn.smartcash.components:detection_metrics"},
}
"""The recipe components SmartCash adds: kind -> short name -> import path."""
