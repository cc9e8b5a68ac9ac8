"""Failure policy shared by every stage task: what is retried, how often, how long a GPU call may take.

Only transient failures are retried — a dropped connection, a storage timeout — because they may
pass; a bad input fails the same way every time, and retrying it only delays the report. A GPU
out-of-memory error is handled inside the LipDub stage (one retry with lighter settings,
`dubflow.tasks.lipdub`), not here.
"""

from __future__ import annotations

import os

from botocore.exceptions import ConnectionError as BotocoreConnectionError
from prefect import Task
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import exponential_backoff

from dubflow.models.profiles import ProfileError

# Socket-level failures (ConnectionError covers refused/reset/aborted) and botocore's endpoint,
# connect and read timeouts. Not TimeoutError: that is also how a stage's own time limit ends.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, BotocoreConnectionError)

LIPDUB_TIMEOUT_ENV = "DUBFLOW_LIPDUB_TIMEOUT_S"
# A 1080p 10-second shot takes minutes on an H100; an hour means the call is hung, not slow.
DEFAULT_LIPDUB_TIMEOUT_S = 3600.0


def is_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect's retry condition: retry a failed attempt only if its error may pass by itself."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, TRANSIENT_ERRORS)


# Two more attempts, 10 s then 20 s later (±50 % jitter so that many failed tasks do not return at once).
STAGE_RETRIES: dict = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": is_transient,
}


def lipdub_timeout_s() -> float:
    """How long one LipDub take may run before its pair is failed (``$DUBFLOW_LIPDUB_TIMEOUT_S``)."""
    raw = os.environ.get(LIPDUB_TIMEOUT_ENV, str(DEFAULT_LIPDUB_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise ProfileError(f"{LIPDUB_TIMEOUT_ENV}={raw!r} is not a positive number of seconds; "
                           f"unset it for the default ({DEFAULT_LIPDUB_TIMEOUT_S:g} s)")
    return seconds
