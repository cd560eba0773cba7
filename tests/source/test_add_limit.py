"""dlt's ``add_limit(n)`` limits what is read: one step is one API page when a limit is set.

Without a limit pages are gathered into large Arrow batches (fewer, cheaper dlt items); with one,
each page is its own item, so ``add_limit(2)`` reads two pages, not every record."""

from __future__ import annotations

import dlt
import pytest

from klaviyo_source import klaviyo_source
from klaviyo_source.streams import streams_by_name

PROFILES, EVENTS = 1000, 5000


@pytest.fixture
def big_sandbox():
    from klaviyo_sandbox import Sandbox

    with Sandbox(seed=3, accounts=1, profiles=PROFILES, events=EVENTS, rate_limits=False) as sb:
        yield sb


def _page(name: str) -> int:
    return streams_by_name()[name].page_size


def _run(sb, tmp_path, source, name="lim"):
    pipeline = dlt.pipeline(f"limit_{name}", destination=dlt.destinations.duckdb(str(tmp_path / f"{name}.duckdb")),
                            dataset_name="limited", pipelines_dir=str(tmp_path / "p"))
    pipeline.run(source)
    counts = pipeline.last_trace.last_normalize_info.row_counts
    return pipeline, counts


def _source(sb, *resources, **kwargs):
    return klaviyo_source(api_key=sb.api_key, base_url=sb.base_url, resources=list(resources), pacing=False, **kwargs)


def test_add_limit_on_the_source_reads_that_many_pages(big_sandbox, tmp_path):
    source = _source(big_sandbox, "profiles", "events")
    source.add_limit(2)
    pipeline, counts = _run(big_sandbox, tmp_path, source)
    assert counts["profiles"] == 2 * _page("profiles") < PROFILES
    assert counts["events"] == 2 * _page("events") < EVENTS


def test_limited_incremental_runs_continue_where_the_last_stopped(big_sandbox, tmp_path):
    """Pages of a limited run come in cursor order, so repeated limited runs load everything once."""
    loaded = 0
    for attempt in range(PROFILES // (3 * _page("profiles")) + 2):
        source = _source(big_sandbox, "profiles")
        source.resources["profiles"].add_limit(3)
        pipeline, counts = _run(big_sandbox, tmp_path, source)
        loaded = pipeline.dataset().query("SELECT count(*) FROM profiles").fetchall()[0][0]
        if loaded == PROFILES:
            break
        assert counts["profiles"] == 3 * _page("profiles")
    assert loaded == PROFILES
    ids = [r[0] for r in pipeline.dataset().query("SELECT id FROM profiles").fetchall()]
    assert len(ids) == len(set(ids)) == len(big_sandbox.store.all(big_sandbox.accounts[0].id, "profile"))


def test_add_limit_counting_rows(big_sandbox, tmp_path):
    source = _source(big_sandbox, "profiles")
    source.resources["profiles"].add_limit(150, count_rows=True)
    _, counts = _run(big_sandbox, tmp_path, source)
    assert 150 <= counts["profiles"] < 150 + _page("profiles")


def test_without_a_limit_pages_are_batched(big_sandbox, tmp_path):
    """The fast path stays: every page of a read of 1,000 profiles arrives as one Arrow table."""
    source = _source(big_sandbox, "profiles")
    items: list[int] = []
    source.resources["profiles"].add_map(lambda table: (items.append(table.num_rows), table)[1])
    _, counts = _run(big_sandbox, tmp_path, source)
    assert counts["profiles"] == sum(items) == PROFILES
    assert len(items) == 1
