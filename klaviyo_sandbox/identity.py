"""Klaviyo's profile identity rules and attribute-merge semantics, shared by every profile write.

* ``email``, ``phone_number`` (E.164) and ``external_id`` identify a profile; invalid email/phone
  is a 400 pointing at the attribute.
* When the identifiers of one request point at two different existing profiles, the write is a
  409 ``duplicate_profile`` whose ``meta.duplicate_profile_id`` is the *other* profile.
* ``create_or_update_profile`` / ``update_profile``: ``null`` clears a field, an absent field
  is left unchanged, ``properties`` merge key by key, ``meta.patch_properties`` appends/unappends/unsets.
* ``bulk_import_profiles``: ``null`` values are ignored (Klaviyo documents that bulk import
  cannot clear a field).  ``import_profiles`` applies these rules to a whole batch in order
  against an in-memory view of the profiles it touches (one read, one insert, one update).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import orjson

from klaviyo_sandbox.errors import ApiError
from klaviyo_sandbox.store import Store, iso

IDENTIFIERS = ("email", "phone_number", "external_id")
PROFILE_ATTRIBUTES = frozenset(
    {"email", "phone_number", "external_id", "anonymous_id", "_kx", "first_name", "last_name", "organization",
     "locale", "title", "image", "location", "properties"}
)
LOCATION_FIELDS = ("address1", "address2", "city", "country", "latitude", "longitude", "region", "zip", "timezone", "ip")
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class WriteError(ApiError):
    """A Klaviyo JSON:API error raised by a write; adds ``meta`` (e.g. ``duplicate_profile_id``) to the error."""

    def __init__(self, status: int, code: str, title: str, detail: str, pointer: str | None = None,
                 meta: dict[str, Any] | None = None, parameter: str | None = None):
        super().__init__(status, code, title, detail, parameter=parameter, pointer=pointer)
        self.meta = meta or {}

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["errors"][0]["meta"] = dict(self.meta)
        return body


def invalid(detail: str, pointer: str | None = "/data") -> WriteError:
    return WriteError(400, "invalid", "Invalid input.", detail, pointer)


def not_found(detail: str) -> WriteError:
    return WriteError(404, "not_found", "Not found.", detail)


def check_profile_attributes(attrs: Any, pointer: str = "/data/attributes") -> dict[str, Any]:
    """Reject unknown attributes and malformed identifiers; returns the attributes dict."""
    if not isinstance(attrs, dict):
        raise invalid("attributes must be an object", pointer)
    for key in attrs:
        if key not in PROFILE_ATTRIBUTES:
            raise invalid(f"'{key}' is not a valid field for the resource 'profile'.", f"{pointer}/{key}")
    email, phone = attrs.get("email"), attrs.get("phone_number")
    if email is not None and (not isinstance(email, str) or not _EMAIL.match(email.strip())):
        raise invalid(f"Invalid email address: {email!r}", f"{pointer}/email")
    if phone is not None and (not isinstance(phone, str) or not _E164.match(phone)):
        raise invalid(f"Invalid phone number format (Example of a valid format: +12345678901): {phone!r}",
                      f"{pointer}/phone_number")
    location = attrs.get("location")
    if location is not None:
        if not isinstance(location, dict):
            raise invalid("location must be an object", f"{pointer}/location")
        for key in location:
            if key not in LOCATION_FIELDS:
                raise invalid(f"'{key}' is not a valid location field", f"{pointer}/location/{key}")
    if attrs.get("properties") is not None and not isinstance(attrs["properties"], dict):
        raise invalid("properties must be an object", f"{pointer}/properties")
    return attrs


def normalise(attrs: dict[str, Any]) -> dict[str, Any]:
    """Klaviyo stores emails trimmed and lower-cased."""
    if isinstance(attrs.get("email"), str):
        attrs = {**attrs, "email": attrs["email"].strip().lower()}
    return attrs


def duplicate(other_id: str, detail: str = "A profile already exists with one of these identifiers.") -> WriteError:
    return WriteError(409, "duplicate_profile", "Conflict.", detail, "/data/attributes",
                      meta={"duplicate_profile_id": other_id})


def identity_matches(store: Store, account: str, attrs: dict[str, Any]) -> dict[str, str]:
    """identifier name -> id of the existing profile holding that identifier value."""
    found = {}
    for name in IDENTIFIERS:
        value = attrs.get(name)
        if value:
            row = store.execute(f'SELECT id FROM profiles WHERE account = ? AND "{name}" = ? ORDER BY seq LIMIT 1',
                                [account, value]).fetchone()
            if row:
                found[name] = row[0]
    return found


def resolve_target(store: Store, account: str, attrs: dict[str, Any], profile_id: str | None = None) -> str | None:
    """The existing profile a write addresses (by id, else by identifiers), or None for a new one.

    Raises 409 ``duplicate_profile`` when identifiers point at a different profile than the target.
    """
    matches = identity_matches(store, account, attrs)
    return choose_target(matches, profile_id, lambda id_: store.exists(account, "profile", id_))


def choose_target(matches: dict[str, str], profile_id: str | None, exists: Callable[[str], bool]) -> str | None:
    """``profile_id`` (404 unless it ``exists``), else the profile the first matching identifier
    holds; 409 ``duplicate_profile`` when an identifier belongs to another profile."""
    if profile_id:
        if not exists(profile_id):
            raise not_found(f"A profile with id {profile_id} does not exist.")
        target: str | None = profile_id
    else:
        target = next((matches[name] for name in IDENTIFIERS if name in matches), None)
    for name in IDENTIFIERS:
        other = matches.get(name)
        if target and other and other != target:
            raise duplicate(other, f"A profile already exists with this {name}; it belongs to profile {other}.")
    return target


def _patch_properties(properties: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    if not patch:
        return properties
    result = dict(properties)
    for key, value in (patch.get("append") or {}).items():
        current = result.get(key)
        items = value if isinstance(value, list) else [value]
        base = current if isinstance(current, list) else ([] if current is None else [current])
        result[key] = base + items
    for key, value in (patch.get("unappend") or {}).items():
        items = value if isinstance(value, list) else [value]
        if isinstance(result.get(key), list):
            result[key] = [v for v in result[key] if v not in items]
    unset = patch.get("unset")
    for key in ([unset] if isinstance(unset, str) else unset or []):
        result.pop(key, None)
    return result


def merged_attributes(current: dict[str, Any], incoming: dict[str, Any], *, nulls_clear: bool,
                      patch_properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """The profile attributes after applying ``incoming`` to ``current`` (Klaviyo semantics, see module doc)."""
    result = dict(current)
    for key, value in incoming.items():
        if key in ("_kx", "anonymous_id"):
            continue
        if key == "location":
            location = dict(result.get("location") or {})
            if value is None:
                if nulls_clear:
                    location = {name: None for name in LOCATION_FIELDS}
            else:
                for name, sub in value.items():
                    if sub is not None or nulls_clear:
                        location[name] = sub
            result["location"] = location
        elif key == "properties":
            properties = dict(result.get("properties") or {})
            if value is None:
                if nulls_clear:
                    properties = {}
            else:
                for name, sub in value.items():
                    if sub is None and nulls_clear:
                        properties.pop(name, None)
                    elif sub is not None:
                        properties[name] = sub
            result["properties"] = properties
        elif value is not None or nulls_clear:
            result[key] = value
    if patch_properties:
        result["properties"] = _patch_properties(dict(result.get("properties") or {}), patch_properties)
    return result


_NEW_SERVED = {name: None for name in ("email", "phone_number", "external_id", "first_name", "last_name",
                                       "organization", "locale", "title", "image", "location", "properties",
                                       "last_event_date")}
_NEW_LOCATION = {name: None for name in LOCATION_FIELDS}


def new_served_attributes(incoming: dict[str, Any]) -> dict[str, Any]:
    """A new profile's served attributes: every one present (null when not given)."""
    base = dict(_NEW_SERVED)
    base["location"], base["properties"] = dict(_NEW_LOCATION), {}
    return merged_attributes(base, incoming, nulls_clear=False)


