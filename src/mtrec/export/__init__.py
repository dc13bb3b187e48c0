"""Export: the scoring graph (named tensors -> task predictions), ONNX export with a parity check, the
standalone raw-input model, and reading exported model files (:mod:`mtrec.export.model_file`, no torch).

The package imports nothing itself, so that a module of it can be used without the others' dependencies.
"""
