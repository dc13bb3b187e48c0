"""``mtrec inspect``: what a trained multi-task model does inside, read from a run directory.

One module per section: :mod:`~mtrec.inspect.utilization` (expert gates), :mod:`~mtrec.inspect.fields`
(per-task field weights, conditional LayerNorms), :mod:`~mtrec.inspect.cross` (Cross-RNN steps),
:mod:`~mtrec.inspect.importance` (permutation importance), :mod:`~mtrec.inspect.calibration`,
:mod:`~mtrec.inspect.relations` (task correlations), and the gradient conflict logged while training
(:mod:`mtrec.training.gradient_conflict`); :mod:`~mtrec.inspect.report` runs them and writes the
report. The model-internal sections read what the model's blocks record (:mod:`mtrec.nn.recording`),
never the model's class: a model without such blocks has no such section.
"""