def new_profile_attributes(incoming: dict[str, Any]) -> dict[str, Any]:
    """A new profile's attributes, its default consent included."""
    profile = new_served_attributes(incoming)
    profile["subscriptions"] = default_subscriptions()
    return profile


def default_subscriptions() -> dict[str, Any]:
    """Consent of a profile nobody has subscribed yet (served with additional-fields[profile]=subscriptions)."""
    never = {"consent": "NEVER_SUBSCRIBED", "consent_timestamp": None, "last_updated": None, "method": None,
             "method_detail": ""}
    return {
        "email": {"marketing": {"can_receive_email_marketing": False, **never, "custom_method_detail": None,
                                "double_optin": None, "suppression": [], "list_suppressions": []}},
        "sms": {"marketing": {"can_receive_sms_marketing": False, **never},
                "transactional": {"can_receive_sms_transactional": False, **never}},
        "mobile_push": {"marketing": {"can_receive_push_marketing": False, "consent": "NEVER_SUBSCRIBED",
                                      "consent_timestamp": None}},
    }


def write_profile(store: Store, account: str, profile_id: str | None, attrs: dict[str, Any], *,
                  nulls_clear: bool, patch_properties: dict[str, Any] | None = None) -> tuple[str, bool]:
    """Create (``profile_id`` None) or update a profile; returns (id, created).  Bumps ``updated``."""
    with store.lock:
        if profile_id is None:
            return store.insert(account, "profile", new_profile_attributes(attrs)), True
        current = store.get(account, "profile", profile_id)
        if current is None:
            raise not_found(f"A profile with id {profile_id} does not exist.")
        served = {k: v for k, v in current.attributes.items() if k not in ("subscriptions", "predictive_analytics")}
        updated = merged_attributes(served, attrs, nulls_clear=nulls_clear, patch_properties=patch_properties)
        updated.pop("updated", None)
        # store.update merges ``properties`` key by key; reset it first so cleared keys really go
        store.update(account, "profile", profile_id, {"properties": None}, touch=False)
        store.update(account, "profile", profile_id, updated)
        return profile_id, False


