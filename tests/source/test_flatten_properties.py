"""``flatten_properties=True``: keys that normalise to one column keep every value, on every destination.

Klaviyo property keys are free text: ``Favorite Color`` and ``favorite color`` are two keys whose
column name would be the same, ``Цвет`` and ``颜色`` have no Latin letters at all.  Each key either
has a column of its own (the first key seen to claim that name keeps it, run after run) or stays
in the ``properties`` JSON bag under its own name: nothing is dropped, nothing crashes.
"""

from __future__ import annotations

from typing import Any

import orjson
from dlt.common.normalizers.naming.snake_case import NamingConvention

from klaviyo_source.naming import column_name

NAMING = NamingConvention()
EDGE_KEYS = {"Plan Tier": "gold", "plan tier": "silver", "plan.tier": "bronze", "PLAN_TIER": "tin",
             "Цвет": "red", "цвет": "blue", "颜色": "green", "Вес": 70, "shoe size": 42, "Shoe  Size": 43,
             "nested": {"Level": {"deep": 1}, "level": {"deep": 2}, "empty": {}}}


def _leaves(value: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(value, dict) and value:
        out: dict[tuple[str, ...], Any] = {}
        for key, sub in value.items():
            out.update(_leaves(sub, path + (key,)))
        return out
    return {path: value}


def _json(value: Any) -> Any:
    return value if value is None or isinstance(value, (dict, list)) else orjson.loads(value)


def _same(loaded: Any, expected: Any) -> bool:
    if isinstance(expected, (list, dict)) and isinstance(loaded, str):
        loaded = orjson.loads(loaded)
    if isinstance(expected, float) or isinstance(loaded, float):
        return loaded is not None and expected is not None and abs(float(loaded) - float(expected)) < 1e-9
    return loaded == expected


def _check_every_value_kept(runner, owners: dict[str, tuple[str, ...]]) -> None:
    """Each profile's properties come back whole: from their columns or from the JSON bag."""
    truth = {p["id"]: p["attributes"].get("properties") or {} for p in runner.sb.control.records("profile")}
    with runner.pipeline().sql_client() as client:
        with client.execute_query("SELECT * FROM profiles") as cursor:
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, r)) for r in cursor.fetchall()]
    assert {r["id"] for r in rows} == set(truth)
    flat = [n for n in names if n.startswith("properties__")]
    assert flat, "no property got a column"
    for row in rows:
        bag = _leaves(_json(row["properties"]) or {})
        for path, expected in _leaves(truth[row["id"]]).items():
            if path == ():
                continue
            if path in bag:
                assert _same(bag[path], expected), (row["id"], path)
                continue
            parts = ("properties", *(NAMING.normalize_identifier(p) for p in path))
            column = column_name(parts)
            assert column in row and _same(row[column], expected), (row["id"], path, column)
            # a column always holds the same key
            assert owners.setdefault(column, path) == path, (column, owners[column], path)
        # nothing invented: every column value and bag leaf comes from the profile
        kept = sum(1 for n in flat if row[n] is not None) + len([p for p in bag if p != ()])
        assert kept == len([p for p, v in _leaves(truth[row["id"]]).items() if p != () and (v is not None or p in bag)])


def test_colliding_property_keys_keep_every_value(runner):
    sb = runner.sb
    profiles = [p["id"] for p in sb.control.records("profile")]
    sb.control.update_profile(profiles[0], properties=EDGE_KEYS)
    sb.control.update_profile(profiles[1], properties={"plan tier": "only lower", "Вес": 80})
    runner.run(["profiles"], flatten_properties=True)
    owners: dict[str, tuple[str, ...]] = {}
    _check_every_value_kept(runner, owners)
    # the sandbox's own collision (Favorite Color / favorite color) and the edge keys: one owner each
    assert owners["properties__favorite_color"] in {("Favorite Color",), ("favorite color",)}
    assert owners["properties__plan_tier"] in {(k,) for k in ("Plan Tier", "plan tier", "plan.tier", "PLAN_TIER")}
    assert not any(NAMING.normalize_identifier(k) == "x" for path in owners.values() for k in path)

    # a later run whose only profile has the other spelling: the column keeps its first owner
    owner = owners["properties__plan_tier"]
    other = next(k for k in ("plan tier", "Plan Tier") if (k,) != owner)
    sb.control.set_clock(advance_seconds=5)
    sb.control.update_profile(profiles[3], attributes={"first_name": "Moves the watermark"})
    runner.run(["profiles"], flatten_properties=True)
    sb.control.set_clock(advance_seconds=5)
    sb.control.update_profile(profiles[2], properties={other: "late"})
    pipeline, _ = runner.run(["profiles"], flatten_properties=True)
    assert pipeline.last_trace.last_normalize_info.row_counts["profiles"] <= 2  # profiles[2] (+ the watermark's)
    _check_every_value_kept(runner, owners)
    assert runner.rows(f"SELECT properties__plan_tier FROM profiles WHERE id = '{profiles[2]}'") == [(None,)]


def test_flattened_event_properties_keep_every_value_and_the_promoted_columns(runner):
    sb = runner.sb
    profile = sb.control.records("profile")[0]["id"]
    event = sb.control.insert_event(profile, "Placed Order", value=9.5,
                                    properties={"Order Id": "A1", "order.id": "A2", "Заказ": "A3", "$value": 9.5})
    runner.run(["events", "metrics"], flatten_properties=True)
    row = runner.rows(f"SELECT value, event_properties__order_id, event_properties FROM events WHERE id = '{event}'")[0]
    value, column, bag = row
    assert value == 9.5
    bag = _json(bag)
    # the sandbox's own "OrderId" claimed event_properties__order_id first: these three keep their values
    # in the column only if they own it, else in the bag under their own names
    assert sorted(v for v in (column, *bag.values()) if v is not None) == ["A1", "A2", "A3"] and "Заказ" in bag
    names = {r[0] for r in runner.rows("SELECT column_name FROM information_schema.columns "
                                       f"WHERE table_schema = '{runner.dataset}' AND table_name = 'events'")}
    assert "event_properties__campaign_name" in names and all(len(n) <= 63 for n in names)
