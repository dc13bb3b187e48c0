"""mtrec: multi-task recommendation models, data pipeline, training, benchmarks, export and serving."""

__version__ = "0.1.0"
