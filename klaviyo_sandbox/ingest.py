"""Events and consent written through the API: ``create_event``, ``bulk_create_events``, ``bulk_subscribe_profiles``.

Events: the profile is found by id/identifiers (created when new; its given attributes update it,
``null`` ignored) and the metric by name (created on first use, integration "API"); the event's
``datetime`` is ``time`` (default now), ``event_properties`` carry Klaviyo's ``$value`` and
``$event_id`` (= ``unique_id``).  An event repeating a (profile, metric, unique_id) is dropped,
as Klaviyo de-duplicates on ``unique_id``.

Consent: ``bulk_subscribe_profiles`` sets ``subscriptions`` (served with
``additional-fields[profile]=subscriptions``) to SUBSCRIBED for the channels given, creating
profiles as needed, and adds them to the given list.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from klaviyo_sandbox.identity import (
    WriteError,
    check_profile_attributes,
    invalid,
    not_found,
    upsert_profile,
)
from klaviyo_sandbox.store import Store, iso, parse_iso

API_INTEGRATION = {"object": "integration", "id": "7FtS4J", "name": "API", "category": "API"}


def metric_id_for(store: Store, account: str, name: str, service: str | None = None) -> str:
    """The id of the metric called ``name``; created (integration "API" or ``service``) on first use."""
    with store.lock:
        row = store.execute("SELECT id FROM metrics WHERE account = ? AND name = ? ORDER BY seq LIMIT 1",
                            [account, name]).fetchone()
        if row:
            return row[0]
        integration = dict(API_INTEGRATION)
        if service:
            integration.update(name=service, category="Custom")
        return store.insert(account, "metric", {"name": name, "integration": integration})


def _event_time(value: Any, pointer: str) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.timezone.utc)
    try:
        return parse_iso(value)  # type: ignore[return-value]
    except (TypeError, ValueError):
        raise invalid(f"time must be an ISO 8601 datetime, got {value!r}", pointer) from None


def _profile_for_event(store: Store, account: str, profile: Any, pointer: str) -> str:
    data = (profile or {}).get("data") if isinstance(profile, dict) else None
    if not isinstance(data, dict):
        raise invalid("profile.data is required", pointer)
    attrs = dict(data.get("attributes") or {})
    attrs.pop("meta", None)
    check_profile_attributes(attrs, f"{pointer}/data/attributes")
    profile_id = data.get("id") or None
    profile_id, _ = upsert_profile(store, account, attrs, profile_id=profile_id, nulls_clear=False)
    return profile_id


def record_event(store: Store, account: str, profile_id: str, metric_id: str, attrs: dict[str, Any],
                 pointer: str = "/data/attributes") -> str | None:
    """Insert one event for a resolved profile and metric; None when ``unique_id`` repeats an event."""
    when = _event_time(attrs.get("time"), f"{pointer}/time")
    properties = dict(attrs.get("properties") or {})
    if not isinstance(attrs.get("properties", {}), dict):
        raise invalid("properties must be an object", f"{pointer}/properties")
    if attrs.get("value") is not None:
        properties["$value"] = attrs["value"]
    if attrs.get("value_currency"):
        properties["$value_currency"] = attrs["value_currency"]
    unique_id = attrs.get("unique_id")
    with store.lock:
        if unique_id:
            properties["$event_id"] = unique_id
            seen = store.execute(
                "SELECT 1 FROM events WHERE account = ? AND rel_profile = ? AND rel_metric = ?"
                " AND json_extract_string(attrs, '$.event_properties.\"$event_id\"') = ? LIMIT 1",
                [account, profile_id, metric_id, str(unique_id)]).fetchone()
            if seen:
                return None
        event_id = store.insert(account, "event", {
            "timestamp": int(when.timestamp()), "event_properties": properties, "datetime": iso(when),
            "uuid": str(uuid.uuid4())}, relationships={"metric": metric_id, "profile": profile_id})
        profile = store.get(account, "profile", profile_id)
        last = parse_iso(profile.attributes.get("last_event_date")) if profile else None
        if profile and (last is None or when > last):
            store.update(account, "profile", profile_id, {"last_event_date": iso(when)}, touch=False)
    return event_id


def create_event(store: Store, account: str, body: dict[str, Any]) -> str | None:
    """``POST /api/events`` (create_event): returns the new event id (None when de-duplicated)."""
    attrs = body["data"]["attributes"]
    metric = ((attrs.get("metric") or {}).get("data") or {}).get("attributes") or {}
    if not metric.get("name"):
        raise invalid("metric.data.attributes.name is required", "/data/attributes/metric/data/attributes/name")
    profile_id = _profile_for_event(store, account, attrs.get("profile"), "/data/attributes/profile")
    metric_id = metric_id_for(store, account, metric["name"], metric.get("service"))
    return record_event(store, account, profile_id, metric_id, attrs)


def bulk_create_events(store: Store, account: str, entries: list[dict[str, Any]]) -> int:
    """``POST /api/event-bulk-create-jobs``: every entry is (profile, events); returns events written.

    The whole batch is validated first so a bad entry rejects the request without partial writes.
    """
    base = "/data/attributes/events-bulk-create/data"
    for index, entry in enumerate(entries):
        attrs = entry.get("attributes") or {}
        for e_index, event in enumerate((attrs.get("events") or {}).get("data") or []):
            name = (((event.get("attributes") or {}).get("metric") or {}).get("data") or {}).get("attributes", {}).get("name")
            if not name:
                raise invalid("metric name is required",
                              f"{base}/{index}/attributes/events/data/{e_index}/attributes/metric/data/attributes/name")
    written = 0
    for index, entry in enumerate(entries):
        attrs = entry.get("attributes") or {}
        profile_id = _profile_for_event(store, account, attrs.get("profile"), f"{base}/{index}/attributes/profile")
        for e_index, event in enumerate((attrs.get("events") or {}).get("data") or []):
            event_attrs = event.get("attributes") or {}
            metric = event_attrs["metric"]["data"]["attributes"]
            metric_id = metric_id_for(store, account, metric["name"], metric.get("service"))
            pointer = f"{base}/{index}/attributes/events/data/{e_index}/attributes"
            if record_event(store, account, profile_id, metric_id, event_attrs, pointer):
                written += 1
    return written


_CHANNELS = {
    ("email", "marketing"): "can_receive_email_marketing",
    ("sms", "marketing"): "can_receive_sms_marketing",
    ("sms", "transactional"): "can_receive_sms_transactional",
    ("push", "marketing"): "can_receive_push_marketing",
}


def _subscribed(current: dict[str, Any] | None, flag: str, consented_at: str | None, now: str) -> dict[str, Any]:
    state = dict(current or {})
    state.update({flag: True, "consent": "SUBSCRIBED", "consent_timestamp": consented_at or now,
                  "last_updated": now, "method": "API", "method_detail": state.get("method_detail") or ""})
    if flag == "can_receive_email_marketing":
        state["suppression"] = []
        state.setdefault("list_suppressions", [])
    return state


def subscribe_profiles(store: Store, account: str, entries: list[dict[str, Any]], list_id: str | None) -> list[str]:
    """``POST /api/profile-subscription-bulk-create-jobs``: returns the subscribed profile ids."""
    if list_id and not store.exists(account, "list", list_id):
        raise not_found(f"A list with id {list_id} does not exist.")
    base = "/data/attributes/profiles/data"
    plans = []
    for index, entry in enumerate(entries):
        attrs = dict(entry.get("attributes") or {})
        subscriptions = attrs.pop("subscriptions", None) or {}
        attrs.pop("age_gated_date_of_birth", None)
        check_profile_attributes(attrs, f"{base}/{index}/attributes")
        if not subscriptions:
            raise invalid("subscriptions is required", f"{base}/{index}/attributes/subscriptions")
        if "email" in subscriptions and not attrs.get("email"):
            raise invalid("An email address is required to subscribe to email.", f"{base}/{index}/attributes/email")
        if "sms" in subscriptions and not attrs.get("phone_number"):
            raise invalid("A phone number is required to subscribe to SMS.", f"{base}/{index}/attributes/phone_number")
        plans.append((entry.get("id") or None, attrs, subscriptions))
    ids = []
    now = iso(store.now())
    for profile_id, attrs, subscriptions in plans:
        with store.lock:
            profile_id, _ = upsert_profile(store, account, attrs, profile_id=profile_id, nulls_clear=False)
            current = store.get(account, "profile", profile_id)
            state = dict((current.attributes.get("subscriptions") if current else None) or {})
            for channel, kinds in subscriptions.items():
                key = "mobile_push" if channel == "push" else channel
                channel_state = dict(state.get(key) or {})
                for kind, consent in (kinds or {}).items():
                    flag = _CHANNELS.get((channel, kind))
                    if flag and isinstance(consent, dict) and consent.get("consent") == "SUBSCRIBED":
                        channel_state[kind] = _subscribed(channel_state.get(kind), flag, consent.get("consented_at"), now)
                state[key] = channel_state
            store.update(account, "profile", profile_id, {"subscriptions": state})
        ids.append(profile_id)
    if list_id:
        store.add_members(account, "list", list_id, ids)
    return ids


__all__ = ["WriteError", "bulk_create_events", "create_event", "metric_id_for", "record_event", "subscribe_profiles"]
