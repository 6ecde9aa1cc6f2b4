"""The one exception type of the data layer, and recovering it from Ray's remote-task errors."""

from __future__ import annotations

import re

# Ray re-raises a failed task's exception as text inside a RayTaskError; the DataError object is lost.
_REMOTE_DATA_ERROR = re.compile(r"DataError: (.+)")


class DataError(ValueError):
    """A user-caused data problem; the message names the source, the column and the bad value."""


def remote_data_error(err: BaseException) -> str | None:
    """The message of a DataError raised inside a Ray task, if that is what err carries."""
    if isinstance(err, DataError):
        return str(err)
    found = _REMOTE_DATA_ERROR.findall(str(err))
    return found[-1].strip() if found else None


def remote_reason(err: BaseException) -> str:
    """The first line of the exception a Ray task raised (RayTaskError keeps it in .cause)."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__
