"""Values a destination cannot store (NUL, lone UTF-16 surrogates) are cleaned on the way in.

PostgreSQL rejects NUL in text and ``\\u0000`` / unpaired surrogate escapes in jsonb: one such value
in one profile used to fail every PostgreSQL sync.  The source strips NUL and replaces lone
surrogates with U+FFFD while decoding pages, on every destination alike.
"""

from __future__ import annotations

import orjson
import pyarrow as pa

from klaviyo_source.arrow import PageConverter
from klaviyo_source.columns import stream_columns
from klaviyo_source.streams import streams_by_name

STREAMS = streams_by_name()


def test_nul_in_a_profile_attribute_and_property_loads_cleaned(runner):
    sb = runner.sb
    profile = sb.control.records("profile")[0]["id"]
    sb.control.update_profile(profile, attributes={"first_name": "Ann\x00e", "location": {"city": "Bo\x00ston"}},
                              properties={"note": "a\x00b", "nul\x00key": "v"})
    event = sb.control.insert_event(profile, "Placed Order", properties={"OrderId": "X\x00Y", "$message": "m\x00"},
                                    value=3.5)
    runner.run(["profiles", "events", "metrics"])
    first, city, props = runner.rows(f"SELECT first_name, location__city, properties FROM profiles WHERE id = '{profile}'")[0]
    assert (first, city) == ("Anne", "Boston")
    props = props if isinstance(props, dict) else orjson.loads(props)
    assert props["note"] == "ab" and props["nulkey"] == "v"
    message, bag = runner.rows(f"SELECT message_id, event_properties FROM events WHERE id = '{event}'")[0]
    bag = bag if isinstance(bag, dict) else orjson.loads(bag)
    assert message == "m" and bag["OrderId"] == "XY"
    assert runner.count("profiles") == len(sb.control.records("profile"))


def _body(attributes: dict) -> bytes:
    return b'{"data":[{"type":"profile","id":"P1","attributes":' + orjson.dumps(attributes).replace(b"NUL", b"\\u0000") \
        .replace(b"HIGH", b"\\ud83d").replace(b"LOW", b"\\ude00").replace(b"BSL", b"\\\\") + b'}],"links":{}}'


def test_page_decoding_strips_nul_and_replaces_lone_surrogates():
    converter = PageConverter(stream_columns(STREAMS["profiles"]))
    body = _body({"first_name": "aNULb", "last_name": "xHIGH", "title": "LOWy", "organization": "HIGHLOW ok",
                  "locale": "BSLu0000 is text", "properties": {"kNULey": "vNUL", "lone": "HIGHz", "pair": "HIGHLOW"}})
    row = converter.convert_page(converter.decoder.decode(body)).to_pylist()[0]
    assert row["first_name"] == "ab"
    assert row["last_name"] == "x\ufffd" and row["title"] == "\ufffdy"
    assert row["organization"] == "\U0001F600 ok"  # a surrogate pair is one character, kept
    assert row["locale"] == "\\u0000 is text"  # an escaped backslash followed by u0000 is not a NUL
    assert orjson.loads(row["properties"]) == {"key": "v", "lone": "\ufffdz", "pair": "\U0001F600"}


def test_clean_pages_are_decoded_unchanged():
    converter = PageConverter(stream_columns(STREAMS["profiles"]))
    body = _body({"first_name": "Zoë", "properties": {"emoji": "🎉", "path": "BSLBSL"}})
    assert b"\\u" not in body
    table = converter.convert_page(converter.decoder.decode(body))
    assert table.column("first_name").to_pylist() == ["Zoë"]
    assert orjson.loads(table.column("properties")[0].as_py()) == {"emoji": "🎉", "path": "\\\\"}
    assert isinstance(table, pa.Table)


def test_a_broken_body_still_fails_as_before():
    import msgspec
    import pytest

    from klaviyo_source.cleaning import CLEAN_ORJSON

    converter = PageConverter(stream_columns(STREAMS["profiles"]))
    body = _body({"first_name": "aBSLnb", "properties": {"x": "yNUL"}})
    with pytest.raises(msgspec.DecodeError):
        converter.decoder.decode(body[:-20])  # cut mid-document: a truncated body is retried by the client
    with pytest.raises(orjson.JSONDecodeError):
        CLEAN_ORJSON.decode(body[:-20])
    assert CLEAN_ORJSON.decode(body)["data"][0]["attributes"]["properties"] == {"x": "y"}
