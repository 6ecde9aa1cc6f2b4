"""Ray Data ingest: read a source, check its schema, split it, fit the preprocessor on train, transform.

Importing this package imports neither Ray nor any data; the functions that need Ray import it.
"""

from rayline.data.digits import write_digits
from rayline.data.errors import DataError
from rayline.data.fingerprint import fingerprint_source
from rayline.data.fit import fit_preprocessor
from rayline.data.prepare import PreparedData, prepare_datasets
from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor
from rayline.data.read import check_schema, list_source_files, read_source
from rayline.data.split import LeaveOut, LeftOut, Splits, split_dataset
from rayline.data.values import RefusedValue

__all__ = [
    "CategoricalStat",
    "DataError",
    "LeaveOut",
    "LeftOut",
    "NumericStat",
    "PreparedData",
    "Preprocessor",
    "RefusedValue",
    "Splits",
    "check_schema",
    "fingerprint_source",
    "fit_preprocessor",
    "list_source_files",
    "prepare_datasets",
    "read_source",
    "split_dataset",
    "write_digits",
]
