"""The CLI-facing entry point: parsed ``klaviyo-dlt reverse-sync`` flags -> a config -> a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .mapping import ConfigError, ReverseSyncConfig
from .report import ReverseSyncReport
from .run import reverse_sync


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    """``["first_name=fname", "location.city=city"]`` -> ``{"first_name": "fname", ...}``."""
    pairs = {}
    for value in values or ():
        target, sep, column = value.partition("=")
        if not sep or not target or not column:
            raise ConfigError(f"{flag} {value!r}: use FIELD=COLUMN, e.g. {flag} first_name=fname")
        pairs[target.strip()] = column.strip()
    return pairs


def config_from_flags(
    *,
    config_path: str | Path | None = None,
    name: str | None = None,
    table: str | None = None,
    query: str | None = None,
    email: str | None = None,
    phone_number: str | None = None,
    external_id: str | None = None,
    attributes: Sequence[str] = (),
    properties: Sequence[str] = (),
    properties_json: str | None = None,
    list_id: str | None = None,
    list_name: str | None = None,
    create_list: bool | None = None,
    list_mode: str | None = None,
    consent: Sequence[str] = (),
    max_rejected_fraction: float | None = None,
    batch_size: int | None = None,
) -> ReverseSyncConfig:
    """A config from a file (optional) with flags laid over it. ``consent`` items read
    ``CHANNEL=COLUMN`` or ``CHANNEL=COLUMN@CONSENTED_AT_COLUMN`` (channel: email or sms)."""
    raw: dict[str, Any] = {}
    if config_path:
        from .run import load_config

        base = load_config(config_path)
        raw = {"name": base.name, "table": base.table, "query": base.query, "identifiers": dict(base.identifiers),
               "attributes": dict(base.attributes), "properties": dict(base.properties),
               "properties_json": base.properties_json, "max_rejected_fraction": base.max_rejected_fraction,
               "batch_size": base.batch_size, "max_batch_bytes": base.max_batch_bytes,
               "consent": {c.channel: {"column": c.column, "consented_at": c.consented_at} for c in base.consent}}
        if base.list:
            raw["list"] = {"id": base.list.id, "name": base.list.name, "create": base.list.create, "mode": base.list.mode}
    if name:
        raw["name"] = name
    if table or query:
        raw["table"], raw["query"] = table, query
    identifiers = raw.setdefault("identifiers", {})
    for key, column in (("email", email), ("phone_number", phone_number), ("external_id", external_id)):
        if column:
            identifiers[key] = column
    raw.setdefault("attributes", {}).update(_pairs(attributes, "--attribute"))
    raw.setdefault("properties", {}).update(_pairs(properties, "--property"))
    if properties_json:
        raw["properties_json"] = properties_json
    if list_id or list_name or create_list is not None or list_mode:
        current = raw.get("list") or {}
        if list_id or list_name:
            current["id"], current["name"] = list_id, list_name
        if create_list is not None:
            current["create"] = create_list
        if list_mode:
            current["mode"] = list_mode
        raw["list"] = current
    for item in consent or ():
        channel, sep, rest = item.partition("=")
        if not sep or not rest:
            raise ConfigError(f"--consent {item!r}: use CHANNEL=COLUMN[@CONSENTED_AT_COLUMN], e.g. email=opted_in@opted_in_at")
        column, _, at = rest.partition("@")
        raw.setdefault("consent", {})[channel] = {"column": column, "consented_at": at or None}
    if max_rejected_fraction is not None:
        raw["max_rejected_fraction"] = max_rejected_fraction
    if batch_size is not None:
        raw["batch_size"] = batch_size
    if "list" in raw:
        raw["list"] = {k: v for k, v in raw["list"].items() if v is not None}
    if "consent" in raw:
        raw["consent"] = {ch: {k: v for k, v in spec.items() if v is not None} for ch, spec in raw["consent"].items()}
    raw.setdefault("name", _default_name(raw))
    return ReverseSyncConfig.from_dict({k: v for k, v in raw.items() if v is not None or k in ("table", "query")})


def _default_name(raw: dict[str, Any]) -> str | None:
    """Without --name: the list name (or id), else the table name."""
    target = raw.get("list") or {}
    base = target.get("name") or target.get("id") or raw.get("table")
    if not base:
        raise ConfigError("give --name (the key of this sync in the state table)")
    return "".join(ch if ch.isalnum() else "_" for ch in str(base)).strip("_").lower() or "audience"


def run_reverse_sync(
    *,
    destination: Any,
    dataset_name: str,
    credentials: Any = None,
    api_key: str | None = None,
    base_url: str | None = None,
    auth: str = "klaviyo-api-key",
    maton_connection: str | None = None,
    dry_run: bool = False,
    rate_limit_scale: float = 1.0,
    pipelines_dir: str | None = None,
    **flags: Any,
) -> ReverseSyncReport:
    """What ``klaviyo-dlt reverse-sync`` calls: the connection arguments plus the flags of
    :func:`config_from_flags` (``config_path``, ``table``/``query``, ``email`` ... ``list_mode``)."""
    config = config_from_flags(**flags)
    return reverse_sync(config, destination=destination, dataset_name=dataset_name, credentials=credentials,
                        api_key=api_key, base_url=base_url, auth=auth, maton_connection=maton_connection,
                        dry_run=dry_run, rate_limit_scale=rate_limit_scale, pipelines_dir=pipelines_dir)
