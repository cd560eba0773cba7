"""Klaviyo writes of the reverse sync, over the extraction's HTTP client (pacing, retries, auth).

* profiles: ``bulk_import_profiles`` jobs (≤10,000 profiles, ≤5MB), polled to completion,
  failures read from ``get_errors_for_bulk_import_profiles_job``;
* clearing: ``create_or_update_profile`` (POST /api/profile-import), where null clears;
* lists: ``get_lists`` by name / ``create_list``; ``add_profiles_to_list`` /
  ``remove_profiles_from_list`` (≤1000 profile ids per call);
* consent: ``bulk_subscribe_profiles`` (≤1000 profiles per job), only when explicitly mapped.

Per-row failures come back as values; auth, scope, network and unexpected request
failures raise ``ReverseSyncError`` with one line.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

import orjson
import requests

from klaviyo_sandbox.spec import load_spec
from klaviyo_source.masking import without_query

MAX_JOB_PROFILES = 10_000
MAX_JOB_BYTES = 5_000_000
MAX_LIST_IDS = 1_000  # add/remove_profiles_to/from_list
MAX_SUBSCRIBE = 1_000  # bulk_subscribe_profiles
MAX_FILTER_VALUES = 100  # get_profiles any(...) filter, one page
WRITE_ENDPOINTS = (
    ("POST", "/api/profile-bulk-import-jobs"),
    ("GET", "/api/profile-bulk-import-jobs/{job_id}"),
    ("GET", "/api/profile-bulk-import-jobs/{id}/import-errors"),
    ("POST", "/api/profile-import"),
    ("POST", "/api/lists/{id}/relationships/profiles"),
    ("POST", "/api/profile-subscription-bulk-create-jobs"),
    ("GET", "/api/lists"),
    ("POST", "/api/lists"),
    ("GET", "/api/profiles"),
    ("GET", "/api/lists/{id}/profiles"),
)
_POINTER_INDEX = re.compile(r"^/data/attributes/profiles/data/(\d+)")
_JOB_HEAD = b'{"data":{"type":"profile-bulk-import-job","attributes":{"profiles":{"data":['


class ReverseSyncError(RuntimeError):
    """The run cannot go on (auth, scope, network, a bad list...); the message is one line.
    ``status`` is Klaviyo's HTTP status when the failure is an answer (401, 403 ...)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def write_buckets() -> list[Any]:
    """Pacing buckets of the endpoints the reverse sync calls, with their limits read from the spec."""
    from klaviyo_source.client import Bucket, _path_regex
    from klaviyo_source.pacing import RateTier

    spec = load_spec()
    buckets = []
    for method, path in WRITE_ENDPOINTS:
        limit = spec.operation(method, path).rate_limit
        # the pacer keys on the path: POST/DELETE of list relationships share one bucket (same tier)
        buckets.append(Bucket(f"{method} {path}", _path_regex(path), RateTier(limit.burst_per_second,
                                                                                limit.steady_per_minute)))
    return buckets


def make_client(api_key: str, base_url: str, *, auth: str = "klaviyo-api-key", maton_connection: str | None = None,
                rate_limit_scale: float = 1.0, pacing: bool = True, **kwargs: Any) -> Any:
    """The extraction's ``KlaviyoClient`` with pacing buckets for the reverse-sync endpoints."""
    from klaviyo_source.client import KlaviyoClient

    return KlaviyoClient(api_key=api_key, base_url=base_url, auth=auth, maton_connection=maton_connection,
                         buckets=write_buckets(), pacing=pacing, rate_limit_scale=rate_limit_scale, **kwargs)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # a requests error quotes the URL: its query may filter by email
    return without_query(text.splitlines()[0]) if text else type(exc).__name__


@dataclass
class Failure:
    """A per-row failure reported by Klaviyo."""

    status: int
    code: str
    detail: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        extra = f" (duplicate_profile_id {self.meta['duplicate_profile_id']})" if "duplicate_profile_id" in self.meta else ""
        status = f"{self.status} " if self.status else ""
        return f"{status}{self.code}: {self.detail}{extra}"


