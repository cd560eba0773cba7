"""Config parsing, local validation and change detection (in-memory DuckDB over Arrow; no HTTP)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from klaviyo_source.reverse_sync import ConfigError, ReverseSyncConfig
from klaviyo_source.reverse_sync.diff import STATE_COLUMNS, empty_state, plan
from klaviyo_source.reverse_sync.flags import config_from_flags
from klaviyo_source.reverse_sync.mapping import build_clear

CONFIG = {
    "name": "t", "table": "aud",
    "identifiers": {"email": "email", "phone_number": "phone", "external_id": "cid"},
    "attributes": {"first_name": "fn", "location": {"city": "city", "latitude": "lat"}},
    "properties": {"ltv": "ltv"}, "properties_json": "extra",
    "list": {"name": "VIP", "mode": "mirror"},
}


def audience(**columns):
    base = {"email": ["a@x.com"], "phone": [None], "cid": [None], "fn": ["A"], "city": ["Paris"], "lat": [48.85],
            "ltv": [1.5], "extra": ['{"vip": true}']}
    base.update(columns)
    return pa.table(base)


def state_from(work, in_list=True, list_name="VIP"):
    rows = [{"sync_name": "t", "identity_key": r["__identity"], "profile_hash": r["__hash"],
             "present_fields": r["__present"], "in_list": in_list, "list_name": list_name}
            for r in work.upserts.to_pylist()]
    return pa.table({k: pa.array([r.get(k) for r in rows], t) for k, t in STATE_COLUMNS.items()})


def test_toml_config_and_flags(tmp_path):
    path = tmp_path / "audience.toml"
    path.write_text('name = "vip"\nquery = "select * from x"\n[identifiers]\nemail = "email"\n'
                    '[attributes]\n"location.city" = "city"\n[list]\nname = "VIP"\nmode = "mirror"\n'
                    '[consent.email]\ncolumn = "ok"\nconsented_at = "ok_at"\n')
    config = ReverseSyncConfig.from_file(path)
    assert config.attributes == {"location.city": "city"} and config.list.mode == "mirror"
    assert config.consent[0].consented_at == "ok_at"
    flagged = config_from_flags(config_path=path, attributes=["first_name=fn"], list_mode="add", list_id="L1")
    assert flagged.list.id == "L1" and flagged.list.name is None and flagged.list.mode == "add"
    assert flagged.attributes == {"location.city": "city", "first_name": "fn"}
    from_flags = config_from_flags(table="aud", email="mail", list_name="Big Spenders", consent=["email=ok@at"])
    assert from_flags.name == "big_spenders" and from_flags.consent[0].column == "ok"


@pytest.mark.parametrize("raw, message", [
    ({"name": "x", "table": "t", "identifiers": {}}, "at least one identifier"),
    ({"name": "x", "table": "t", "query": "q", "identifiers": {"email": "e"}}, "exactly one of `table` or `query`"),
    ({"name": "x", "table": "t", "identifiers": {"mail": "e"}}, "unknown identifier 'mail'"),
    ({"name": "x", "table": "t", "identifiers": {"email": "e"}, "attributes": {"nickname": "n"}}, "unknown attribute"),
    ({"name": "x", "table": "t", "identifiers": {"email": "e"}, "list": {"name": "L", "mode": "sync"}}, "mode 'sync'"),
    ({"name": "x", "table": "t", "identifiers": {"email": "e"}, "consent": {"sms": {"column": "c"}}},
     "needs the `phone_number` identifier"),
    ({"name": "x", "table": "t", "identifiers": {"email": "e"}, "batch_size": 20000}, "batch_size"),
])
def test_bad_config_is_one_clear_line(raw, message):
    with pytest.raises(ConfigError, match=message) as failure:
        ReverseSyncConfig.from_dict(raw)
    assert "\n" not in str(failure.value)


def test_local_validation_reasons():
    config = ReverseSyncConfig.from_dict(CONFIG)
    rows = audience(
        email=["A@X.com", "bad", None, None, "c@x.com", "a@x.com", "d@x.com", "e@x.com"],
        phone=[None, None, "+1 (415) 555-0100", None, "12", None, None, None],
        cid=[None] * 8, fn=["A", "B", None, "D", "C", "dup", "E", "F"], city=[None] * 8,
        lat=[1.0, 2.0, None, None, None, None, 95.0, None],
        ltv=[1.5, 2.0, 3.0, 4.0, None, None, None, float("nan")],
        extra=['{"a": 1}', None, "[1]", None, None, None, None, None],
    )
    work = plan(config, rows, empty_state())
    reasons = {r["reason"].split(":")[0] for r in work.rejected.to_pylist()}
    assert reasons == {"invalid email", "extra", "no identifier", "invalid phone_number (E.164 needed, like +14155550100)",
                       "duplicate identity email", "invalid location.latitude", "ltv"}
    assert work.upserts.column("__identity").to_pylist() == ["email:a@x.com"]  # lower-cased, trimmed
    dup = next(r for r in work.rejected.to_pylist() if r["reason"].startswith("duplicate"))
    assert '"fn":"dup"' in dup["row_json"]  # the source row is kept with the reason


def test_phone_is_normalised_to_e164():
    config = ReverseSyncConfig.from_dict({**CONFIG, "identifiers": {"phone_number": "phone"}})
    work = plan(config, audience(email=["x"], phone=["+1 (415) 555-0100"]), empty_state())
    assert work.upserts.column("phone_number").to_pylist() == ["+14155550100"]


def test_unchanged_changed_cleared_departed():
    config = ReverseSyncConfig.from_dict(CONFIG)
    rows = audience(email=["a@x.com", "b@x.com", "c@x.com"], phone=[None] * 3, cid=[None] * 3,
                    fn=["A", "B", "C"], city=["P", "Q", "R"], lat=[1.0, 2.0, 3.0], ltv=[1.0, 2.0, 3.0],
                    extra=['{"k": 1}', '{"k": 2}', '{"k": 3}'])
    first = plan(config, rows, empty_state())
    assert first.upserts.num_rows == 3 and all(first.upserts.column("__is_new").to_pylist())
    state = state_from(first)
    assert plan(config, rows, state).upserts.num_rows == 0
    assert plan(config, rows, state).unchanged == 3
    changed = rows.set_column(3, "fn", pa.array(["A", None, "C2"])).set_column(7, "extra", pa.array(['{"k": 1}', '{"k": 2}', "{}"]))
    work = plan(config, changed.slice(1, 2), state)
    by_identity = {r["__identity"]: r for r in work.upserts.to_pylist()}
    assert set(by_identity) == {"email:b@x.com", "email:c@x.com"}
    assert by_identity["email:b@x.com"]["__cleared"] == ["first_name"]
    assert by_identity["email:c@x.com"]["__cleared"] == ["json.k"]
    assert work.departed.column("identity_key").to_pylist() == ["email:a@x.com"]
    # another list: everyone has to be added again, nobody departs from the new list's point of view
    other = plan(ReverseSyncConfig.from_dict({**CONFIG, "list": {"name": "Other", "mode": "mirror"}}), rows, state)
    assert other.upserts.num_rows == 3 and not any(other.upserts.column("__changed").to_pylist())
    assert other.departed.num_rows == 0


def test_payload_builders():
    row = {"email": "a@x.com", "phone_number": None, "first_name": "A", "location.city": "Paris",
           "properties.ltv": 2.5, "external_id": None}
    assert build_clear(row, ["first_name", "location.city", "properties.ltv", "json.vip"]) == {"data": {
        "type": "profile", "attributes": {"email": "a@x.com", "first_name": None, "location": {"city": None},
                                          "properties": {"ltv": None, "vip": None}}}}


def test_bulk_import_bodies_built_by_the_plan():
    """Each row's profile resource: nulls left out, location and properties nested, named
    properties over the JSON column's keys, datetimes in ISO 8601 (inside lists and structs too)."""
    import datetime as dt

    import orjson

    utc = dt.timezone.utc
    config = ReverseSyncConfig.from_dict({
        "name": "t", "table": "aud", "identifiers": {"email": "email", "phone_number": "phone"},
        "attributes": {"first_name": "fn", "location": {"city": "city", "latitude": "lat"}},
        "properties": {"ltv": "ltv", "when": "when", "naive": "naive", "day": "day", "tags": "tags",
                       "over": "over", "s": "s", "dates": "dates"},
        "properties_json": "extra"})
    rows = pa.table({
        "email": ["a@x.com", "b@x.com", "c@x.com"], "phone": [None, "+14155550100", None],
        "fn": ['Ä "q" \\ \n', None, None], "city": ["Paris", None, None], "lat": [48.85, None, 1.0],
        "ltv": [1.5, None, 1e20],
        "when": pa.array([dt.datetime(2024, 1, 1, 10, tzinfo=utc), dt.datetime(2024, 1, 1, 10, 0, 0, 500, tzinfo=utc),
                          dt.datetime(1960, 5, 1, 0, 0, 0, 999999, tzinfo=utc)], pa.timestamp("us", tz="UTC")),
        "naive": pa.array([dt.datetime(2024, 1, 1, 10), None, dt.datetime(2024, 1, 1, 10, 0, 0, 120000)], pa.timestamp("us")),
        "day": pa.array([dt.date(2024, 1, 2), None, None]), "tags": pa.array([["a", "b"], None, []]),
        "over": ["named", None, "named2"],
        "s": pa.array([{"a": 1, "b": "x", "at": dt.datetime(2024, 3, 1, 8, tzinfo=utc)}, None,
                       {"a": None, "b": "y", "at": None}], pa.struct([("a", pa.int64()), ("b", pa.string()),
                                                                        ("at", pa.timestamp("us", tz="UTC"))])),
        "dates": pa.array([[dt.datetime(2024, 1, 1, 9, 30)], None, [None, dt.datetime(2024, 1, 2)]], pa.list_(pa.timestamp("us"))),
        "extra": ['{"vip": true, "over": "json", "z": null, "nested": {"k": [1, 2]}}', None, '{"over": "json2"}'],
    })
    bodies = [orjson.loads(b) for b in plan(config, rows, empty_state()).upserts.column("__body").to_pylist()]
    assert bodies == [
        {"type": "profile", "attributes": {
            "email": "a@x.com", "first_name": 'Ä "q" \\ \n', "location": {"city": "Paris", "latitude": 48.85},
            "properties": {"vip": True, "over": "named", "z": None, "nested": {"k": [1, 2]}, "ltv": 1.5,
                           "when": "2024-01-01T10:00:00+00:00", "naive": "2024-01-01T10:00:00", "day": "2024-01-02",
                           "tags": ["a", "b"], "s": {"a": 1, "b": "x", "at": "2024-03-01T08:00:00+00:00"},
                           "dates": ["2024-01-01T09:30:00"]}}},
        {"type": "profile", "attributes": {"email": "b@x.com", "phone_number": "+14155550100",
                                           "properties": {"when": "2024-01-01T10:00:00.000500+00:00"}}},
        {"type": "profile", "attributes": {
            "email": "c@x.com", "location": {"latitude": 1.0},
            "properties": {"over": "named2", "ltv": 1e20, "when": "1960-05-01T00:00:00.999999+00:00",
                           "naive": "2024-01-01T10:00:00.120000", "tags": [], "s": {"a": None, "b": "y", "at": None},
                           "dates": [None, "2024-01-02T00:00:00"]}}},
    ]


