"""The stream table must agree with Klaviyo's OpenAPI spec: drift in the spec fails here."""

from __future__ import annotations

import pytest

from klaviyo_sandbox.spec import load_spec
from klaviyo_source.columns import relationship_is_to_one, stream_columns
from klaviyo_source.partitions import read_partitions
from klaviyo_source.streams import ALL_STREAMS

# rows read by the generic factory (rows with a custom ``factory`` are checked by their owner's tests)
STREAMS = tuple(s for s in ALL_STREAMS if not s.factory)

SPEC = load_spec()


def op(stream):
    return SPEC.operation("GET", stream.path)


@pytest.mark.parametrize("stream", STREAMS, ids=lambda s: s.name)
def test_rate_tier_matches_spec(stream):
    limit = op(stream).rate_limit
    assert (stream.rate_tier.burst_per_second, stream.rate_tier.steady_per_minute) == (
        limit.burst_per_second,
        limit.steady_per_minute,
    )
    spec_extra = {value: (l.burst_per_second, l.steady_per_minute) for (_, value), l in op(stream).extra_rate_limits.items()}
    ours = {marker: (t.burst_per_second, t.steady_per_minute) for marker, t in stream.extra_rate_tiers}
    assert ours == {k: v for k, v in spec_extra.items() if k in stream.additional_fields + stream.optional_fields}
    # every per-parameter bucket of a field we may request must be paced
    for value in spec_extra:
        if value in stream.additional_fields + stream.optional_fields:
            assert value in ours


@pytest.mark.parametrize("stream", STREAMS, ids=lambda s: s.name)
def test_page_size_is_the_spec_maximum(stream):
    page = op(stream).page_size
    if page is None:
        assert stream.page_size is None, "endpoint has no page[size] parameter"
    else:
        assert stream.page_size == page.maximum


@pytest.mark.parametrize("stream", [s for s in STREAMS if s.incremental], ids=lambda s: s.name)
def test_cursor_operators_are_the_specs(stream):
    allowed = op(stream).filters.get(stream.cursor_field)
    assert allowed, f"{stream.cursor_field} is not filterable on {stream.path}"
    assert tuple(stream.cursor_operators) == tuple(allowed)
    assert {"greater-than", "greater-or-equal"} & set(allowed)


@pytest.mark.parametrize("stream", STREAMS, ids=lambda s: s.name)
def test_sort_partitions_fields_exist_in_spec(stream):
    operation = op(stream)
    if stream.sort:
        assert stream.sort in operation.sorts
    for partition in stream.partitions:
        for operator, field, _ in partition.conditions:
            assert operator in operation.filters[field]
    if operation.filter_required:
        assert stream.partitions, f"{stream.path} requires a filter: give the row partitions"
    fields = stream.additional_fields + stream.optional_fields
    if fields:
        assert set(fields) <= set(operation.enum(f"additional-fields[{stream.resource_type}]"))


@pytest.mark.parametrize("stream", STREAMS, ids=lambda s: s.name)
def test_relationship_columns_are_to_one_in_spec(stream):
    for relation in stream.relationships:
        assert relationship_is_to_one(stream, relation), relation


@pytest.mark.parametrize("stream", STREAMS, ids=lambda s: s.name)
def test_columns_cover_every_spec_attribute(stream):
    columns = stream_columns(stream, stream.additional_fields)
    names = [c.name for c in columns]
    assert names[0] == "id" and len(names) == len(set(names))
    if stream.cursor_field:
        cursor = next(c for c in columns if c.name == stream.cursor_field)
        assert cursor.kind == "timestamp"
    for bag in stream.json_columns:
        assert next(c for c in columns if c.name == bag).kind == "json"


def test_campaigns_read_every_channel_archived_or_not():
    campaigns = next(s for s in STREAMS if s.name == "campaigns")
    assert sorted(read_partitions(campaigns)) == sorted(
        [f"equals(messages.channel,'{c}')", f"equals(archived,{a})"] for c in ("email", "sms", "mobile_push")
        for a in ("false", "true"))


@pytest.mark.parametrize("stream", STREAMS, ids=lambda s: s.name)
def test_endpoints_with_an_archived_filter_are_read_archived_and_not(stream):
    # Klaviyo lists archived records only when the filter names `archived`
    slices = read_partitions(stream)
    if "archived" in op(stream).filters:
        assert {s[-1] for s in slices} == {"equals(archived,false)", "equals(archived,true)"}
        assert len(slices) == 2 * max(1, len(stream.partitions))
    else:
        assert not any("archived" in c for s in slices for c in s)


def test_flows_and_campaigns_are_the_spec_endpoints_with_an_archived_filter():
    offered = {path for (method, path), operation in SPEC.operations.items()
               if method == "GET" and "archived" in operation.filters}
    assert offered == {"/api/flows", "/api/campaigns"}
    # the sweep and the child reads (flow actions, campaign messages) list their parents through them
    assert {s.parent for s in STREAMS if s.parent} >= {"flows", "campaigns"}


@pytest.mark.parametrize("stream", STREAMS, ids=lambda s: s.name)
def test_column_names_fit_every_destination_unchanged(stream):
    # PostgreSQL cuts identifiers at 63 characters (dlt then hashes): names must fit by design
    # and be left as they are by dlt's naming convention, so every destination has the same
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    naming = NamingConvention()
    for column in stream_columns(stream, stream.additional_fields + stream.optional_fields):
        assert len(column.name) <= 63, column.name
        assert naming.normalize_path(column.name) == column.name, column.name


def test_long_column_names_are_shortened_by_the_documented_rule():
    from klaviyo_source.naming import column_name, hashed

    assert column_name(("location", "city")) == "location__city"
    # rule 1: the last segment loses the words its path already says
    assert column_name(("subscriptions", "sms", "transactional", "can_receive_sms_transactional")) == \
        "subscriptions__sms__transactional__can_receive"
    assert column_name(("subscriptions", "mobile_push", "marketing", "can_receive_push_marketing")) == \
        "subscriptions__mobile_push__marketing__can_receive"
    # rule 2: still too long, nothing left to drop, or the short name is taken: cut + stable hash
    long = ("properties", "a_very_long_custom_property_key_that_nobody_would_ever_shorten_by_hand")
    assert column_name(long) == hashed("__".join(long)) == column_name(long)
    assert len(column_name(long)) == 63 and column_name(long).startswith("properties__a_very_long")
    taken = {"subscriptions__sms__transactional__can_receive"}
    name = column_name(("subscriptions", "sms", "transactional", "can_receive_sms_transactional"), taken)
    assert name not in taken and len(name) <= 63
