"""Export: the scoring graph (named tensors -> task probabilities) and ONNX export with a parity check."""

from mtrec.export.onnx import (
    DEFAULT_TOLERANCE,
    EXPORTERS,
    CheckedExport,
    ExportError,
    ExportResult,
    ParityError,
    ParityReport,
    check_parity,
    export_checked,
    export_onnx,
    export_run,
    parity_batches,
    random_features,
)
from mtrec.export.scoring import ScoringModule, array_feeds, feature_inputs, input_names, output_names

__all__ = [
    "DEFAULT_TOLERANCE",
    "EXPORTERS",
    "CheckedExport",
    "ExportError",
    "ExportResult",
    "ParityError",
    "ParityReport",
    "ScoringModule",
    "array_feeds",
    "check_parity",
    "export_checked",
    "export_onnx",
    "export_run",
    "feature_inputs",
    "input_names",
    "output_names",
    "parity_batches",
    "random_features",
]
