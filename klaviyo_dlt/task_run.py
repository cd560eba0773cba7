"""One task's sync: run it, retry what is transient, stop at once on what is not, report what it did.

* The sync is the project's ``run_sync`` in a temporary dlt working folder: its incremental state is
  restored from the destination at the start, so workers need no persistent disk.
* Failures are classified (``klaviyo_source.cli_errors.classify``).  Rejected credentials
  (401/403) and configuration errors raise ``FatalSyncError``: no retry here, and the Airflow task
  turns it into a failure without Airflow retries.  Anything else is retried in the task with
  exponential backoff (dlt's ``retry_load`` decides which pipeline steps may repeat), then
  re-raised as ``TransientSyncError`` for Airflow's own retries.
* The outcome is one log line and a JSON-able summary (the task's XCom): the ``SyncResult`` fields
  (rows per table, load ids, time ...) plus the HTTP requests per endpoint and 429 waits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import tempfile
from typing import Any, Callable

from dlt.pipeline.helpers import retry_load
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from klaviyo_source.cli_errors import AuthError, CliError, UsageError
from klaviyo_source.pipeline_runner import SyncOptions, SyncResult, run_sync
from klaviyo_source.progress import SyncProgress

log = logging.getLogger("klaviyo_dlt")

ATTEMPTS = 3
RETRY_WAIT = wait_exponential(multiplier=2, min=2, max=30)
PROGRESS_PERIOD_SECONDS = 30.0


class FatalSyncError(Exception):
    """Retrying cannot help (credentials rejected, configuration wrong); the message is one line."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class TransientSyncError(Exception):
    """The sync failed for a reason a later attempt may not meet; the message is one line."""


def is_fatal(error: BaseException) -> bool:
    """Credentials rejected (401/403) or configuration wrong: the same run would fail again."""
    return isinstance(error, (UsageError, AuthError))


def _retryable(error: BaseException) -> bool:
    if is_fatal(error):
        return False
    # dlt's own rule on the underlying failure: extract and load may repeat, normalize may not,
    # and dlt's terminal exceptions never do
    return retry_load(("extract", "load"))(error.__cause__ or error)


def run_task(opts: SyncOptions, label: str, window: dict[str, Any] | None = None, *, attempts: int = ATTEMPTS,
             wait: Any = RETRY_WAIT, runner: Callable[..., SyncResult] = run_sync) -> dict[str, Any]:
    """Run one sync in a temporary working folder, retrying transient failures.

    Args:
        opts: what to sync (``pipelines_dir`` is replaced by a temporary folder).
        label: how the logs name the task (group or account).
        window: the run's window (``RunWindow.as_dict()``), copied into the summary.
        attempts: attempts for transient failures (1: no retry in the task).
        wait: tenacity wait strategy between attempts.
        runner: the sync function (``run_sync``).

    Returns:
        The summary (see ``summarize``).

    Raises:
        FatalSyncError: credentials rejected or configuration wrong (after the first attempt).
        TransientSyncError: every attempt failed otherwise.
    """
    workdir = tempfile.mkdtemp(prefix="klaviyo_dlt_")
    opts = dataclasses.replace(opts, pipelines_dir=workdir)
    progress = SyncProgress(mode="text", period=PROGRESS_PERIOD_SECONDS, stream=sys.stderr, label=label)

    def note_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("%s: attempt %d failed (%s); retrying", label, state.attempt_number, error)

    retrying = Retrying(stop=stop_after_attempt(max(1, attempts)), wait=wait, reraise=True,
                        retry=retry_if_exception(_retryable), before_sleep=note_retry)
    result: SyncResult | None = None
    tries = 0
    try:
        for attempt in retrying:
            with attempt:
                tries += 1
                result = runner(opts, progress=progress, raise_errors=True)
    except CliError as error:
        log.error("%s: %s", label, error)
        if is_fatal(error):
            raise FatalSyncError(str(error), error.exit_code) from None
        raise TransientSyncError(str(error)) from None
    finally:
        # the state lives in the destination; the local folder only held this run's packages
        shutil.rmtree(workdir, ignore_errors=True)
    assert result is not None
    summary = summarize(result, progress.snapshot(), window, tries)
    log.info("%s", summary_line(label, summary))
    return summary


def summarize(result: SyncResult, progress: dict[str, Any], window: dict[str, Any] | None,
              attempts: int) -> dict[str, Any]:
    """The task's report: every ``SyncResult`` field, plus requests and the window.

    Args:
        result: the sync's result.
        progress: ``SyncProgress.snapshot()`` of the run (requests per endpoint, 429 waits).
        window: the run's window, if any.
        attempts: how many attempts the task needed.

    Returns:
        JSON-able data (new ``SyncResult`` fields flow through unchanged).
    """
    summary = json.loads(json.dumps(dataclasses.asdict(result), default=str))
    requests = {k: int(v) for k, v in sorted(progress.get("requests", {}).items())}
    summary.update(
        requests=requests,
        requests_total=sum(requests.values()),
        waits_429=int(progress.get("waits_429", 0)),
        attempts=attempts,
        window=window or {"mode": "incremental"},
    )
    return summary


def summary_line(label: str, summary: dict[str, Any]) -> str:
    """One line: rows per table, requests per endpoint, 429 waits, time."""
    rows = ", ".join(f"{t}={n}" for t, n in sorted(summary.get("rows", {}).items())) or "none"
    requests = ", ".join(f"{e}={n}" for e, n in summary.get("requests", {}).items()) or "none"
    mode = (summary.get("window") or {}).get("mode", "incremental")
    return (f"{label} ({mode}): rows {rows} | requests {summary.get('requests_total', 0)} ({requests}), "
            f"429 waits {summary.get('waits_429', 0)} | {summary.get('seconds', 0):.1f}s, "
            f"attempt {summary.get('attempts', 1)}")
