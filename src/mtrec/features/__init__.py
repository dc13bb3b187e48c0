"""Feature schema and vocabularies."""

from mtrec.features.schema import (
    OOV_ID,
    PADDING_ID,
    DatasetSchema,
    DenseFeature,
    SchemaError,
    SequenceFeature,
    SparseFeature,
    TaskSpec,
)
from mtrec.features.vocab import Vocabulary

__all__ = [
    "OOV_ID",
    "PADDING_ID",
    "DatasetSchema",
    "DenseFeature",
    "SchemaError",
    "SequenceFeature",
    "SparseFeature",
    "TaskSpec",
    "Vocabulary",
]
