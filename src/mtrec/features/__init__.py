"""Feature schema and vocabularies."""

from mtrec.features.encoders import DenseTransform, EncodingError, FeatureEncoders, SequenceFormat
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
    "DenseTransform",
    "EncodingError",
    "FeatureEncoders",
    "SchemaError",
    "SequenceFeature",
    "SequenceFormat",
    "SparseFeature",
    "TaskSpec",
    "Vocabulary",
]
