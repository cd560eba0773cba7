"""The scopes documented for the reverse sync cover every request it sends (from the spec)."""

from __future__ import annotations

import pytest

from klaviyo_source.columns import spec
from klaviyo_source.reverse_sync import reverse_sync
from klaviyo_source.scopes import reverse_sync_scopes


@pytest.mark.parametrize("destination", ["duckdb"], indirect=True)
def test_reverse_sync_needs_only_the_documented_scopes(warehouse, load, sandbox, client):
    sb, counter = sandbox
    destination, dataset, pipelines_dir = warehouse
    rows = [{"email": f"p{i}@scopes.test", "first_name": f"P{i}", "opted_in": i % 2 == 0} for i in range(6)]
    load("audience", rows)
    base = {"name": "scopes", "table": "audience", "identifiers": {"email": "email"},
            "attributes": {"first_name": "first_name"}, "list": {"name": "Scopes", "create": True, "mode": "mirror"}}

    def used() -> set[str]:
        index = spec()
        scopes: set[str] = set()
        for method, path in counter.seen:
            found = index.match(method, path)
            assert found is not None, f"{method} {path} is not in the spec"
            scopes.update(found[0].scopes)
        return scopes

    reverse_sync(base, destination=destination, dataset_name=dataset, client=client, pipelines_dir=pipelines_dir)
    load("audience", [{**r, "first_name": None} for r in rows[:3]])  # fewer members, a cleared field
    reverse_sync(base, destination=destination, dataset_name=dataset, client=client, pipelines_dir=pipelines_dir)
    assert used() and used() <= set(reverse_sync_scopes()), sorted(used() - set(reverse_sync_scopes()))

    counter.reset()
    consent = {**base, "name": "scopes_consent", "consent": {"email": {"column": "opted_in"}}}
    load("audience", rows)
    reverse_sync(consent, destination=destination, dataset_name=dataset, client=client, pipelines_dir=pipelines_dir)
    assert "subscriptions:write" in used() and used() <= set(reverse_sync_scopes(consent=True))
