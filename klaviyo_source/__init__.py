"""dlt source for the Klaviyo API: ``from klaviyo_source import klaviyo_source``.

Configured the dlt way (``[sources.klaviyo]`` in ``.dlt/config.toml``, ``api_key`` in
``.dlt/secrets.toml`` or ``SOURCES__KLAVIYO__API_KEY``); ``KLAVIYO_API_KEY`` /
``MATON_API_KEY`` are read when no dlt secret is set.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Optional, Sequence, Union

import dlt
from dlt.extract.resource import DltResource

from klaviyo_source import logfilter, settings, trace_masking
from klaviyo_source.client import KlaviyoClient, buckets_for
from klaviyo_source.errors import KlaviyoConfigError, KlaviyoSourceError, describe
from klaviyo_source.filters import parse_datetime, parse_duration, utc_now
from klaviyo_source.load_ids import stamp_load_ids
from klaviyo_source.keys import clean_key
from klaviyo_source.deletions import check_mode
from klaviyo_source.memberships import MembershipOptions
from klaviyo_source.reports import ReportOptions
from klaviyo_source.resources import ReadOptions, make_resource
from klaviyo_source.streams import ALL_STREAMS, STREAMS, Stream, streams_by_name

__all__ = ["klaviyo_source", "KlaviyoSourceError", "describe", "STREAMS", "Stream"]

# Whatever part of the package runs (source, reverse sync, CLI), registered keys are masked in dlt's
# log records and runtime trace, and urllib3's DEBUG lines carry no query strings.
logfilter.install()
trace_masking.install()


def _api_key(api_key: Optional[str], auth: str) -> str:
    key = clean_key(api_key)
    if key:
        return key
    names = settings.MATON_KEY_ENV_VARS + settings.API_KEY_ENV_VARS if auth == "maton" else settings.API_KEY_ENV_VARS
    for name in names:
        key = clean_key(os.environ.get(name))
        if key:
            return key
    raise KlaviyoConfigError(
        "no Klaviyo API key: set sources.klaviyo.api_key in .dlt/secrets.toml, SOURCES__KLAVIYO__API_KEY or "
        + " / ".join(names)
    )


def _select(resources: Optional[Sequence[str]], streams: Sequence[Stream]) -> list[Stream]:
    by_name = streams_by_name(tuple(streams))
    if not resources:
        return list(streams)
    if isinstance(resources, str):
        resources = [r.strip() for r in resources.split(",") if r.strip()]
    unknown = [r for r in resources if r not in by_name]
    if unknown:
        raise KlaviyoConfigError(
            f"unknown resource {', '.join(map(repr, unknown))}; available: {', '.join(by_name)}"
        )
    return [by_name[r] for r in resources]


@dlt.source(name="klaviyo", section="klaviyo", max_table_nesting=0)
def klaviyo_source(
    api_key: Optional[str] = dlt.secrets.value,
    base_url: Optional[str] = None,
    auth: str = settings.DEFAULT_AUTH,
    maton_connection: Optional[str] = None,
    revision: str = settings.REVISION,
    start_date: Optional[Any] = None,
    end_date: Optional[Any] = None,
    event_lookback: Union[str, float, timedelta] = settings.DEFAULT_EVENT_LOOKBACK,
    metrics: Optional[Sequence[str]] = None,
    resources: Optional[Sequence[str]] = None,
    flatten_properties: bool = False,
    predictive_analytics: bool = False,
    pacing: bool = True,
    rate_limit_scale: float = 1.0,
    event_workers: int = settings.EVENT_WORKERS,
    max_attempts: int = settings.MAX_ATTEMPTS,
    backoff_factor: float = settings.BACKOFF_FACTOR,
    request_timeout: float = settings.REQUEST_TIMEOUT_SECONDS,
    deletions: str = "soft",
    members_full_pass_every: Union[str, float, timedelta] = "1d",
    members_small_group_size: int = 1000,
    report_timezone: str = "UTC",
    report_reread_days: int = 7,
    campaign_report_reread_days: int = 30,
    report_initial_days: int = 60,
    conversion_metric: str = "Placed Order",
) -> list[DltResource]:
    """Klaviyo resources (profiles, events, metrics, campaigns, catalogs ...) as pyarrow-backed dlt resources.

    Args:
        api_key: Klaviyo private API key (``auth="klaviyo-api-key"``), OAuth token (``"bearer"``) or
            Maton API key (``"maton"``).
        base_url: API root; default ``https://a.klaviyo.com`` (``https://gateway.maton.ai/klaviyo`` for maton).
        auth: ``klaviyo-api-key`` | ``bearer`` | ``maton``.
        maton_connection: Maton connection id, sent as the ``Maton-Connection`` header.
        revision: Klaviyo API revision header sent on every request.
        start_date / end_date: ISO dates bounding incremental resources (end_date = a bounded backfill).
        event_lookback: history re-read on every events run so late events arrive (``3d``, ``12h``...).
        metrics: metric ids or names restricting the events read.
        resources: names of the resources to read (default: all).
        flatten_properties: flatten ``profiles.properties`` / ``events.event_properties`` into columns
            instead of JSON columns.
        predictive_analytics: add ``additional-fields[profile]=predictive_analytics`` (slower rate tier).
        pacing: pace requests under each endpoint's rate limits; ``rate_limit_scale`` scales the windows
            (for sandboxes running with scaled limits).
        deletions: records vanished from the API (lists, segments, campaigns, flows, templates, tags,
            coupons, catalog items): ``soft`` marks ``deleted_at`` (default), ``hard`` deletes the row,
            ``off`` skips the sweep.
        members_full_pass_every / members_small_group_size: how often ``list_members`` /
            ``segment_members`` re-read a group's member ids to find removals (groups with at most
            ``members_small_group_size`` stored members: every run).
        report_timezone, report_reread_days, campaign_report_reread_days, report_initial_days,
            conversion_metric: ``metric_aggregates`` / ``*_reports`` options (see docs/tables.md).
    """
    if auth not in settings.AUTH_SCHEMES:
        raise KlaviyoConfigError(f"auth={auth!r} is unknown; use one of {', '.join(settings.AUTH_SCHEMES)}")
    key = _api_key(api_key, auth)
    if not base_url or (auth == "maton" and base_url.rstrip("/") == settings.KLAVIYO_BASE_URL):
        # maton goes through the gateway unless another URL (e.g. a sandbox's) is given
        base_url = settings.MATON_GATEWAY_URL if auth == "maton" else settings.KLAVIYO_BASE_URL
    start = parse_datetime(start_date, "start_date")
    end = parse_datetime(end_date, "end_date")
    now = utc_now()
    if start is not None and start > now:
        raise KlaviyoConfigError(f"start_date={start.isoformat()} is in the future; use a past date")
    if start is not None and end is not None and end <= start:
        raise KlaviyoConfigError(f"end_date={end.isoformat()} must be after start_date={start.isoformat()}")
    if end is not None and start is None:
        raise KlaviyoConfigError("end_date needs a start_date (a bounded backfill reads start_date..end_date)")
    lookback = parse_duration(event_lookback, "event_lookback")
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    selected = _select(resources, ALL_STREAMS)

    client = KlaviyoClient(
        api_key=key,
        base_url=base_url,
        auth=auth,
        revision=revision,
        maton_connection=maton_connection,
        buckets=buckets_for(ALL_STREAMS),
        pacing=pacing,
        rate_limit_scale=rate_limit_scale,
        max_attempts=max_attempts,
        backoff_factor=backoff_factor,
        timeout=request_timeout,
    )
    options = ReadOptions(
        start_date=start,
        end_date=end,
        event_lookback=lookback,
        metrics=list(metrics) if metrics else None,
        flatten_properties=flatten_properties,
        enabled_fields=("predictive_analytics",) if predictive_analytics else (),
        event_workers=event_workers,
        deletions=check_mode(deletions),
        membership=MembershipOptions(parse_duration(members_full_pass_every, "members_full_pass_every"),
                                     int(members_small_group_size)),
        reports=ReportOptions(timezone=report_timezone, reread_days=int(report_reread_days),
                              campaign_reread_days=int(campaign_report_reread_days),
                              initial_days=int(report_initial_days), conversion_metric=conversion_metric),
    )
    options.reports.zone()  # one-line error for an unknown timezone, before any request
    built = [stamp_load_ids(make_resource(stream, client, options)) for stream in selected]
    if not resources:  # rows that are costly or niche load only when named (docs/tables.md)
        for resource, stream in zip(built, selected):
            resource.selected = stream.default_selected
    return built
