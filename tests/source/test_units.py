"""Pure units of the source: filters, durations, the pacer, page -> arrow conversion."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import orjson
import pyarrow as pa
import pytest

from klaviyo_source.arrow import PageConverter
from klaviyo_source.columns import stream_columns
from klaviyo_source.errors import KlaviyoConfigError
from klaviyo_source.filters import combine, condition, parse_datetime, parse_duration, range_conditions
from klaviyo_source.pacing import Pacer, RateTier
from klaviyo_source.streams import streams_by_name

STREAMS = streams_by_name()
UTC = timezone.utc


def test_profiles_filter_reads_the_watermark_second_again():
    start = datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)
    now = datetime(2024, 6, 1, tzinfo=UTC)
    conds = range_conditions("updated", ("greater-than", "less-than"), start, None, now)
    assert conds == ["greater-than(updated,2024-05-01T11:59:59+00:00)"]


def test_future_datetimes_are_clamped_and_future_ends_dropped():
    now = datetime(2024, 6, 1, tzinfo=UTC)
    conds = range_conditions(
        "datetime", ("greater-or-equal", "less-than"), now + timedelta(days=2), now + timedelta(days=3), now
    )
    assert conds == ["greater-or-equal(datetime,2024-05-31T23:59:59+00:00)"]


def test_filter_syntax():
    assert condition("equals", "messages.channel", "email") == "equals(messages.channel,'email')"
    assert condition("equals", "archived", True) == "equals(archived,true)"
    assert combine(["a(x,1)", "b(y,2)"]) == "and(a(x,1),b(y,2))"
    assert combine(["a(x,1)"]) == "a(x,1)" and combine([]) is None


def test_dates_and_durations_fail_with_one_line():
    assert parse_datetime("2024-01-31", "start_date") == datetime(2024, 1, 31, tzinfo=UTC)
    assert parse_datetime("2024-01-31T10:00:00Z", "start_date").hour == 10
    with pytest.raises(KlaviyoConfigError, match="start_date='31/01/2024' is not a date") as err:
        parse_datetime("31/01/2024", "start_date")
    assert "\n" not in str(err.value)
    assert parse_duration("3d", "event_lookback") == timedelta(days=3)
    assert parse_duration("90m", "x") == timedelta(minutes=90)
    assert parse_duration(3600, "x") == timedelta(hours=1)
    with pytest.raises(KlaviyoConfigError, match="event_lookback"):
        parse_duration("three days", "event_lookback")


def test_pendulum_dates_stay_timezone_aware_in_window_arithmetic():
    import pendulum

    start = parse_datetime(pendulum.datetime(2024, 1, 1, 12), "start_date")
    end = parse_datetime(pendulum.now().subtract(days=1), "end_date")
    # window edges are computed as start + timedelta: they must stay comparable with end
    assert start + timedelta(hours=1) < end
    assert start.tzinfo is timezone.utc and type(start) is datetime


def test_pacer_keeps_every_window_under_both_limits():
    tier = RateTier(burst_per_second=5, steady_per_minute=12)
    scale = 0.02  # windows of 20 ms and 1.2 s
    pacer = Pacer(tier, scale=scale, margin=0.0)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(8):
            pacer.acquire()
            with lock:
                stamps.append(time.monotonic())
            time.sleep(0.001)  # the "request"
            pacer.release()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    stamps.sort()
    for window, limit in ((1.0 * scale, 5), (60.0 * scale, 12)):
        for i, t0 in enumerate(stamps):
            in_window = sum(1 for t in stamps[i:] if t - t0 < window)
            assert in_window <= limit, (window, in_window)
    # 32 requests at 12 per 1.2 s need at least two full steady windows; not much more
    assert tier.min_seconds(32, scale) == pytest.approx(2.42)
    assert 2.4 <= elapsed < 2.4 + 0.8


def test_page_to_arrow_flattens_types_and_keeps_bags_as_json():
    profiles = STREAMS["profiles"]
    converter = PageConverter(stream_columns(profiles, ("subscriptions",)))
    records = [
        {
            "type": "profile",
            "id": "P1",
            "attributes": {
                "email": "a@example.com",
                "updated": "2024-05-01T12:00:00+00:00",
                "location": {"city": "Boston", "latitude": 42.36},
                "properties": {"Plan": "gold", "plan": "x", "a.b": 1, "with space": True},
                "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED", "can_receive_email_marketing": True}}},
                "brand_new_attribute": 7,
            },
        },
        {"type": "profile", "id": "P2", "attributes": {"email": None, "updated": "2024-05-02T00:00:00.250+02:00"}},
    ]
    table = converter.convert(records)
    assert table.column_names[0] == "id"
    assert table.schema.field("updated").type == pa.timestamp("us", tz="UTC")
    assert table.column("updated").to_pylist()[1] == datetime(2024, 5, 1, 22, 0, 0, 250000, tzinfo=UTC)
    assert table.column("location__city").to_pylist() == ["Boston", None]
    assert table.column("subscriptions__email__marketing__consent").to_pylist() == ["SUBSCRIBED", None]
    assert table.column("properties").to_pylist()[0] == '{"Plan":"gold","plan":"x","a.b":1,"with space":true}'
    assert table.column("brand_new_attribute").to_pylist() == [7, None]


def test_flatten_properties_option():
    profiles = STREAMS["profiles"]
    converter = PageConverter(stream_columns(profiles), flatten_bags=True)
    records = [{"id": "P1", "attributes": {"properties": {"Plan": "gold", "nested": {"level": 2}, "plan": "x",
                                                         "Größe": "M", "empty": {}}}},
               {"id": "P2", "attributes": {}}]
    for table in (converter.convert(records),
                  converter.convert_page(converter.decoder.decode(orjson.dumps({"data": records})))):
        # column names as dlt would make them; keys without a column of their own stay in the JSON bag
        assert table.column("properties__plan").to_pylist() == ["gold", None]
        assert table.column("properties__nested__level").to_pylist() == [2, None]
        assert [None if v is None else orjson.loads(v) for v in table.column("properties").to_pylist()] == [
            {"plan": "x", "Größe": "M", "empty": {}}, None]


def test_events_relationships_and_promoted_value():
    events = STREAMS["events"]
    converter = PageConverter(stream_columns(events))
    table = converter.convert(
        [
            {
                "id": "E1",
                "attributes": {"datetime": "2024-05-01T12:00:00+00:00", "timestamp": 1714564800,
                               "event_properties": {"$value": 12.5, "OrderId": "A"}},
                "relationships": {"metric": {"data": {"type": "metric", "id": "M1"}},
                                  "profile": {"data": {"type": "profile", "id": "P1"}}},
            }
        ]
    )
    row = table.to_pylist()[0]
    assert (row["metric_id"], row["profile_id"], row["value"]) == ("M1", "P1", 12.5)


def test_typed_decoding_matches_the_dict_path():
    import orjson

    events = STREAMS["events"]
    converter = PageConverter(stream_columns(events))
    body = orjson.dumps({
        "data": [
            {"type": "event", "id": "E1", "links": {"self": "x"},
             "attributes": {"datetime": "2024-05-01T12:00:00+00:00", "timestamp": 1714564800, "uuid": "u",
                            "event_properties": {"$value": 12.5, "$message": "m1", "Items": [1, 2]}},
             "relationships": {"metric": {"data": {"type": "metric", "id": "M1"}, "links": {}},
                               "profile": {"data": {"type": "profile", "id": "P1"}}}},
            {"type": "event", "id": "E2", "attributes": {"datetime": None, "event_properties": None}},
        ],
        "links": {"next": "https://a.klaviyo.com/api/events?page[cursor]=abc"},
    })
    page = converter.decoder.decode(body)
    assert page.links.next.endswith("[cursor]=abc")
    fast = converter.convert_page(page)
    slow = converter.convert(orjson.loads(body)["data"])
    assert fast.to_pylist() == slow.select(fast.column_names).to_pylist()
    assert fast.column("value").to_pylist() == [12.5, None]
    assert fast.column("event_properties").to_pylist()[0] == '{"$value":12.5,"$message":"m1","Items":[1,2]}'


def _client(source):
    return next(iter(source.resources.values())).reader.client


def test_configured_the_dlt_way_and_from_plain_env_vars(monkeypatch):
    from klaviyo_source import describe, klaviyo_source
    from klaviyo_source.settings import MATON_GATEWAY_URL

    for name in ("SOURCES__KLAVIYO__API_KEY", "KLAVIYO_API_KEY", "MATON_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(Exception) as missing:
        klaviyo_source(resources=["profiles"])
    assert "SOURCES__KLAVIYO__API_KEY" in describe(missing.value) and "\n" not in describe(missing.value)

    monkeypatch.setenv("SOURCES__KLAVIYO__API_KEY", "pk_from_dlt_env")
    client = _client(klaviyo_source(resources=["profiles"]))
    assert client.auth.api_key == "Klaviyo-API-Key pk_from_dlt_env"
    assert client.headers["revision"] == "2026-07-15"
    monkeypatch.delenv("SOURCES__KLAVIYO__API_KEY")

    monkeypatch.setenv("KLAVIYO_API_KEY", "pk_from_plain_env")
    assert _client(klaviyo_source(resources=["profiles"])).auth.api_key == "Klaviyo-API-Key pk_from_plain_env"

    monkeypatch.setenv("MATON_API_KEY", "maton_key")
    client = _client(klaviyo_source(auth="maton", maton_connection="conn-1", resources=["profiles"]))
    assert client.base_url == MATON_GATEWAY_URL
    assert client.auth.token == "maton_key"
    assert client.headers["Maton-Connection"] == "conn-1"
    assert _client(klaviyo_source(auth="bearer", api_key="oauth_tok", resources=["profiles"])).auth.token == "oauth_tok"
