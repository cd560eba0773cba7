"""Reverse-sync configuration: which rows, which columns map to which Klaviyo fields.

A config is a small TOML/YAML file or a dict (see ``docs/reverse_sync.md``)::

    name = "vip_audience"                       # key of this sync in the state table
    query = "select * from vip_audience"         # or: table = "vip_audience"
    [identifiers]                                # at least one per row
    email = "email"
    external_id = "customer_id"
    [attributes]                                 # Klaviyo standard attributes
    first_name = "first_name"
    "location.city" = "city"
    [properties]                                 # custom properties: name -> column
    lifetime_value = "ltv"
    # properties_json = "extra_props"            # or one JSON-object column
    [list]
    name = "VIP"                                 # or id = "Xy12Ab"
    create = true
    mode = "mirror"                              # or "add"
    [consent.email]                              # only when explicitly mapped
    column = "accepts_marketing"
    consented_at = "consented_at"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IDENTIFIERS = ("external_id", "email", "phone_number")  # priority order of the identity key
STANDARD_ATTRIBUTES = ("first_name", "last_name", "organization", "title", "locale", "image")
LOCATION_FIELDS = (
    "address1", "address2", "city", "country", "latitude", "longitude", "region", "zip", "timezone", "ip",
)
CONSENT_CHANNELS = ("email", "sms")
LIST_MODES = ("add", "mirror")


class ConfigError(ValueError):
    """The reverse-sync configuration is invalid; the message names what to fix."""


@dataclass(frozen=True)
class ListTarget:
    """The Klaviyo list the audience is pushed into."""

    id: str | None = None
    name: str | None = None
    create: bool = False
    mode: str = "add"


@dataclass(frozen=True)
class ConsentMapping:
    """Explicit consent: a boolean column and (optionally) when consent was given."""

    channel: str
    column: str
    consented_at: str | None = None


@dataclass(frozen=True)
class ReverseSyncConfig:
    """Everything a reverse sync needs to know besides where the warehouse is."""

    name: str
    identifiers: dict[str, str]
    table: str | None = None
    query: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    properties_json: str | None = None
    list: ListTarget | None = None
    consent: tuple[ConsentMapping, ...] = ()
    # fraction of read rows that may be rejected before the run fails (None: never fails)
    max_rejected_fraction: float | None = None
    batch_size: int = 10_000  # profiles per bulk-import job (spec: up to 10,000)
    max_batch_bytes: int = 5_000_000  # payload per bulk-import job (spec: 5MB)
    jobs_in_flight: int = 10  # bulk-import jobs submitted ahead of the one being awaited

    def __post_init__(self) -> None:
        _check(bool(self.name) and self.name.replace("_", "").replace("-", "").isalnum(),
               f"name {self.name!r} must be a non-empty word (letters, digits, _ or -)")
        _check((self.table is None) != (self.query is None), "give exactly one of `table` or `query`")
        _check(bool(self.identifiers), "map at least one identifier: email, phone_number or external_id")
        for key in self.identifiers:
            _check(key in IDENTIFIERS, f"unknown identifier {key!r}; use one of {', '.join(IDENTIFIERS)}")
        for key in self.attributes:
            _check(key in STANDARD_ATTRIBUTES or (key.startswith("location.") and key[9:] in LOCATION_FIELDS),
                   f"unknown attribute {key!r}; use one of {', '.join(STANDARD_ATTRIBUTES)} "
                   f"or location.<{'|'.join(LOCATION_FIELDS)}>")
        for key in self.properties:
            _check(bool(key) and not key.startswith("$"), f"custom property name {key!r} must not be empty or start with '$'")
        if self.list is not None:
            _check((self.list.id is None) != (self.list.name is None), "[list] needs exactly one of `id` or `name`")
            _check(self.list.mode in LIST_MODES, f"[list] mode {self.list.mode!r} must be one of {', '.join(LIST_MODES)}")
            _check(not (self.list.create and self.list.id), "[list] create = true needs a list `name`, not an `id`")
        for consent in self.consent:
            _check(consent.channel in CONSENT_CHANNELS, f"consent channel {consent.channel!r} must be email or sms")
            needed = "email" if consent.channel == "email" else "phone_number"
            _check(needed in self.identifiers, f"consent on {consent.channel} needs the `{needed}` identifier mapped")
        _check(1 <= self.batch_size <= 10_000, "batch_size must be between 1 and 10000 (the bulk-import job limit)")
        _check(1 <= self.jobs_in_flight <= 100, "jobs_in_flight must be between 1 and 100")
        _check(self.max_rejected_fraction is None or 0 <= self.max_rejected_fraction <= 1,
               "max_rejected_fraction must be between 0 and 1")

    @property
    def columns(self) -> dict[str, str]:
        """Every mapped Klaviyo field (``email``, ``location.city``, ``properties.ltv``...) -> source column."""
        mapped = dict(self.identifiers)
        mapped.update(self.attributes)
        mapped.update({f"properties.{k}": v for k, v in self.properties.items()})
        return mapped

    @property
    def source_columns(self) -> list[str]:
        """Source columns the sync reads, without duplicates, in mapping order."""
        wanted = list(self.columns.values())
        if self.properties_json:
            wanted.append(self.properties_json)
        for consent in self.consent:
            wanted.append(consent.column)
            if consent.consented_at:
                wanted.append(consent.consented_at)
        return list(dict.fromkeys(wanted))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ReverseSyncConfig":
        """Build a config from a dict (the parsed TOML/YAML file or the Python API)."""
        raw = dict(raw)
        known = {"name", "table", "query", "identifiers", "attributes", "properties", "properties_json",
                 "list", "consent", "max_rejected_fraction", "batch_size", "max_batch_bytes", "jobs_in_flight"}
        unknown = sorted(set(raw) - known)
        _check(not unknown, f"unknown config key(s): {', '.join(unknown)}")
        list_raw = raw.pop("list", None)
        if isinstance(list_raw, dict):
            extra = sorted(set(list_raw) - {"id", "name", "create", "mode"})
            _check(not extra, f"unknown [list] key(s): {', '.join(extra)}")
            raw["list"] = ListTarget(**list_raw)
        elif list_raw is not None:
            _check(isinstance(list_raw, ListTarget), "[list] must be a table with id/name, create, mode")
            raw["list"] = list_raw
        consent_raw = raw.pop("consent", None) or {}
        consents = []
        if isinstance(consent_raw, dict):
            for channel, spec in consent_raw.items():
                _check(isinstance(spec, dict) and "column" in spec, f"[consent.{channel}] needs `column`")
                extra = sorted(set(spec) - {"column", "consented_at"})
                _check(not extra, f"unknown [consent.{channel}] key(s): {', '.join(extra)}")
                consents.append(ConsentMapping(channel=channel, **spec))
        else:
            consents = [c if isinstance(c, ConsentMapping) else ConsentMapping(**c) for c in consent_raw]
        raw["consent"] = tuple(consents)
        raw.setdefault("name", None)
        _check(raw["name"] is not None, "config needs a `name` (the key of this sync in the state table)")
        for key in ("identifiers", "attributes", "properties"):
            value = raw.get(key) or {}
            _check(isinstance(value, dict), f"[{key}] must map Klaviyo field names to column names")
            raw[key] = {str(k): str(v) for k, v in _flatten(value).items()}
        return cls(**raw)

    @classmethod
    def from_file(cls, path: str | Path) -> "ReverseSyncConfig":
        """Read a ``.toml`` or ``.yaml``/``.yml`` config file."""
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            try:
                raw = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: invalid TOML ({exc})") from None
        return cls.from_dict(raw)


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"location": {"city": "c"}}`` -> ``{"location.city": "c"}`` (TOML sub-tables)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def build_clear(row: dict[str, Any], cleared: list[str]) -> dict[str, Any]:
    """A ``profile-import`` body setting the cleared fields to null, where null clears
    (spec operation create_or_update_profile); the row's identifiers say which profile."""
    attributes: dict[str, Any] = {k: row[k] for k in IDENTIFIERS if row.get(k) is not None}
    for target in cleared:
        if target.startswith("location."):
            attributes.setdefault("location", {})[target[9:]] = None
        elif target.startswith(("properties.", "json.")):
            attributes.setdefault("properties", {})[target.split(".", 1)[1]] = None
        else:
            attributes[target] = None
    return {"data": {"type": "profile", "attributes": attributes}}
