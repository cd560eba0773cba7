"""The API scopes documented per resource are exactly those of the spec operations it calls."""

from __future__ import annotations

from urllib.parse import urlsplit

import dlt
import pytest
import requests

from klaviyo_source import klaviyo_source
from klaviyo_source.columns import spec
from klaviyo_source.scopes import resource_scopes
from klaviyo_source.streams import ALL_STREAMS


@pytest.fixture
def calls(monkeypatch):
    """(host, method, path) of every HTTP request sent in this process."""
    seen: list[tuple[str, str, str]] = []
    send = requests.Session.send

    def recording(self, request, **kwargs):
        url = urlsplit(request.url)
        seen.append((url.netloc, request.method, url.path))
        return send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", recording)
    return seen


@pytest.mark.slow
def test_documented_scopes_are_what_each_resource_calls(sandbox, tmp_path, calls):
    index = spec()
    wrong = {}
    for stream in ALL_STREAMS:
        calls.clear()
        pipeline = dlt.pipeline(f"scopes_{stream.name}", pipelines_dir=str(tmp_path / "p"), dataset_name="scopes",
                                destination=dlt.destinations.duckdb(str(tmp_path / f"{stream.name}.duckdb")))
        pipeline.run(klaviyo_source(api_key=sandbox.api_key, base_url=sandbox.base_url, resources=[stream.name],
                                    pacing=False))
        called = set()
        host = urlsplit(sandbox.base_url).netloc
        for method, path in ((m, p) for netloc, m, p in calls if netloc == host):  # not dlt's telemetry
            found = index.match(method, path)
            assert found is not None, f"{stream.name} called {method} {path}, which the spec does not have"
            called.update(found[0].scopes)
        if set(resource_scopes(stream)) != called:
            wrong[stream.name] = (sorted(resource_scopes(stream)), sorted(called))
    assert not wrong, wrong


def test_scopes_table_in_the_readme_is_generated():
    from pathlib import Path

    from klaviyo_source.scopes import README_PATH, render_table

    readme = Path(README_PATH).read_text()
    assert render_table() in readme
    for stream in ALL_STREAMS:
        assert f"| `{stream.name}` |" in render_table()
