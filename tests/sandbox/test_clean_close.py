"""``Sandbox.close()`` stops everything it started, in order: no thread of the sandbox outlives it.

A daemon thread still inside DuckDB when the interpreter exits (serving a request, or freeing its
DuckDB cursor as it ends) is unwound by force, and the process aborts after its last line
(``terminate called ... FATAL: exception not rethrown``, exit 134)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import requests

from klaviyo_sandbox import Sandbox


def _wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_close_finishes_requests_and_joins_every_thread_it_started():
    before = set(threading.enumerate())
    sb = Sandbox(seed=3, accounts=1, profiles=30, events=100, rate_limits=False).start()
    session = requests.Session()  # an idle kept-alive connection: its handler thread holds a DuckDB cursor
    assert session.get(f"{sb.base_url}/api/lists", headers=sb.headers(), timeout=30).status_code == 200
    job = session.post(f"{sb.base_url}/api/profile-bulk-import-jobs", headers=sb.headers(), timeout=30, json={
        "data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
            {"type": "profile", "attributes": {"email": f"close.{i}@example.com"}} for i in range(200)]}}}})
    assert job.status_code == 202
    sb.set_faults({"rules": [{"match": "/api/metrics", "kind": "slow", "delay": 3.0}]})
    answers: list[int] = []
    in_flight = threading.Thread(target=lambda: answers.append(requests.get(
        f"{sb.base_url}/api/metrics", headers=sb.headers(), timeout=60).status_code))
    in_flight.start()
    _wait_for(lambda: sb.connections_opened >= 2)  # the slow request's connection is being served
    time.sleep(0.2)  # (not a synchronisation: close() must hold whatever stage the request is at)

    sb.close()

    left = [t.name for t in threading.enumerate() if t not in before and t is not in_flight and t.is_alive()]
    assert left == []  # the slow request's handler, the idle connection's, the import worker: all ended
    in_flight.join(60)
    assert answers == [200]  # a request being served when close() began gets its answer
    session.close()


def test_a_process_closing_a_busy_sandbox_exits_cleanly(tmp_path):
    """Clients keep the sandbox busy while it closes, and the process exits at once: before close()
    joined its threads, 8 runs in 10 aborted here."""
    script = tmp_path / "busy_close.py"
    script.write_text(textwrap.dedent("""
        import threading, time, requests
        from klaviyo_sandbox import Sandbox

        sb = Sandbox(seed=3, accounts=1, profiles=300, events=2000, rate_limits=False).start()
        served = []

        def client():
            with requests.Session() as session:
                while True:
                    try:
                        session.get(sb.base_url + "/api/events", headers=sb.headers(),
                                    params={"page[size]": "200"}, timeout=30)
                        served.append(1)
                    except requests.RequestException:
                        return

        for _ in range(4):
            threading.Thread(target=client, daemon=True).start()
        deadline = time.monotonic() + 120
        while len(served) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        sb.close()
        print("closed", len(served) >= 20, flush=True)
    """))
    for _ in range(3):
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "closed True"
