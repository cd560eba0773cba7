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
MergeStrategy = Literal["delete-insert", "insert-only"]


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
    # dlt merge strategy: "delete-insert" replaces re-read records; "insert-only" keeps the stored
    # copy and adds only new primary keys (for records the API can never change)
    merge_strategy: MergeStrategy = "delete-insert"
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
    custom_properties: tuple[str, ...] = ()  # of those, the user-defined ones `flatten_properties` flattens
    promoted: tuple[Promoted, ...] = ()
    timestamp_columns: tuple[str, ...] = ()  # attributes the spec types "string" that hold datetimes
    windowed: bool = False  # split long ranges into time windows fetched in parallel
    resource_type: str = ""  # JSON:API type, for additional-fields[<type>]
    description: str = ""
    params: tuple[tuple[str, str], ...] = field(default=())  # extra static query parameters
    # -- H6 (issue #4): deletions, child endpoints, custom readers, default selection --
    deletion_sweep: bool = False  # mark records that vanish from the API `deleted_at` (deletions.py)
    parent: str = ""  # per-parent child endpoint ("{id}" in path): the parent stream's name (children.py)
    factory: str = ""  # custom reader for rows the generic factory cannot read (factories.py)
    default_selected: bool = True  # loaded when no resources are named (else only on request)

    @property
    def incremental(self) -> bool:
        return self.cursor_field is not None


CHANNELS = ("email", "sms", "mobile_push")

