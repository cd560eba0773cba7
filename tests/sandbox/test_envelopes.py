"""The fast per-kind templates produce exactly what the generic serializer does (ids needing escaping included)."""

from __future__ import annotations

import orjson
import pytest

from klaviyo_sandbox.envelopes import Serializer, decode_cursor, encode_cursor, page_url
from klaviyo_sandbox.errors import ApiError
from klaviyo_sandbox.spec import load_spec
from klaviyo_sandbox.store import KINDS, extra_column, rel_column


@pytest.mark.parametrize("type_", sorted(KINDS))
def test_fast_template_equals_generic(sandbox, type_):
    kind = KINDS[type_]
    ser = Serializer(load_spec(), "http://h:1")
    extras = kind.extras
    columns = ["seq", "id", "attrs"] + [rel_column(r) for r in kind.to_one] + [extra_column(x) for x in extras]
    rows = sandbox.store.execute(f"SELECT {', '.join(columns)} FROM {kind.table} LIMIT 50").fetchall()
    assert rows
    texts = ser.fast_page(kind, extras)(rows)
    n_rel = len(kind.to_one)
    for row, text in zip(rows, texts):
        generic = ser.resource(kind, row[1], row[2], dict(zip(kind.to_one, row[3:3 + n_rel])) if n_rel else None,
                               dict(zip(extras, row[3 + n_rel:])) if extras else None)
        assert text is not None
        assert orjson.loads(text) == orjson.loads(generic)


def test_unsafe_ids_fall_back_to_escaping(sandbox):
    kind = KINDS["catalog-item"]
    ser = Serializer(load_spec(), "http://h:1")
    row = (1, 'odd "id"/with space', '{"title":"x"}')
    assert ser.fast_page(kind)([row, (2, "plain", '{"title":"y"}')])[0] is None
    obj = orjson.loads(ser.resource(kind, row[1], row[2]))
    assert obj["id"] == 'odd "id"/with space'
    assert obj["links"]["self"] == "http://h:1/api/catalog-items/odd%20%22id%22%2Fwith%20space/"


def test_odd_id_served_over_http(sandbox, api):
    account = api.account
    odd = "$custom:::$default:::odd \"one\""
    sandbox.store.insert(account, "catalog-item", {"external_id": "odd", "title": "Odd", "published": True}, id=odd)
    try:
        body = api.ok("/api/catalog-items", filter="equals(published,true)")
        found = [i for i in body["data"] if i["id"] == odd]
        assert len(found) == 1
        single = api.get(found[0]["links"]["self"])
        assert single.status_code == 200 and single.json()["data"]["id"] == odd
    finally:
        sandbox.store.delete(account, "catalog-item", odd)


def test_cursor_round_trip_and_page_url():
    assert decode_cursor(encode_cursor(["2024-01-01T00:00:00", 42])) == ["2024-01-01T00:00:00", 42]
    with pytest.raises(ApiError):
        decode_cursor("%%%")
    url = page_url("http://h", "/api/events", [("filter", "equals(a,'b')"), ("page[cursor]", "old")], "new")
    assert url == "http://h/api/events?filter=equals(a,'b')&page[cursor]=new"
