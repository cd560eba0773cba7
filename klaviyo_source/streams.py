"""The declarative stream table: one row per Klaviyo endpoint the source reads.

Adding a resource = adding a ``Stream`` row (``tests/source/test_streams_spec.py`` checks every
row against the OpenAPI spec: page size, filter operators, sorts, rate tiers, relationships).
The generic factory in ``resources.py`` turns each row into a dlt resource.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from klaviyo_source.pacing import RateTier

WriteDisposition = Literal["merge", "replace", "append"]
Lookback = Literal["none", "event_lookback"]


@dataclass(frozen=True)
class Partition:
    """One slice of an endpoint read on its own (e.g. campaigns of one channel)."""

    name: str
    conditions: tuple[tuple[str, str, object], ...]  # (operator, field, value)


@dataclass(frozen=True)
class Promoted:
    """A typed top-level column lifted out of a free-form bag (e.g. events ``$value`` -> ``value``)."""

    column: str
    path: tuple[str, ...]  # path inside the record, e.g. ("attributes", "event_properties", "$value")
    kind: str  # one of arrow.KINDS


@dataclass(frozen=True)
class Stream:
    """One Klaviyo list endpoint, described declaratively."""

    name: str  # resource and table name
    path: str  # spec path template, e.g. "/api/profiles"
    rate_tier: RateTier  # spec: "Burst: `N/s` Steady: `M/m`"
    primary_key: str = "id"
    write_disposition: WriteDisposition = "merge"
    cursor_field: str | None = None  # attribute used for incremental loading
    cursor_operators: tuple[str, ...] = ()  # the spec's allowed operators on cursor_field
    lookback: Lookback = "none"  # "event_lookback": re-read that much history every run
    page_size: int | None = None  # page[size] sent (the spec's max); None = no page[size] param
    sort: str | None = None
    partitions: tuple[Partition, ...] = ()
    additional_fields: tuple[str, ...] = ()  # additional-fields[<type>] values on by default
    optional_fields: tuple[str, ...] = ()  # additional-fields values enabled by a source option
    extra_rate_tiers: tuple[tuple[str, RateTier], ...] = ()  # (additional field, its own tier)
    relationships: tuple[str, ...] = ()  # to-one relationships -> "<name>_id" columns
    json_columns: tuple[str, ...] = ()  # free-form attribute bags stored as JSON
    promoted: tuple[Promoted, ...] = ()
    timestamp_columns: tuple[str, ...] = ()  # attributes the spec types "string" that hold datetimes
    windowed: bool = False  # split long ranges into time windows fetched in parallel
    resource_type: str = ""  # JSON:API type, for additional-fields[<type>]
    description: str = ""
    params: tuple[tuple[str, str], ...] = field(default=())  # extra static query parameters

    @property
    def incremental(self) -> bool:
        return self.cursor_field is not None


CHANNELS = ("email", "sms", "mobile_push")

# Klaviyo lists non-archived campaigns unless `equals(archived,true)` is given, so read both.
CAMPAIGN_PARTITIONS = tuple(
    Partition(
        f"{channel}{'_archived' if archived else ''}",
        (("equals", "messages.channel", channel), ("equals", "archived", archived)),
    )
    for channel in CHANNELS
    for archived in (False, True)
)

STREAMS: tuple[Stream, ...] = (
    Stream(
        name="profiles",
        path="/api/profiles",
        rate_tier=RateTier(75, 750),
        cursor_field="updated",
        cursor_operators=("greater-than", "less-than"),
        page_size=100,
        sort="updated",
        resource_type="profile",
        additional_fields=("subscriptions",),
        optional_fields=("predictive_analytics",),
        extra_rate_tiers=(("predictive_analytics", RateTier(10, 150)),),
        json_columns=("properties",),
        description="One row per profile; merged on id, incremental on `updated`.",
    ),
    Stream(
        name="events",
        path="/api/events",
        rate_tier=RateTier(350, 3500),
        cursor_field="datetime",
        cursor_operators=("greater-or-equal", "greater-than", "less-or-equal", "less-than"),
        lookback="event_lookback",
        page_size=1000,
        sort="datetime",
        resource_type="event",
        relationships=("metric", "profile"),
        json_columns=("event_properties",),
        promoted=(
            Promoted("value", ("attributes", "event_properties", "$value"), "float"),
            Promoted("message_id", ("attributes", "event_properties", "$message"), "string"),
        ),
        windowed=True,
        description="One row per event; merged on id, incremental on `datetime` re-reading `event_lookback`.",
    ),
    Stream(
        name="metrics",
        path="/api/metrics",
        rate_tier=RateTier(10, 150),
        write_disposition="replace",
        resource_type="metric",
        json_columns=("integration",),
        timestamp_columns=("created", "updated"),
        description="Metric (event type) definitions; fully replaced every run.",
    ),
    Stream(
        name="campaigns",
        path="/api/campaigns",
        rate_tier=RateTier(10, 150),
        cursor_field="updated_at",
        cursor_operators=("greater-or-equal", "greater-than", "less-or-equal", "less-than"),
        page_size=100,
        sort="updated_at",
        partitions=CAMPAIGN_PARTITIONS,
        resource_type="campaign",
        description="Email, SMS and mobile push campaigns (archived or not); merged on id, incremental on `updated_at`.",
    ),
    Stream(
        name="catalog_items",
        path="/api/catalog-items",
        rate_tier=RateTier(350, 3500),
        page_size=100,
        resource_type="catalog-item",
        description="Catalog items; no server-side date filter, so read fully and merged on id.",
    ),
    Stream(
        name="catalog_variants",
        path="/api/catalog-variants",
        rate_tier=RateTier(350, 3500),
        page_size=100,
        resource_type="catalog-variant",
        description="Catalog variants; read fully and merged on id.",
    ),
    Stream(
        name="catalog_categories",
        path="/api/catalog-categories",
        rate_tier=RateTier(350, 3500),
        page_size=100,
        resource_type="catalog-category",
        description="Catalog categories; read fully and merged on id.",
    ),
)


def streams_by_name(streams: tuple[Stream, ...] = STREAMS) -> dict[str, Stream]:
    return {s.name: s for s in streams}