def test_bulk_jobs_respect_the_profile_count_and_payload_size():
    from klaviyo_source.reverse_sync.writer import batches

    small = [b"x" * 100] * 25_000
    assert [len(group) for group in batches(small)] == [10_000, 10_000, 5_000]
    big = [b"y" * 60_000] * 200  # 60 KB each: 5 MB holds 83 of them with the job envelope
    groups = list(batches(big))
    assert all(sum(len(p) + 1 for p in group) + 200 <= 5_000_000 for group in groups)
    assert len(groups[0]) == 83 and sum(len(group) for group in groups) == 200
    # records carrying their payload are grouped by the payload's size, lazily
    records = iter([("id", b"z" * 60_000)] * 200)
    first = next(batches(records, size=lambda record: len(record[1])))
    assert len(first) == 83 and len(list(records)) == 200 - 84  # read one past the first job, no further


def test_consent_time_must_be_a_past_timestamp():
    config = ReverseSyncConfig.from_dict({"name": "t", "table": "aud", "identifiers": {"email": "email"},
                                          "consent": {"email": {"column": "ok", "consented_at": "at"}}})
    rows = pa.table({"email": ["a@x.com", "b@x.com", "c@x.com", "d@x.com"], "ok": [True, True, True, False],
                     "at": ["2024-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "garbage", None]})
    work = plan(config, rows, empty_state())
    assert [r["reason"].split(":")[0] for r in work.rejected.to_pylist()] == ["at", "at"]
    assert work.consents.column("__identity").to_pylist() == ["email:a@x.com"]  # d@x.com did not consent


class _RecordingState:
    """A SyncState stand-in recording commits; the commit numbered ``fail_on`` raises."""

    def __init__(self, fail_on=None, hold=None):
        self.commits, self.fail_on, self.hold = [], fail_on, hold

    def commit(self, rows, rejects, run_id=""):
        if self.hold is not None:
            self.hold.wait(10)
        if len(self.commits) + 1 == self.fail_on:
            raise OSError("warehouse went away")
        self.commits.append((rows.column("identity_key").to_pylist(), [r[1] for r in rejects], run_id))


def test_background_commits_keep_order_merge_what_waits_and_report_failures():
    import threading
    import time

    from klaviyo_source.reverse_sync.state import BackgroundCommits, state_table

    hold = threading.Event()
    state = _RecordingState(hold=hold)
    commits = BackgroundCommits(state, "run1")
    commits.put(state_table([{"identity_key": "a"}]), [])
    commits.put(state_table([{"identity_key": "b"}]), [("import_error", "x", "bad", None)])  # waits behind the held commit
    commits.put(state_table([{"identity_key": "c"}]), [])
    hold.set()
    commits.close()
    # in order; what arrived while the first commit was held went out together in one more
    assert [key for keys, _, _ in state.commits for key in keys] == ["a", "b", "c"] and len(state.commits) <= 2
    assert [x for _, rejects, _ in state.commits for x in rejects] == ["x"] and state.commits[0][2] == "run1"

    # commits at most every min_interval; closing does not wait for the interval
    spaced = _RecordingState()
    commits = BackgroundCommits(spaced, "run3", min_interval=60)
    commits.put(state_table([{"identity_key": "a"}]), [])
    deadline = time.monotonic() + 10
    while not spaced.commits and time.monotonic() < deadline:
        time.sleep(0.01)
    commits.put(state_table([{"identity_key": "b"}]), [])
    commits.put(state_table([{"identity_key": "c"}]), [])
    time.sleep(0.2)
    assert [keys for keys, _, _ in spaced.commits] == [["a"]]  # b and c wait for the interval
    started = time.monotonic()
    commits.close()
    assert [keys for keys, _, _ in spaced.commits] == [["a"], ["b", "c"]] and time.monotonic() - started < 5

    # held (the run expects to close soon): nothing starts until close, which commits at once
    held = _RecordingState()
    commits = BackgroundCommits(held, "run4")
    commits.hold(60)
    commits.put(state_table([{"identity_key": "a"}]), [])
    time.sleep(0.2)
    assert held.commits == []
    commits.close()
    assert [keys for keys, _, _ in held.commits] == [["a"]]

    failing = BackgroundCommits(_RecordingState(fail_on=1), "run2")
    failing.put(state_table([{"identity_key": "a"}]), [])
    with pytest.raises(OSError, match="went away"):
        failing.close()
    failing.close(raise_failure=False)  # another error already on its way: no second one


def test_a_job_submitted_ahead_is_polled_without_waiting(monkeypatch):
    import time

    from klaviyo_source.reverse_sync import writer as writer_module

    class Client:
        def get(self, path, params=None):
            return {"data": {"attributes": {"status": "complete", "failed_count": 0}}}

    slept = []
    monkeypatch.setattr(writer_module.time, "sleep", slept.append)
    kw = writer_module.KlaviyoWriter(Client(), poll_interval=5.0)
    assert kw.wait_import("JOB", submitted_at=time.monotonic() - 60)["status"] == "complete"
    assert slept == []  # due long ago
    assert kw.wait_import("JOB")["status"] == "complete"
    assert len(slept) == 1 and 4.0 < slept[0] <= 5.0  # a job just submitted waits one interval
