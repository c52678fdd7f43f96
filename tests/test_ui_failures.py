"""Readable failures: a domain error ends a flow run Failed with a one-line reason and no traceback in the
run's logs; an unexpected error keeps its traceback. Real flow runs (prefect_harness)."""
from __future__ import annotations

import logging

import pytest
from prefect import flow

from flows.build import build_dataset
from flows.failures import readable_failures
from tasks.errors import InputError, StoreError


@flow(name="test-domain-error")
@readable_failures
def _store_conflict(path: str) -> int:
    """Fails the way a second concurrent build does."""
    raise StoreError(f"{path}: another build holds the lock\n(second line that must not reach the state)")


@flow(name="test-unexpected-error")
@readable_failures
def _bug() -> int:
    return {}["missing"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def prefect_records():
    """Every record Prefect's run loggers emit (they do not propagate to pytest's root handler). Filters that
    other tests left on them (the CLI's quiet mode) are lifted for the test; readable_failures adds its own."""
    handler = _Records()
    logger = logging.getLogger("prefect")
    old_level = logger.level
    run_loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.flow_engine", "prefect.engine")]
    old_filters = [list(lg.filters) for lg in run_loggers]
    for lg in run_loggers:
        lg.filters.clear()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(old_level)
    for lg, filters in zip(run_loggers, old_filters):
        lg.filters[:] = filters


def _tracebacks(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.exc_info and r.exc_info[1] is not None]


def test_domain_error_fails_the_run_with_its_one_line_reason(prefect_harness, prefect_records):
    state = _store_conflict("/data/x.zarr", return_state=True)
    assert state.is_failed()
    assert state.message == "StoreError: /data/x.zarr: another build holds the lock"
    with pytest.raises(StoreError):  # the exception is kept for whoever reads the result
        state.result()
    assert _tracebacks(prefect_records) == []
    mentioning = [r for r in prefect_records if "another build holds the lock" in r.getMessage()]
    assert len(mentioning) == 1, [r.getMessage() for r in mentioning]


def test_direct_call_still_raises_the_domain_error(prefect_harness):
    """The CLI calls flows directly and prints the exception's first line; that must not change."""
    with pytest.raises(StoreError, match="another build holds the lock"):
        _store_conflict("/data/x.zarr")


def test_unexpected_error_keeps_its_traceback(prefect_harness, prefect_records):
    state = _bug(return_state=True)
    assert state.is_failed()
    with pytest.raises(KeyError):
        state.result()
    assert any(isinstance(r.exc_info[1], KeyError) for r in _tracebacks(prefect_records))


def test_build_with_a_missing_folder_reads_clearly(prefect_harness, prefect_records, tmp_path):
    state = build_dataset(images=str(tmp_path / "no-photos"), out=str(tmp_path / "ds.zarr"), return_state=True)
    assert state.is_failed()
    assert state.message == f"InputError: {tmp_path / 'no-photos'}: input folder does not exist"
    with pytest.raises(InputError):
        state.result()
    assert _tracebacks(prefect_records) == []
