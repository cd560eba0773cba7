"""The sandbox keeps HTTP/1.1 connections open between requests, as Klaviyo does."""

import requests

from klaviyo_sandbox import Sandbox


def test_requests_reuse_one_connection():
    with Sandbox(seed=3, profiles=30, events=100, rate_limits=False) as sb:
        session = requests.Session()
        session.headers.update(sb.headers())
        for _ in range(3):
            response = session.get(f"{sb.base_url}/api/profiles", params={"page[size]": "5"}, timeout=10)
            assert response.status_code == 200 and len(response.json()["data"]) == 5
        pools = session.get_adapter(sb.base_url).poolmanager.pools
        opened = sum(pools[key].num_connections for key in pools.keys())
        assert response.raw.version == 11
        assert opened == 1, f"{opened} connections for 3 requests"