def upsert_profile(store: Store, account: str, attrs: dict[str, Any], *, profile_id: str | None = None,
                   nulls_clear: bool, patch_properties: dict[str, Any] | None = None) -> tuple[str, bool]:
    """Resolve the target by id/identifiers (409 on conflicting identifiers) and create or update it."""
    attrs = normalise(attrs)
    with store.lock:
        target = resolve_target(store, account, attrs, profile_id)
        if target is None and not any(attrs.get(name) for name in (*IDENTIFIERS, "anonymous_id", "_kx")):
            raise invalid("One of email, phone_number or external_id is required to identify a profile.",
                          "/data/attributes")
        return write_profile(store, account, target, attrs, nulls_clear=nulls_clear, patch_properties=patch_properties)


_NEW_SEQ = 1 << 62  # in-batch order of the profiles a batch creates: after every stored profile
# extras of every profile a batch creates: one shared object, serialised once per batch, never mutated
_NEW_PROFILE_EXTRAS = {"subscriptions": default_subscriptions()}


def _key(value: Any) -> str | None:
    """An identifier value as the VARCHAR column holds it (None when it identifies nothing)."""
    if not value:
        return None
    return value if isinstance(value, str) else str(value)


class _BatchView:
    """The profiles a batch touches, in memory: identifier lookups answer what the store would
    answer after the batch's earlier writes (lowest ``seq`` holding the value wins)."""

    def __init__(self, store: Store, account: str, items: list[tuple[str | None, dict[str, Any], Any]]):
        self.new_id = lambda: store.new_id(account, "profile")
        values: dict[str, set[str]] = {name: set() for name in IDENTIFIERS}
        ids = {profile_id for profile_id, _, _ in items if profile_id}
        for _, attrs, _ in items:
            for name in IDENTIFIERS:
                key = _key(attrs.get(name))
                if key is not None:
                    values[name].add(key)
        rows = store.execute(
            "SELECT id, seq, attrs FROM profiles WHERE account = ? AND (email IN (SELECT unnest(?))"
            " OR phone_number IN (SELECT unnest(?)) OR external_id IN (SELECT unnest(?)) OR id IN (SELECT unnest(?)))",
            [account, *[sorted(values[name]) or ["\0"] for name in IDENTIFIERS], sorted(ids) or ["\0"]]).fetchall()
        self.attrs: dict[str, dict[str, Any]] = {}  # profile key -> served attributes (extras excluded)
        self.seq: dict[str, int] = {}
        self.holders: dict[str, dict[str, dict[str, int]]] = {name: {} for name in IDENTIFIERS}
        self.created: dict[str, None] = {}  # keys of the profiles the batch creates, in order
        self.changed: set[str] = set()
        for id_, seq, text in rows:
            self._put(id_, seq, orjson.loads(text))

    def _put(self, key: str, seq: int, attrs: dict[str, Any]) -> None:
        old = self.attrs.get(key, {})
        for name in IDENTIFIERS:
            before, after = _key(old.get(name)), _key(attrs.get(name))
            if before != after:
                if before is not None:
                    self.holders[name].get(before, {}).pop(key, None)
                if after is not None:
                    self.holders[name].setdefault(after, {})[key] = seq
        self.attrs[key], self.seq[key] = attrs, seq

    def matches(self, attrs: dict[str, Any]) -> dict[str, str]:
        """``identity_matches`` against the batch's view."""
        found = {}
        for name in IDENTIFIERS:
            key = _key(attrs.get(name))
            holders = self.holders[name].get(key) if key is not None else None
            if holders:
                found[name] = min(holders, key=holders.__getitem__)
        return found

    def upsert(self, profile_id: str | None, attrs: dict[str, Any], patch: dict[str, Any] | None, now: str) -> str:
        """``upsert_profile(..., nulls_clear=False)`` of normalised ``attrs`` against the view; returns the profile key."""
        target = choose_target(self.matches(attrs), profile_id, self.attrs.__contains__)
        if target is None:
            if not any(attrs.get(name) for name in (*IDENTIFIERS, "anonymous_id", "_kx")):
                raise invalid("One of email, phone_number or external_id is required to identify a profile.",
                              "/data/attributes")
            served = new_served_attributes(attrs)
            for name in ("created", "updated"):  # store.insert's defaults
                served[name] = served.get(name) or now
            target = self.new_id()
            self.created[target] = None
            self._put(target, _NEW_SEQ + len(self.created), served)
            return target
        served = self.attrs[target]
        merged = merged_attributes(served, attrs, nulls_clear=False, patch_properties=patch)
        merged.pop("updated", None)
        # as write_profile: properties reset, then the merge on top, then ``updated`` bumped
        self._put(target, self.seq[target], {**served, "properties": None, **merged, "updated": now})
        if target not in self.created:
            self.changed.add(target)
        return target


def import_profiles(store: Store, account: str,
                    items: list[tuple[str | None, dict[str, Any], dict[str, Any] | None]]) -> list[str | WriteError]:
    """``bulk_import_profiles``: upsert (profile id, checked attributes, patch_properties) items in order,
    with the results ``upsert_profile(..., nulls_clear=False)`` would give one by one (``null`` ignored),
    but reading the store once and writing it in two statements.  Returns per item the profile id
    or the ``WriteError`` that rejected it."""
    items = [(profile_id, normalise(attrs), patch) for profile_id, attrs, patch in items]
    with store.lock:
        view = _BatchView(store, account, items)
        now = iso(store.now())
        results: list[str | WriteError] = []
        for profile_id, attrs, patch in items:
            try:
                results.append(view.upsert(profile_id, attrs, patch, now))
            except WriteError as exc:
                results.append(exc)
        store.insert_many(account, "profile", {k: view.attrs[k] for k in view.created}, extras=_NEW_PROFILE_EXTRAS)
        store.replace_many(account, "profile", {k: view.attrs[k] for k in view.changed})
    return results