class KlaviyoWriter:
    """Sends reverse-sync writes through a ``KlaviyoClient`` (its session paces and retries every attempt)."""

    def __init__(self, client: Any, poll_interval: float = 0.1, max_poll_interval: float = 3.0,
                 job_timeout: float = 900.0):
        self.client = client
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.job_timeout = job_timeout
        self.requests = 0

    # -- transport ------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, json: Any = None, body: bytes | None = None,
              params: dict[str, Any] | None = None) -> requests.Response:
        """One request; the document is ``json`` (serialised here) or ``body`` (already serialised)."""
        if json is not None:
            body = orjson.dumps(json)
        headers = {"content-type": "application/vnd.api+json"} if body is not None else None
        self.requests += 1
        try:
            return self.client.rest_client().request(path, method=method, params=params, headers=headers, data=body)
        except requests.RequestException as exc:
            raise ReverseSyncError(f"{method} {path}: network failure after retries: {_one_line(exc)}") from None

    def _fatal(self, response: requests.Response) -> ReverseSyncError:
        try:
            message = _one_line(self.client.error_for(response))
        except Exception:  # noqa: BLE001 - fall back to the status and Klaviyo's first error
            message = f"{response.status_code} {self._failure(response).detail}"
        return ReverseSyncError(message, response.status_code)

    @staticmethod
    def _failure(response: requests.Response) -> Failure:
        try:
            error = (orjson.loads(response.content).get("errors") or [{}])[0]
        except (orjson.JSONDecodeError, AttributeError):
            error = {}
        return Failure(response.status_code, error.get("code") or str(response.status_code),
                       error.get("detail") or error.get("title") or response.reason or "", error.get("meta") or {})

    def _document(self, method: str, path: str, *, json: Any = None, body: bytes | None = None,
                  params: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self._send(method, path, json=json, body=body, params=params)
        if response.status_code >= 400:
            raise self._fatal(response)
        return orjson.loads(response.content) if response.content else {}

    def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One GET through the client (its errors become one-line ``ReverseSyncError``)."""
        with self._fatal_errors("GET", path):
            self.requests += 1
            return self.client.get(path, params=params)

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every page of a list endpoint, following ``links.next`` with the client's paginator."""
        with self._fatal_errors("GET", path):
            for page in self.client.pages(path, params):
                self.requests += 1
                yield page

    @contextlib.contextmanager
    def _fatal_errors(self, method: str, path: str) -> Iterator[None]:
        from klaviyo_source.errors import KlaviyoSourceError

        try:
            yield
        except KlaviyoSourceError as exc:
            raise ReverseSyncError(_one_line(exc), getattr(exc, "status_code", None)) from exc
        except requests.RequestException as exc:
            raise ReverseSyncError(f"{method} {path}: network failure after retries: {_one_line(exc)}") from None

    # -- lists ----------------------------------------------------------------------------
    def find_list(self, name: str) -> str | None:
        """The id of the list with exactly this name (spec get_lists: filter equals(name,...))."""
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        document = self._get("/api/lists", params={"filter": f'equals(name,"{quoted}")'})
        for item in document.get("data") or []:
            if (item.get("attributes") or {}).get("name") == name:
                return item["id"]
        return None

    def create_list(self, name: str) -> str:
        document = self._document("POST", "/api/lists",
                                  json={"data": {"type": "list", "attributes": {"name": name}}})
        return document["data"]["id"]

    def add_to_list(self, list_id: str, profile_ids: list[str]) -> None:
        for start in range(0, len(profile_ids), MAX_LIST_IDS):
            chunk = profile_ids[start:start + MAX_LIST_IDS]
            self._document("POST", f"/api/lists/{list_id}/relationships/profiles",
                           json={"data": [{"type": "profile", "id": pid} for pid in chunk]})

    def remove_from_list(self, list_id: str, profile_ids: list[str]) -> None:
        """Remove up to 1000 profiles per call (spec remove_profiles_from_list)."""
        for start in range(0, len(profile_ids), MAX_LIST_IDS):
            chunk = profile_ids[start:start + MAX_LIST_IDS]
            self._document("DELETE", f"/api/lists/{list_id}/relationships/profiles",
                           json={"data": [{"type": "profile", "id": pid} for pid in chunk]})

    # -- profiles -------------------------------------------------------------------------
    def submit_import(self, profiles: list[str], list_id: str | None) -> str:
        """Create a bulk-import job (spec bulk_import_profiles) from ``profile`` resources as JSON
        text, without waiting for it; returns its id."""
        tail = b"]}}"
        if list_id:
            tail += b',"relationships":{"lists":{"data":[{"type":"list","id":' + orjson.dumps(list_id) + b"}]}}"
        body = _JOB_HEAD + ",".join(profiles).encode() + tail + b"}}"
        return self._document("POST", "/api/profile-bulk-import-jobs", body=body)["data"]["id"]

    def wait_import(self, job_id: str, submitted_at: float | None = None) -> dict[str, Any]:
        """Poll a bulk-import job until it is complete or cancelled; returns its attributes.

        The first poll is one poll interval after ``submitted_at`` (``time.monotonic()``; default
        now), so a job submitted ahead is polled at once; then the interval grows to its maximum."""
        attributes: dict[str, Any] = {}
        start = time.monotonic() if submitted_at is None else submitted_at
        interval = self.poll_interval
        due = start + interval
        while attributes.get("status") not in ("complete", "cancelled"):
            now = time.monotonic()
            if now - start > self.job_timeout:
                raise ReverseSyncError(f"bulk import job {job_id} not complete after {self.job_timeout:.0f}s")
            if due > now:
                time.sleep(due - now)
            attributes = self._get(f"/api/profile-bulk-import-jobs/{job_id}")["data"]["attributes"]
            interval = min(interval * 1.5, self.max_poll_interval)
            due = time.monotonic() + interval
        return attributes

    def import_failures(self, job_id: str, attributes: dict[str, Any], profiles: list[str]) -> dict[int, Failure]:
        """The failures of a finished job (``attributes`` from ``wait_import``) by index in the
        job's ``profiles`` (JSON text, as submitted)."""
        if attributes.get("status") == "cancelled":
            failure = Failure(0, "cancelled", f"bulk import job {job_id} was cancelled")
            return {i: failure for i in range(len(profiles))}
        if attributes.get("failed_count"):
            return self._import_errors(job_id, [orjson.loads(profile) for profile in profiles])
        return {}

    def _import_errors(self, job_id: str, profiles: list[dict[str, Any]]) -> dict[int, Failure]:
        by_identity = {}
        for index, profile in enumerate(profiles):
            for key in ("external_id", "email", "phone_number"):
                value = profile["attributes"].get(key)
                if value is not None:
                    by_identity.setdefault((key, value), index)
        failures: dict[int, Failure] = {}
        for page in self._pages(f"/api/profile-bulk-import-jobs/{job_id}/import-errors", {"page[size]": 100}):
            for error in page.get("data") or []:
                attrs = error.get("attributes") or {}
                failure = Failure(0, attrs.get("code") or "import_error", attrs.get("detail") or attrs.get("title") or "")
                match = _POINTER_INDEX.match(((attrs.get("source") or {}).get("pointer")) or "")
                index = int(match.group(1)) if match else None
                if index is None:  # fall back to the identifiers of the original payload
                    original = (attrs.get("original_payload") or {}).get("attributes") or {}
                    index = next((by_identity[(k, original[k])] for k in ("external_id", "email", "phone_number")
                                  if original.get(k) is not None and (k, original[k]) in by_identity), None)
                if index is not None and index < len(profiles):
                    failures[index] = failure
        return failures

    def profile_import(self, body: dict[str, Any]) -> tuple[str | None, Failure | None]:
        """POST /api/profile-import (create_or_update_profile): (profile id, None) or (None, per-row failure)."""
        response = self._send("POST", "/api/profile-import", json=body)
        if response.status_code in (200, 201):
            return orjson.loads(response.content)["data"]["id"], None
        if response.status_code in (400, 409):  # invalid value / duplicate_profile: this row only
            return None, self._failure(response)
        raise self._fatal(response)

    def lookup_profile_ids(self, identifier: str, values: list[str]) -> dict[str, str]:
        """Profile ids by identifier value (spec get_profiles: ``any(<identifier>,[...])``, 100 per call)."""
        found: dict[str, str] = {}
        for start in range(0, len(values), MAX_FILTER_VALUES):
            chunk = values[start:start + MAX_FILTER_VALUES]
            listed = ",".join(orjson.dumps(v).decode() for v in chunk)
            params = {"filter": f"any({identifier},[{listed}])", "page[size]": 100,
                      "fields[profile]": identifier}
            for page in self._pages("/api/profiles", params):
                for item in page.get("data") or []:
                    value = (item.get("attributes") or {}).get(identifier)
                    if value is not None:
                        found.setdefault(value.lower() if identifier == "email" else value, item["id"])
        return found

    # -- consent --------------------------------------------------------------------------
    def subscribe(self, profiles: list[dict[str, Any]]) -> None:
        """Explicit consent through bulk_subscribe_profiles, ≤1000 profiles per job.

        ``historical_import`` keeps a recorded past ``consented_at`` (and skips double opt-in
        emails for consent already collected); it is set only when every profile carries one.
        """
        for start in range(0, len(profiles), MAX_SUBSCRIBE):
            chunk = profiles[start:start + MAX_SUBSCRIBE]
            historical = all(_has_consented_at(p) for p in chunk)
            attributes: dict[str, Any] = {"profiles": {"data": chunk}}
            if historical:
                attributes["historical_import"] = True
            self._document("POST", "/api/profile-subscription-bulk-create-jobs",
                           json={"data": {"type": "profile-subscription-bulk-create-job", "attributes": attributes}})


def _has_consented_at(profile: dict[str, Any]) -> bool:
    subscriptions = profile["attributes"].get("subscriptions") or {}
    return all((channel.get("marketing") or {}).get("consented_at") for channel in subscriptions.values())


Item = TypeVar("Item")


def batches(items: Iterable[Item], size: Callable[[Item], int] = len, max_count: int = MAX_JOB_PROFILES,
            max_bytes: int = MAX_JOB_BYTES) -> Iterator[list[Item]]:
    """Consecutive groups of ``items`` (serialised profiles, or records whose ``size`` is their
    serialised profile's length) that fit one bulk-import job, by count and bytes; lazy."""
    envelope = 200  # the job document around the profiles array
    group: list[Item] = []
    total = envelope
    for item in items:
        weight = size(item) + 1
        if group and (len(group) >= max_count or total + weight > max_bytes):
            yield group
            group, total = [], envelope
        group.append(item)
        total += weight
    if group:
        yield group
