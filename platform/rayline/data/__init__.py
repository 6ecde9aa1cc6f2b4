"""Ray Data ingest: read a source, check its schema, split it, fit the preprocessor on train, transform, store.

Importing this package imports neither Ray nor any data; the functions that need Ray import it.
"""

from rayline.data.digits import write_digits
from rayline.data.errors import DataError
from rayline.data.fingerprint import fingerprint_source
from rayline.data.prepare import PreparedData, prepare_datasets
from rayline.data.prepared import SplitFiles
from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor
from rayline.data.read import check_schema, list_source_files, read_source
from rayline.data.split import LeaveOut
from rayline.data.values import RefusedValue

__all__ = [
    "CategoricalStat",
    "DataError",
    "LeaveOut",
    "NumericStat",
    "PreparedData",
    "Preprocessor",
    "RefusedValue",
    "SplitFiles",
    "check_schema",
    "fingerprint_source",
    "list_source_files",
    "prepare_datasets",
    "read_source",
    "write_digits",
]
