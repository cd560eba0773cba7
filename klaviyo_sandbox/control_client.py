"""``ControlClient``: the Python side of the sandbox control API (``/_sandbox/...``, see ``control.py``).

Tests use it (as ``sb.control``) to change the world between pipeline runs::

    sb.control.update_profile(pid, {"first_name": "Zed"})           # bumps "updated"
    sb.control.insert_event(pid, "Placed Order", datetime="2024-01-01T00:00:00+00:00", value=10)
    sb.control.delete("list", list_id)                              # gone from the API; members 404
    sb.control.remove_members("list", list_id, [pid])
    sb.control.set_faults({"GET /api/profiles": {"status": 503, "rate": 0.5}})
    sb.control.set_rate_limits(enabled=False)
    sb.control.records("profile")                                   # ground truth
    conn = sb.control.create_connection(); sb.control.authorize_connection(conn["connection_id"])

Every call authenticates with an account's private API key, which also selects the account;
``for_account(api_key)`` returns a client for another account of the same sandbox.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable

import requests

PREFIX = "/_sandbox"


class ControlError(RuntimeError):
    """The control API refused a call (the message carries its status and explanation)."""


class ControlClient:
    """HTTP client of one sandbox's control API, acting on the account that ``api_key`` belongs to."""

    def __init__(self, base_url: str, api_key: str, session: requests.Session | None = None, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.session = session or requests.Session()
        self.timeout = timeout

    def for_account(self, api_key: str) -> ControlClient:
        """A client for another account of the same sandbox (sharing the HTTP session)."""
        return ControlClient(self.base_url, api_key, self.session, self.timeout)

    def __repr__(self) -> str:  # never show the key
        return f"ControlClient({self.base_url!r})"

    # -- plumbing --------------------------------------------------------------------------
    def _call(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        response = self.session.request(
            method, f"{self.base_url}{PREFIX}{path}", json=json, params=params, timeout=self.timeout,
            headers={"Authorization": f"Klaviyo-API-Key {self.api_key}"},
        )
        if response.status_code >= 400:
            try:
                detail = response.json().get("error", response.text)
            except ValueError:
                detail = response.text
            raise ControlError(f"{method} {PREFIX}{path} -> {response.status_code}: {detail}")
        return response.json() if response.content else None

    @staticmethod
    def _iso(value: str | dt.datetime | None) -> str | None:
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.timezone.utc)
            return value.isoformat()
        return value

    # -- ground truth ------------------------------------------------------------------------
    def account(self) -> dict[str, Any]:
        """The account this client acts on: ``{"id": ...}``."""
        return self._call("GET", "/account")

    def records(self, type_: str) -> list[dict[str, Any]]:
        """Every stored record of a type (``{"type", "id", "attributes", "relationships"}``), in insertion order."""
        return self._call("GET", f"/records/{type_}")["data"]

    def record(self, type_: str, id_: str) -> dict[str, Any] | None:
        """One stored record, or None when it does not exist."""
        try:
            return self._call("GET", f"/records/{type_}/{id_}")["data"]
        except ControlError as exc:
            if "-> 404" in str(exc):
                return None
            raise

    def members(self, group_type: str, group_id: str) -> list[dict[str, Any]]:
        """Members of a list/segment: ``[{"profile_id", "joined_at"}]``."""
        return self._call("GET", f"/members/{group_type}/{group_id}")["data"]

    # -- changing the world ------------------------------------------------------------------
    def insert(self, type_: str, attributes: dict[str, Any], relationships: dict[str, str] | None = None,
               id: str | None = None) -> str:
        """Insert any record directly; returns its id."""
        return self._call("POST", f"/records/{type_}",
                          {"attributes": attributes, "relationships": relationships or {}, "id": id})["data"]["id"]

    def update(self, type_: str, id_: str, attributes: dict[str, Any], touch: bool = True) -> dict[str, Any]:
        """Merge attributes into a record; ``touch`` bumps its ``updated``/``updated_at`` to now."""
        return self._call("PATCH", f"/records/{type_}/{id_}", {"attributes": attributes, "touch": touch})["data"]

    def update_profile(self, profile_id: str, attributes: dict[str, Any] | None = None,
                       properties: dict[str, Any] | None = None) -> dict[str, Any]:
        """Change a profile's attributes and/or custom properties (merged key by key); bumps ``updated``."""
        attrs = dict(attributes or {})
        if properties:
            attrs["properties"] = properties
        return self.update("profile", profile_id, attrs)

    def insert_event(self, profile_id: str, metric: str, datetime: str | dt.datetime | None = None,
                     properties: dict[str, Any] | None = None, value: float | None = None,
                     unique_id: str | None = None) -> str:
        """Insert an event now, possibly backdated (``datetime`` in the past = a late-arriving event); returns its id.

        ``metric`` is a metric name (created if new) or an existing metric id.
        """
        return self._call("POST", "/events", {
            "profile_id": profile_id, "metric": metric, "datetime": self._iso(datetime),
            "properties": properties or {}, "value": value, "unique_id": unique_id})["data"]["id"]

    def delete(self, type_: str, id_: str) -> bool:
        """Delete any resource (list, segment, campaign, flow, template, tag, catalog item, coupon, profile ...)."""
        return self._call("DELETE", f"/records/{type_}/{id_}")["deleted"]

    def add_members(self, group_type: str, group_id: str, profile_ids: Iterable[str],
                    joined_at: str | dt.datetime | None = None) -> int:
        """Add profiles to a list or segment; returns how many were new."""
        return self._call("POST", f"/members/{group_type}/{group_id}",
                          {"profile_ids": list(profile_ids), "joined_at": self._iso(joined_at)})["changed"]

    def remove_members(self, group_type: str, group_id: str, profile_ids: Iterable[str]) -> int:
        """Remove profiles from a list or segment; returns how many were members."""
        return self._call("DELETE", f"/members/{group_type}/{group_id}", {"profile_ids": list(profile_ids)})["changed"]

    def complete_jobs(self) -> int:
        """Finish every pending bulk import job now; returns how many completed."""
        return self._call("POST", "/jobs/complete")["completed"]

    # -- behaviour ---------------------------------------------------------------------------
    def set_faults(self, faults: dict[str, Any] | None) -> dict[str, Any]:
        """Replace the fault configuration (same shape as ``Sandbox(faults=...)``); None/{} clears it."""
        return self._call("PUT", "/faults", {"faults": faults or {}})

    def set_rate_limits(self, enabled: bool | None = None, scale: float | None = None) -> dict[str, Any]:
        """Switch rate limiting on/off and/or change the window time scale (e.g. 0.1 = ten times shorter)."""
        return self._call("PUT", "/rate-limits", {"enabled": enabled, "scale": scale})

    def clock(self) -> str:
        """The sandbox's current time (ISO 8601)."""
        return self._call("GET", "/clock")["now"]

    def set_clock(self, now: str | dt.datetime | None = None, advance_seconds: float | None = None) -> str:
        """Freeze the sandbox clock at ``now`` (None unfreezes) or move it forward; returns the new time."""
        payload: dict[str, Any] = {"advance_seconds": advance_seconds} if advance_seconds is not None else {"now": self._iso(now)}
        return self._call("PUT", "/clock", payload)["now"]

    # -- Maton connections -------------------------------------------------------------------
    def connections(self) -> list[dict[str, Any]]:
        """Every Maton connection with the account it reaches (``account_id``)."""
        return self._call("GET", "/maton/connections")["connections"]

    def create_connection(self, account_id: str | None = None, status: str = "PENDING") -> dict[str, Any]:
        """A new Maton klaviyo connection (PENDING by default; ACTIVE needs ``account_id``, default: this account)."""
        return self._call("POST", "/maton/connections", {"account_id": account_id, "status": status})["connection"]

    def authorize_connection(self, connection_id: str, account_id: str | None = None) -> dict[str, Any]:
        """Complete the OAuth step: the connection becomes ACTIVE, reaching ``account_id`` (default: this account)."""
        return self._call("POST", f"/maton/connections/{connection_id}/authorize", {"account_id": account_id})["connection"]

    def revoke_connection(self, connection_id: str) -> dict[str, Any]:
        """The connection's OAuth grant fails (status FAILED); the gateway answers 400 for it."""
        return self._call("POST", f"/maton/connections/{connection_id}/revoke", {})["connection"]
