"""Bulk profile import jobs (``bulk_import_profiles``): queued → processing → complete.

A job is accepted with status ``queued`` and processed in the background, as on Klaviyo: each
account's jobs run one after another in the order they arrived, on a worker thread, whether or
not anyone polls them; a job shows ``processing`` while its profiles are written and ``complete``
once they are all written.

``start="on_poll"`` makes progress poll-driven and deterministic, for tests of the states
themselves: the first poll starts processing, the ``complete_after_polls``-th poll (or any read
``complete_after_seconds`` after creation) completes the job, waiting for its writes; a
completed job starts the account's oldest queued one, and a job whose processing has finished
shows ``complete`` at the next read.  Either way the 202 shows the job ``queued``.

The whole job is one batch upsert (``identity.import_profiles``): each profile is upserted by its
identifiers with bulk-import semantics (``null`` is ignored), exactly as one by one; a profile
that fails (invalid email/phone, no identifier, conflicting identifiers) becomes an
``import-error`` with a JSON pointer into the original payload, and counts in ``failed_count``.
Successful profiles are added to the job's lists (``relationships.lists``).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from klaviyo_sandbox.identity import WriteError, check_profile_attributes, import_profiles
from klaviyo_sandbox.store import MEMBERS, Store, iso

MAX_PROFILES = 10_000
MAX_PAYLOAD_BYTES = 5 * 1024 * 1024
JOB_TTL = dt.timedelta(days=7)


@dataclass
class ImportError_:
    id: str
    code: str
    title: str
    detail: str
    pointer: str
    original_payload: dict[str, Any] | None

    def resource(self) -> dict[str, Any]:
        return {"type": "import-error", "id": self.id,
                "attributes": {"code": self.code, "title": self.title, "detail": self.detail,
                               "source": {"pointer": self.pointer}, "original_payload": self.original_payload}}


@dataclass
class ImportJob:
    id: str
    account: str
    created_at: dt.datetime
    profiles: list[dict[str, Any]]
    list_ids: list[str]
    status: str = "queued"
    polls: int = 0
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    profile_ids: list[str] = field(default_factory=list)
    errors: list[ImportError_] = field(default_factory=list)
    worker: threading.Thread | None = field(default=None, repr=False)
    failure: BaseException | None = field(default=None, repr=False)

    total_count: int = 0

    def attributes(self) -> dict[str, Any]:
        done = self.status == "complete"
        return {
            "status": self.status,
            "created_at": iso(self.created_at),
            "total_count": self.total_count,
            "completed_count": len(self.profile_ids) if done else 0,
            "failed_count": len(self.errors) if done else 0,
            "completed_at": iso(self.completed_at),
            "expires_at": iso(self.created_at + JOB_TTL),
            "started_at": iso(self.started_at),
        }


class ImportJobs:
    """The bulk import jobs of one sandbox (all accounts), thread-safe.

    ``start``: ``"on_submit"`` (Klaviyo's way: background processing in arrival order) or
    ``"on_poll"`` (deterministic progress driven by reads, see the module docstring)."""

    def __init__(self, store: Store, complete_after_polls: int = 2, complete_after_seconds: float = 2.0,
                 start: Literal["on_submit", "on_poll"] = "on_submit"):
        if start not in ("on_submit", "on_poll"):
            raise ValueError(f"start must be 'on_submit' or 'on_poll', not {start!r}")
        self.store = store
        self.start = start
        self.complete_after_polls = complete_after_polls
        self.complete_after_seconds = complete_after_seconds
        self._jobs: dict[str, ImportJob] = {}
        self._queues: dict[str, deque[ImportJob]] = {}  # on_submit: per account, jobs not yet started
        self._workers: dict[str, threading.Thread] = {}  # on_submit: the account's running worker
        self._lock = threading.RLock()
        self._closed = False

    def submit(self, account: str, profiles: list[dict[str, Any]], list_ids: list[str]) -> ImportJob:
        """Register a ``queued`` job; call ``schedule`` once its 202 is built."""
        job = ImportJob(id=uuid.uuid4().hex[:26].upper(), account=account, created_at=self.store.now(),
                        profiles=profiles, list_ids=list_ids, total_count=len(profiles))
        with self._lock:
            self._jobs[job.id] = job
        return job

    def schedule(self, job: ImportJob) -> None:
        """Queue a submitted job for background processing (``on_submit``; a no-op ``on_poll``)."""
        if self.start != "on_submit":
            return
        with self._lock:
            self._queues.setdefault(job.account, deque()).append(job)
            if job.account not in self._workers:
                worker = threading.Thread(target=self._drain, args=(job.account,), daemon=True,
                                          name=f"import-jobs-{job.account}")
                self._workers[job.account] = worker
                worker.start()

    def _drain(self, account: str) -> None:
        """Process the account's queued jobs one after another, until none is left (or closed)."""
        try:
            while True:
                with self._lock:
                    queue = self._queues.get(account)
                    if not queue or self._closed:
                        self._workers.pop(account, None)
                        return
                    job = queue.popleft()
                    job.status, job.started_at = "processing", self.store.now()
                self._process(job)
                with self._lock:
                    if job.failure is None:
                        job.status, job.completed_at = "complete", self.store.now()
        finally:
            self.store.release_cursor()  # in this thread, before it ends (see Store.release_cursor)

    def close(self) -> None:
        """Stop starting jobs and wait for the ones being processed (their threads write to the store)."""
        with self._lock:
            self._closed = True
            workers = list(self._workers.values()) + [j.worker for j in self._jobs.values() if j.worker is not None]
        for worker in workers:
            worker.join()

    def get(self, account: str, job_id: str, poll: bool = False) -> ImportJob | None:
        """A job of ``account``; ``poll=True`` (a client GET of the job) moves it along."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.account != account:
                return None
            if poll:
                job.polls += 1
            self._advance(job)
            return job

    def list(self, account: str) -> list[ImportJob]:
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.account == account]
            for job in jobs:
                self._advance(job)
        return sorted(jobs, key=lambda j: (j.created_at, j.id))

    def complete_all(self) -> int:
        """Finish every pending job now (control API); returns how many completed."""
        with self._lock:
            pending = [j for j in self._jobs.values() if j.status != "complete"]
            if self.start == "on_poll":
                for job in pending:
                    self._complete(job)
            workers = list(self._workers.values())
        for worker in workers:
            worker.join()
        for job in pending:
            if job.failure is not None:
                raise job.failure
        return len(pending)

    def _advance(self, job: ImportJob) -> None:
        if job.failure is not None:
            raise job.failure
        if job.status == "complete" or self.start == "on_submit":
            return
        elapsed = (self.store.now() - job.created_at).total_seconds()
        finished = job.status == "processing" and job.worker is not None and not job.worker.is_alive()
        if job.polls >= self.complete_after_polls or elapsed >= self.complete_after_seconds or finished:
            self._complete(job)
        elif job.polls >= 1 and job.status == "queued":
            self._start(job)

    def _start(self, job: ImportJob) -> None:
        job.status, job.started_at = "processing", self.store.now()
        job.worker = threading.Thread(target=self._process_in_thread, args=(job,), name=f"import-job-{job.id}",
                                      daemon=True)
        job.worker.start()

    def _complete(self, job: ImportJob) -> None:
        """``on_poll``: finish the job: wait for its worker (started when it began processing), or
        do the work now.  Then the account's oldest queued job starts processing, as a job queue
        works through a backlog: a client that submitted several jobs finds the next one under way."""
        if job.worker is None:
            self._process(job)
        else:
            job.worker.join()
        if job.failure is not None:
            raise job.failure
        job.status, job.completed_at = "complete", self.store.now()
        waiting = [j for j in self._jobs.values() if j.account == job.account and j.status == "queued"]
        if waiting:
            self._start(min(waiting, key=lambda j: (j.created_at, j.id)))

    def _process_in_thread(self, job: ImportJob) -> None:
        try:
            self._process(job)
        finally:
            self.store.release_cursor()

    def _process(self, job: ImportJob) -> None:
        """Write the job's profiles (one batch upsert) and list memberships; records a failure on the job."""
        try:
            self._write(job)
        except BaseException as exc:  # noqa: BLE001 - raised by the next read of the job
            job.failure = exc
        job.profiles = []  # written: import errors keep their own payloads; free the rest

    def _write(self, job: ImportJob) -> None:
        job.started_at = job.started_at or self.store.now()
        errors: dict[int, ImportError_] = {}
        items, positions = [], []
        for index, entry in enumerate(job.profiles):
            try:
                attrs = check_profile_attributes(entry.get("attributes"), f"{_POINTER}/{index}/attributes")
            except WriteError as exc:
                errors[index] = _import_error(exc, index, entry)
                continue
            meta = entry.get("meta") or {}
            items.append((entry.get("id") or None, attrs, meta.get("patch_properties")))
            positions.append(index)
        profile_ids: dict[str, None] = {}
        for index, result in zip(positions, import_profiles(self.store, job.account, items)):
            if isinstance(result, WriteError):
                errors[index] = _import_error(result, index, job.profiles[index])
            else:
                profile_ids.setdefault(result)
        job.errors = [errors[i] for i in sorted(errors)]
        job.profile_ids = list(profile_ids)
        for list_id in job.list_ids:
            with self.store.lock:
                if self.store.exists(job.account, "list", list_id):
                    self.store.link_many(job.account, MEMBERS["list"], list_id, job.profile_ids)
                    self.store.update(job.account, "list", list_id, {})


_POINTER = "/data/attributes/profiles/data"


def _import_error(exc: WriteError, index: int, entry: dict[str, Any]) -> ImportError_:
    """The import-error of profile ``index``, its pointer rebased from a single-profile document."""
    pointer = f"{_POINTER}/{index}"
    where = exc.pointer or "/data"
    if not where.startswith(pointer):
        where = pointer + where[len("/data"):] if where.startswith("/data") else pointer
    return ImportError_(str(uuid.uuid4()), exc.code, exc.title, exc.detail, where, entry)
