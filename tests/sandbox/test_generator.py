"""The seeded generator: determinism, realistic shapes, and a small generation-size check."""

from __future__ import annotations

import datetime as dt
import hashlib

from klaviyo_sandbox.generator import STANDARD_METRICS, generate
from klaviyo_sandbox.store import Store

NOW = dt.datetime(2026, 7, 20, tzinfo=dt.timezone.utc)


def _fingerprint(store: Store) -> str:
    digest = hashlib.sha256()
    for table in ("profiles", "events", "lists", "campaigns", "links"):
        cols = "account, seq, id, attrs" if table != "links" else "account, link, a, b, joined_at"
        for row in store.db.execute(f"SELECT {cols} FROM {table} ORDER BY ALL").fetchall():
            digest.update(repr(row).encode())
    return digest.hexdigest()


def _make(seed: int, profiles=200, events=2000, accounts=1) -> tuple[Store, list]:
    store = Store()
    return store, generate(store, seed=seed, accounts=accounts, profiles=profiles, events=events, now=NOW)


def test_same_seed_same_data():
    a, acc_a = _make(11)
    b, acc_b = _make(11)
    c, _ = _make(12)
    assert [x.api_key for x in acc_a] == [x.api_key for x in acc_b]
    assert _fingerprint(a) == _fingerprint(b)
    assert _fingerprint(a) != _fingerprint(c)


def test_generation_size_and_shapes():
    store, accounts = _make(1, profiles=2000, events=20000, accounts=2)
    for account in accounts:
        assert store.count(account.id, "profile") == 2000
        assert store.count(account.id, "event") == 20000
    acct = accounts[0].id
    ids = store.db.execute("SELECT count(DISTINCT id), count(*) FROM events").fetchone()
    assert ids[0] == ids[1] == 40000
    names = {r.attributes["name"] for r in store.all(acct, "metric")}
    assert {m[0] for m in STANDARD_METRICS} == names
    # events reference existing profiles and metrics, happen after the profile was created, before now
    orphans = store.db.execute(
        "SELECT count(*) FROM events e LEFT JOIN profiles p ON p.id = e.rel_profile AND p.account = e.account "
        "LEFT JOIN metrics m ON m.id = e.rel_metric AND m.account = e.account WHERE p.id IS NULL OR m.id IS NULL"
    ).fetchone()[0]
    assert orphans == 0
    early = store.db.execute(
        "SELECT count(*) FROM events e JOIN profiles p ON p.id = e.rel_profile WHERE e.datetime < p.created").fetchone()[0]
    assert early == 0
    span = store.db.execute("SELECT min(datetime), max(datetime) FROM events").fetchone()
    assert span[1] <= NOW.replace(tzinfo=None) and (span[1] - span[0]).days > 600
    backdated = store.db.execute("SELECT count(*) FROM events WHERE inserted_at > datetime + INTERVAL 1 DAY").fetchone()[0]
    assert 0.01 * 40000 < backdated < 0.06 * 40000
    # placed orders carry $value and items
    placed = next(r.id for r in store.all(acct, "metric") if r.attributes["name"] == "Placed Order")
    order = store.db.execute("SELECT attrs FROM events WHERE rel_metric = ? LIMIT 1", [placed]).fetchone()[0]
    assert '"$value"' in order and '"Items"' in order
    # phone-only profiles exist; awkward property keys exist
    profiles = store.all(acct, "profile")
    assert any(p.attributes["email"] is None and p.attributes["phone_number"] for p in profiles)
    keys = {k for p in profiles for k in (p.attributes["properties"] or {})}
    assert {"Favorite Color", "favorite color", "plan.tier", "Größe", "shoe size ", "nested"} <= keys
    # memberships with joined_group_at, campaigns on three channels incl. archived
    assert store.members(acct, "list", store.ids(acct, "list")[0])
    channels = {r[0] for r in store.db.execute("SELECT DISTINCT channel FROM campaigns").fetchall()}
    assert channels == {"email", "sms", "mobile_push"}
    assert any(r.attributes["archived"] for r in store.all(acct, "campaign"))


def test_store_write_api():
    store, accounts = _make(2, profiles=20, events=50)
    acct = accounts[0].id
    pid = store.insert(acct, "profile", {"email": "new@example.com", "properties": {"a": 1}})
    assert store.find_profile(acct, email="new@example.com") == pid
    record = store.get(acct, "profile", pid)
    assert record.attributes["created"] and record.attributes["updated"]
    store.clock.set(NOW + dt.timedelta(days=1))
    updated = store.update(acct, "profile", pid, {"first_name": "Z", "properties": {"b": 2}})
    assert updated.attributes["properties"] == {"a": 1, "b": 2}
    assert updated.attributes["updated"] == (NOW + dt.timedelta(days=1)).isoformat()
    list_id = store.ids(acct, "list")[0]
    assert store.add_members(acct, "list", list_id, [pid]) == 1
    assert store.add_members(acct, "list", list_id, [pid]) == 0
    assert pid in [p for p, _ in store.members(acct, "list", list_id)]
    assert store.remove_members(acct, "list", list_id, [pid]) == 1
    assert store.delete(acct, "profile", pid) and store.get(acct, "profile", pid) is None
    assert not store.delete(acct, "profile", pid)
