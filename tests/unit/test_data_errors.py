"""Reader failures, on the driver or in a Ray task, become DataErrors naming the source; nothing else does."""

import pytest

from rayline.data.errors import DataError, reading


class RemoteFailure(Exception):
    """Shaped like Ray's RayTaskError: the task's exception in .cause, its traceback in the text."""

    def __init__(self, cause: BaseException, text: str = "ray::task failed"):
        super().__init__(text)
        self.cause = cause


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (ValueError("Parquet magic bytes not found\nmore"), "in.parquet: could not read it: Parquet magic bytes"),
        (RemoteFailure(OSError("truncated file")), "in.parquet: could not read it: truncated file"),
        (
            RemoteFailure(RuntimeError("x"), "Traceback\nrayline.data.errors.DataError: column 'a' is missing"),
            "in.parquet: column 'a' is missing",
        ),
    ],
)
def test_a_readers_failure_names_the_source(raised, message):
    with pytest.raises(DataError, match=message), reading("in.parquet"):
        raise raised


def test_the_action_says_what_was_attempted():
    expected = "in.csv: could not read it or write out.parquet: bad row"
    with pytest.raises(DataError, match=expected), reading("in.csv", "could not read it or write out.parquet"):
        raise ValueError("bad row")


def test_a_data_error_passes_unchanged_and_other_failures_are_not_the_users_file():
    original = DataError("in.csv: row 3 has NaN")
    with pytest.raises(DataError) as err, reading("in.csv"):
        raise original
    assert err.value is original
    with pytest.raises(RemoteFailure, match="object store full"), reading("in.csv"):
        raise RemoteFailure(MemoryError(), "object store full")


def test_a_refused_cell_raised_in_a_ray_task_is_recovered_from_the_text():
    from rayline.data.errors import remote_data_error

    text = "ray::MapBatches()\nrayline.data.values.RefusedValue: feature column 'a': row 3 holds 'x', expected a number"
    assert remote_data_error(RuntimeError(text)) == "feature column 'a': row 3 holds 'x', expected a number"
