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
from typing import TYPE_CHECKING, Any, Callable

from dlt.pipeline.helpers import retry_load
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from klaviyo_source.cli_errors import AuthError, CliError, UsageError, classify
from klaviyo_source.pipeline_runner import SyncOptions, SyncResult, run_sync
from klaviyo_source.progress import SyncProgress

if TYPE_CHECKING:
    from klaviyo_dlt.dag_config import DagConfig

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
    """The sync failed for another reason (network, server, destination ...), so Airflow may try again;
    the message is one line."""


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
    # stdout: Airflow logs a task's stderr lines at error level
    progress = SyncProgress(mode="text", period=PROGRESS_PERIOD_SECONDS, stream=sys.stdout, label=label)

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


def run_reverse_sync(config: "DagConfig") -> dict[str, Any]:
    """Push the configured audience (``config.reverse_sync_config``) from the dataset into Klaviyo.

    Args:
        config: the DAG settings (reverse-sync file, destination, dataset, API root).

    Returns:
        The reverse-sync report as JSON-able data.

    Raises:
        FatalSyncError: a bad reverse-sync config, missing key or rejected credentials.
        TransientSyncError: any other failure.
    """
    from klaviyo_source.pipeline_runner import make_destination
    from klaviyo_source.reverse_sync.run import reverse_sync

    workdir = tempfile.mkdtemp(prefix="klaviyo_dlt_reverse_")
    try:
        destination = make_destination(config.destination, config.duckdb_file() if config.serial else None)
        report = reverse_sync(config.reverse_sync_config, destination=destination, dataset_name=config.dataset_name,
                              base_url=config.base_url, pipelines_dir=workdir)
    except Exception as exc:  # noqa: BLE001 - classified below
        error = exc if isinstance(exc, CliError) else classify(exc)
        log.error("reverse sync: %s", error)
        if is_fatal(error):
            raise FatalSyncError(str(error), error.exit_code) from None
        raise TransientSyncError(str(error)) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log.info("%s", report.summary().splitlines()[0])
    return json.loads(json.dumps(report.as_dict(), default=str))


SETUP_PIPELINE = "klaviyo_dlt_setup"


def prepare_dataset(config: "DagConfig") -> dict[str, Any]:
    """Create the dataset, its staging dataset and dlt's system tables if they are missing.

    The group tasks of one run load into one dataset in parallel; on a fresh PostgreSQL dataset
    their first loads would race to create the same schemas and ``_dlt_*`` tables
    (``CREATE ... IF NOT EXISTS`` is not safe against concurrent callers there).  This runs once
    before them, as dlt's Airflow helper runs its first task alone (``serialize_first_task``).

    Args:
        config: the DAG settings (destination and dataset).

    Returns:
        ``{"dataset": ..., "created": [what was missing]}``.

    Raises:
        FatalSyncError: destination configuration or credentials wrong.
        TransientSyncError: any other failure.
    """
    import dlt
    from dlt.destinations.exceptions import DatabaseUndefinedRelation
    from dlt.common.destination.exceptions import SqlClientNotAvailable

    from klaviyo_source.pipeline_runner import make_destination

    workdir = tempfile.mkdtemp(prefix="klaviyo_dlt_setup_")
    created: list[str] = []
    try:
        destination = make_destination(config.destination, config.duckdb_file() if config.serial else None)
        pipeline = dlt.pipeline(SETUP_PIPELINE, destination=destination, dataset_name=config.dataset_name,
                                pipelines_dir=workdir)
        try:
            with pipeline.sql_client() as sql:
                try:
                    sql.execute_sql(f"SELECT 1 FROM {sql.make_qualified_table_name('_dlt_loads')} WHERE 1 = 0")
                except DatabaseUndefinedRelation:
                    # an empty load creates the dataset and dlt's tables, and nothing else
                    pipeline.run([], table_name="_klaviyo_dlt_setup")
                    created.append(config.dataset_name)
                with sql.with_staging_dataset():
                    staging = None if sql.has_dataset() else sql.dataset_name
            if staging:
                # merges load through the staging dataset, which holds its own _dlt_version table
                if not pipeline.default_schema_name:
                    pipeline.run([], table_name="_klaviyo_dlt_setup")
                with pipeline.destination_client() as client, client.with_staging_dataset():
                    client.initialize_storage()
                    client.update_stored_schema()
                created.append(staging)
        except SqlClientNotAvailable:
            pass  # not a SQL destination: nothing is created concurrently
    except Exception as exc:  # noqa: BLE001 - classified below
        error = exc if isinstance(exc, CliError) else classify(exc)
        log.error("preparing the dataset: %s", error)
        if is_fatal(error):
            raise FatalSyncError(str(error), error.exit_code) from None
        raise TransientSyncError(str(error)) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log.info("dataset %s ready%s", config.dataset_name, f" (created {', '.join(created)})" if created else "")
    return {"dataset": config.dataset_name, "created": created}
