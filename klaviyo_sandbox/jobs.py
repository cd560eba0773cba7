"""Bulk profile import jobs (``bulk_import_profiles``): queued → processing → complete.

A job is accepted with status ``queued``; it moves on as the client polls it (the first poll
shows ``processing``, the ``complete_after_polls``-th poll completes it) or as sandbox time passes
(``complete_after_seconds`` after creation, checked whenever jobs are read).  The profiles are
written when the job completes — so, as on Klaviyo, they are not readable right after the 202.
Each profile is upserted by its identifiers with bulk-import semantics (``null`` is ignored);
a profile that fails (invalid email/phone, no identifier, conflicting identifiers) becomes an
``import-error`` with a JSON pointer into the original payload, and counts in ``failed_count``.
Successful profiles are added to the job's lists (``relationships.lists``).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from klaviyo_sandbox.identity import WriteError, check_profile_attributes, upsert_profile
from klaviyo_sandbox.store import Store, iso

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

    @property
    def total_count(self) -> int:
        return len(self.profiles)

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
    """The bulk import jobs of one sandbox (all accounts), thread-safe."""

    def __init__(self, store: Store, complete_after_polls: int = 2, complete_after_seconds: float = 2.0):
        self.store = store
        self.complete_after_polls = complete_after_polls
        self.complete_after_seconds = complete_after_seconds
        self._jobs: dict[str, ImportJob] = {}
        self._lock = threading.RLock()

    def submit(self, account: str, profiles: list[dict[str, Any]], list_ids: list[str]) -> ImportJob:
        job = ImportJob(id=uuid.uuid4().hex[:26].upper(), account=account, created_at=self.store.now(),
                        profiles=profiles, list_ids=list_ids)
        with self._lock:
            self._jobs[job.id] = job
        return job

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
            for job in pending:
                self._complete(job)
        return len(pending)

    def _advance(self, job: ImportJob) -> None:
        if job.status == "complete":
            return
        elapsed = (self.store.now() - job.created_at).total_seconds()
        if job.polls >= self.complete_after_polls or elapsed >= self.complete_after_seconds:
            self._complete(job)
        elif job.polls >= 1 and job.status == "queued":
            job.status, job.started_at = "processing", self.store.now()

    def _complete(self, job: ImportJob) -> None:
        job.started_at = job.started_at or self.store.now()
        for index, entry in enumerate(job.profiles):
            pointer = f"/data/attributes/profiles/data/{index}"
            try:
                attrs = check_profile_attributes(entry.get("attributes"), pointer + "/attributes")
                meta = entry.get("meta") or {}
                profile_id, _ = upsert_profile(self.store, job.account, attrs, profile_id=entry.get("id") or None,
                                               nulls_clear=False, patch_properties=meta.get("patch_properties"))
            except WriteError as exc:
                where = exc.pointer or "/data"
                if not where.startswith(pointer):  # a pointer into a single-profile document
                    where = pointer + where[len("/data"):] if where.startswith("/data") else pointer
                job.errors.append(ImportError_(str(uuid.uuid4()), exc.code, exc.title, exc.detail, where, entry))
                continue
            if profile_id not in job.profile_ids:
                job.profile_ids.append(profile_id)
        for list_id in job.list_ids:
            if self.store.exists(job.account, "list", list_id):
                self.store.add_members(job.account, "list", list_id, job.profile_ids)
                self.store.update(job.account, "list", list_id, {})
        job.status, job.completed_at = "complete", self.store.now()