# get_campaigns needs a channel filter: one read per channel (partitions.py also splits every
# endpoint whose spec offers an `archived` filter into archived and not archived)
CAMPAIGN_PARTITIONS = tuple(Partition(channel, (("equals", "messages.channel", channel),)) for channel in CHANNELS)

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
        custom_properties=("properties",),
        windowed=True,  # long ranges: `updated` windows read in parallel (1 s overlaps deduped by the merge)
        description="One row per profile; merged on id, incremental on `updated`.",
    ),
    Stream(
        name="events",
        path="/api/events",
        rate_tier=RateTier(350, 3500),
        cursor_field="datetime",
        cursor_operators=("greater-or-equal", "greater-than", "less-or-equal", "less-than"),
        lookback="event_lookback",
        # the spec has no operation that updates or deletes an event (only create_event): a
        # re-read event is the stored one, so the lookback re-read only adds new ids
        merge_strategy="insert-only",
        page_size=1000,
        sort="datetime",
        resource_type="event",
        relationships=("metric", "profile"),
        json_columns=("event_properties",),
        custom_properties=("event_properties",),
        promoted=(
            Promoted("value", ("attributes", "event_properties", "$value"), "float"),
            Promoted("message_id", ("attributes", "event_properties", "$message"), "string"),
        ),
        windowed=True,
        description="One row per event; deduplicated on id (insert-only merge), incremental on `datetime` re-reading `event_lookback`.",
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
        deletion_sweep=True,  # H6: deleted ones get `deleted_at`
        description="Email, SMS and mobile push campaigns (archived or not); merged on id, incremental on `updated_at`.",
    ),
    Stream(
        name="catalog_items",
        path="/api/catalog-items",
        rate_tier=RateTier(350, 3500),
        page_size=100,
        resource_type="catalog-item",
        deletion_sweep=True,  # H6: deleted ones get `deleted_at`
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


# ---------------------------------------------------------------------------------------------
# H6 (issue #4): the rest of the Klaviyo API.  Rows below are read by the generic factory,
# by children.py (``parent=``: one read per parent record) or by a custom reader (``factory=``:
# memberships.py, reports.py).  Costs per run are in docs/tables.md.
# ---------------------------------------------------------------------------------------------
_FLOW_DATE_OPERATORS = ("equals", "greater-or-equal", "greater-than", "less-or-equal", "less-than")

MORE_STREAMS: tuple[Stream, ...] = (
    Stream(
        name="lists",
        path="/api/lists",
        rate_tier=RateTier(75, 750),
        cursor_field="updated",
        cursor_operators=("greater-than",),
        page_size=10,
        sort="updated",
        resource_type="list",
        deletion_sweep=True,
        description="Lists; incremental on `updated` (greater-than only, 10 per page), deleted ones get `deleted_at`.",
    ),
    Stream(
        name="segments",
        path="/api/segments",
        rate_tier=RateTier(75, 750),
        cursor_field="updated",
        cursor_operators=("greater-than",),
        page_size=10,
        sort="updated",
        resource_type="segment",
        deletion_sweep=True,
        description="Segments (definition as JSON); incremental on `updated`, deleted ones get `deleted_at`.",
    ),
    Stream(
        name="flows",
        path="/api/flows",
        rate_tier=RateTier(3, 60),
        cursor_field="updated",
        cursor_operators=_FLOW_DATE_OPERATORS,
        page_size=50,
        sort="updated",
        resource_type="flow",
        deletion_sweep=True,
        description="Flows (archived or not); incremental on `updated`, deleted ones get `deleted_at` (slow tier: 3/s 60/m).",
    ),
    Stream(
        name="flow_actions",
        path="/api/flows/{id}/flow-actions",
        rate_tier=RateTier(3, 60),
        page_size=50,
        cursor_field="updated",
        cursor_operators=_FLOW_DATE_OPERATORS,
        resource_type="flow-action",
        parent="flows",
        description="Flow actions (definition flattened), one request per flow, incremental on `updated`; "
                    "`flow_id` links the flow.",
    ),
    Stream(
        name="flow_messages",
        path="/api/flow-actions/{id}/flow-messages",
        rate_tier=RateTier(3, 60),
        page_size=50,
        cursor_field="updated",
        cursor_operators=_FLOW_DATE_OPERATORS,
        resource_type="flow-message",
        parent="flow_actions",
        description="Flow messages, one request per flow action, incremental on `updated`; "
                    "`flow_action_id` links the action.",
    ),
    Stream(
        name="campaign_messages",
        path="/api/campaigns/{id}/campaign-messages",
        rate_tier=RateTier(10, 150),
        resource_type="campaign-message",
        parent="campaigns",
        description="Campaign messages (content, send times), one request per campaign; `campaign_id` links it.",
    ),
    Stream(
        name="templates",
        path="/api/templates",
        rate_tier=RateTier(75, 750),
        cursor_field="updated",
        cursor_operators=_FLOW_DATE_OPERATORS,
        page_size=10,
        sort="updated",
        resource_type="template",
        deletion_sweep=True,
        description="Email templates with their HTML; incremental on `updated`, deleted ones get `deleted_at`.",
    ),
    Stream(
        name="tags",
        path="/api/tags",
        rate_tier=RateTier(3, 60),
        page_size=50,
        resource_type="tag",
        relationships=("tag-group",),
        deletion_sweep=True,
        description="Tags; read fully every run, deleted ones get `deleted_at`.",
    ),
    Stream(
        name="coupons",
        path="/api/coupons",
        rate_tier=RateTier(75, 750),
        page_size=100,
        resource_type="coupon",
        deletion_sweep=True,
        description="Coupons; read fully every run, deleted ones get `deleted_at`.",
    ),
    Stream(
        name="coupon_codes",
        path="/api/coupons/{id}/coupon-codes",
        rate_tier=RateTier(75, 750),
        page_size=100,
        resource_type="coupon-code",
        relationships=("profile",),
        parent="coupons",
        description="Coupon codes (the API requires a coupon filter): one read per coupon; `coupon_id` links it.",
    ),
    Stream(
        name="webhooks",
        path="/api/webhooks",
        rate_tier=RateTier(1, 15),
        resource_type="webhook",
        description="Webhooks; read fully (slow tier: 1/s 15/m).",
    ),
    Stream(
        name="accounts",
        path="/api/accounts",
        rate_tier=RateTier(1, 15),
        resource_type="account",
        description="The account(s) the key belongs to: organization, timezone, currency (slow tier: 1/s 15/m).",
    ),
    Stream(
        name="list_members",
        path="/api/lists/{id}/profiles",
        rate_tier=RateTier(75, 750),
        page_size=100,
        resource_type="profile",
        factory="members",
        default_selected=False,
        description="(list_id, profile_id, joined_group_at, removed_at); joins incremental, removals by a full pass.",
    ),
    Stream(
        name="segment_members",
        path="/api/segments/{id}/profiles",
        rate_tier=RateTier(75, 750),
        page_size=100,
        resource_type="profile",
        factory="members",
        default_selected=False,
        description="(segment_id, profile_id, joined_group_at, removed_at); as list_members.",
    ),
)

# Rows that are not JSON:API list endpoints (POST reports, relationship links, id-only
# resources): read by custom factories; checked against the spec in tests/source_more.
CUSTOM_STREAMS: tuple[Stream, ...] = (
    Stream(
        name="tag_links",
        path="/api/tags/{id}/relationships/{kind}",  # kind: campaigns, flows, lists, segments (one shared bucket)
        rate_tier=RateTier(3, 60),
        factory="tag_links",
        primary_key="tag_id",
        write_disposition="replace",
        description="(tag_id, resource_type, resource_id): tags on campaigns, flows, lists and segments.",
    ),
    Stream(
        name="webhook_topics",
        path="/api/webhook-topics",
        rate_tier=RateTier(1, 15),
        resource_type="webhook-topic",
        factory="ids",
        write_disposition="replace",
        description="Webhook topics (ids only; slow tier 1/s 15/m).",
    ),
    Stream(
        name="metric_aggregates",
        path="/api/metric-aggregates",
        rate_tier=RateTier(3, 60),
        factory="report",
        primary_key="metric_id",
        description="Daily count / sum_value / unique per metric (report timezone); re-reads a window for late events.",
    ),
    Stream(
        name="campaign_values_reports",
        path="/api/campaign-values-reports",
        rate_tier=RateTier(1, 2),  # and 225/day
        factory="report",
        primary_key="campaign_id",
        description="Statistics per campaign message to date (Reporting API, by send date); re-reads recent sends.",
    ),
    Stream(
        name="flow_series_reports",
        path="/api/flow-series-reports",
        rate_tier=RateTier(1, 2),  # and 225/day
        factory="report",
        primary_key="flow_id",
        description="Daily statistics per flow message (Reporting API); re-reads the last days every run.",
    ),
)
# --------------------------------------------------------------------------------- end H6 ----

ALL_STREAMS: tuple[Stream, ...] = STREAMS + MORE_STREAMS + CUSTOM_STREAMS
STREAMS = STREAMS + MORE_STREAMS

def streams_by_name(streams: tuple[Stream, ...] = STREAMS) -> dict[str, Stream]:
    return {s.name: s for s in streams}
