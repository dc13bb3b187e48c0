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
    random_batch,
)
from mtrec.export.scoring import ScoringModule, array_feeds, batch_inputs, input_names, output_names

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
    "batch_inputs",
    "check_parity",
    "export_checked",
    "export_onnx",
    "export_run",
    "input_names",
    "output_names",
    "parity_batches",
    "random_batch",
]
