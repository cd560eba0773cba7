"""Custom stream rows agree with the spec; slow tiers are paced so the sandbox never answers 429."""

from __future__ import annotations

import pytest

from klaviyo_sandbox.spec import load_spec
from klaviyo_source.streams import CUSTOM_STREAMS, MORE_STREAMS

SPEC = load_spec()
METHODS = {"tag_links": "GET", "webhook_topics": "GET", "metric_aggregates": "POST",
           "campaign_values_reports": "POST", "flow_series_reports": "POST"}


@pytest.mark.parametrize("stream", CUSTOM_STREAMS, ids=lambda s: s.name)
def test_custom_rows_rate_tiers_are_the_specs(stream):
    paths = [stream.path.replace("{kind}", kind) for kind in ("campaigns", "flows", "lists", "segments")] \
        if "{kind}" in stream.path else [stream.path]
    for path in paths:
        limit = SPEC.operation(METHODS[stream.name], path).rate_limit
        assert (limit.burst_per_second, limit.steady_per_minute) == (stream.rate_tier.burst_per_second,
                                                                     stream.rate_tier.steady_per_minute), path


def test_child_rows_name_existing_parents_and_parameterised_paths():
    from klaviyo_source.streams import streams_by_name

    names = streams_by_name()
    for stream in MORE_STREAMS:
        if stream.parent:
            assert stream.parent in names and "{id}" in stream.path, stream.name


def test_slow_tiers_are_paced_under_the_sandbox_limits(tmp_path, unique_name):
    """The sandbox enforces the spec's limits (time-scaled); one attempt per request: any 429 fails the run."""
    import dlt

    from klaviyo_sandbox import Sandbox
    from klaviyo_source import klaviyo_source

    scale = 1.0  # the real windows: unpaced requests (several per second here) overrun the 3/s tier
    # response validation (on in tests) slows the sandbox below the limits; off here so pacing is what counts
    with Sandbox(rate_limits=True, rate_limit_scale=scale, seed=3, profiles=60, events=400,
                 validate_responses=False) as sb:
        source = klaviyo_source(api_key=sb.api_key, base_url=sb.base_url, rate_limit_scale=scale, max_attempts=1,
                                resources=["webhooks", "webhook_topics", "accounts", "flow_actions",
                                           "campaign_values_reports", "flow_series_reports"])
        pipeline = dlt.pipeline(pipeline_name=f"paced_{unique_name}", pipelines_dir=str(tmp_path / "p"),
                                destination=dlt.destinations.duckdb(str(tmp_path / "paced.duckdb")),
                                dataset_name=f"paced_{unique_name}")
        pipeline.run(source, loader_file_format="parquet")
        with pipeline.sql_client() as client:
            assert client.execute_sql("SELECT count(*) FROM flow_actions")[0][0] > 0
            assert client.execute_sql("SELECT count(*) FROM webhooks")[0][0] == 2
