"""The one exception type of the data layer, and recovering user mistakes from Ray's remote-task errors."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from rayline.errors import RaylineError

# Ray re-raises a failed task's exception as text inside a RayTaskError; the DataError object is lost.
# RefusedValue is the DataError for one refused cell.
_REMOTE_DATA_ERROR = re.compile(r"(?:DataError|RefusedValue): (.+)")


class DataError(RaylineError, ValueError):
    """A user-caused data problem; the message names the source, the column and the bad value."""


def remote_data_error(err: BaseException) -> str | None:
    """The message of a DataError raised inside a Ray task, if that is what err carries."""
    if isinstance(err, DataError):
        return str(err)
    found = _REMOTE_DATA_ERROR.findall(str(err))
    return found[-1].strip() if found else None


def read_failure(err: BaseException, source: str, action: str = "could not read it") -> DataError | None:
    """A DataError for a reader's failure (a malformed file) or a DataError raised in a Ray task, else None.

    Readers raise ValueError (Arrow's parse errors are ValueErrors) or OSError, on the driver (Parquet
    footers) or in a Ray task, where Ray keeps the exception in RayTaskError.cause. Anything else (a lost
    worker, a full object store) is not the user's file and is left alone.
    """
    message = remote_data_error(err)
    if message is not None:
        return DataError(f"{source}: {message}")
    cause = getattr(err, "cause", err)
    if not isinstance(cause, (ValueError, OSError)):
        return None
    text = str(cause).strip()
    reason = text.splitlines()[0] if text else type(cause).__name__
    return DataError(f"{source}: {action}: {reason}")


@contextlib.contextmanager
def reading(source: str, action: str = "could not read it") -> Iterator[None]:
    """Raise a reader's failure inside the block as a DataError naming `source` (see read_failure); a DataError
    raised in the block passes as it is, anything that is not the user's file too."""
    try:
        yield
    except DataError:
        raise
    except Exception as err:
        failure = read_failure(err, source, action)
        if failure is None:
            raise
        raise failure from None
