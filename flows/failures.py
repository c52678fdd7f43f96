"""Readable failures for flow runs.

A domain error (``MonolidarError``: bad input, bad teacher, store conflict, …) is the user's to fix, so
its flow run should end Failed with the one-line reason as the state message and a single log line, the
way the CLI prints it. Prefect's engine instead logs the exception with its traceback, then — when the
run came from a deployment — the subprocess entry point logs a second traceback headed "Engine
execution exited with unexpected exception", which reads like a crash.

``readable_failures`` goes under ``@flow``. On a ``MonolidarError`` it returns a ``Failed`` state whose
message is ``"<ErrorType>: <first line>"`` and which carries the exception, so a direct caller (the CLI,
a parent flow) still gets the same exception raised. The engine logs the final state once ("Finished in
state Failed('InputError: …')"); the records Prefect would add afterwards with a traceback of that same
exception are dropped by a logging filter. Any other exception passes through untouched and keeps its
traceback.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, TypeVar

from tasks.errors import MonolidarError

F = TypeVar("F", bound=Callable[..., Any])

# Loggers that report an exception escaping a flow run: the flow-run logger (per-run messages, including
# run_flow's "Engine execution exited with unexpected exception"), the subprocess entry point's, and the
# task-run logger (a domain error raised inside a task, e.g. a malformed file read by the task, is logged there
# with its traceback before it reaches the flow).
_ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.flow_engine", "prefect.engine", "prefect.task_runs")


def reason(exc: BaseException) -> str:
    """``"InputError: <first line of the message>"`` — the one-line form used for state messages."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _drop_domain_tracebacks(record: logging.LogRecord) -> bool:
    """Logging filter: drop a record whose traceback is a domain error (its reason is already the final
    state's message); keep everything else."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, MonolidarError)


def install_log_filter() -> None:
    """Attach the filter to Prefect's engine loggers (idempotent; the process that runs flows calls it)."""
    for name in _ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if _drop_domain_tracebacks not in logger.filters:
            logger.addFilter(_drop_domain_tracebacks)


def readable_failures(fn: F) -> F:
    """Decorator for flow functions (place it directly under ``@flow``): domain errors end the run Failed
    with a one-line message; other exceptions propagate unchanged."""
    from prefect.states import Failed

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        install_log_filter()
        try:
            return fn(*args, **kwargs)
        except MonolidarError as exc:
            return Failed(message=reason(exc), data=exc)

    return wrapper  # type: ignore[return-value]
