"""The medprep record: one schema, its tf.train.Example and Parquet forms, and readers."""

from medprep.schemas.arrow import arrow_schema, hf_features, to_table
from medprep.schemas.batch import IGNORE_INDEX, image_token_id, model_batch
from medprep.schemas.example_codec import decode_example, encode_example
from medprep.schemas.fields import FIELD_NAMES, FIELDS, validate_record
from medprep.schemas.model_input import to_model_input
from medprep.schemas.readers import ArrayRecordSource, arrayrecord_files, grain_source, hf_dataset, read_records

__all__ = [
    "FIELDS",
    "FIELD_NAMES",
    "validate_record",
    "encode_example",
    "decode_example",
    "arrow_schema",
    "hf_features",
    "to_table",
    "read_records",
    "ArrayRecordSource",
    "grain_source",
    "arrayrecord_files",
    "hf_dataset",
    "to_model_input",
    "model_batch",
    "image_token_id",
    "IGNORE_INDEX",
]
