"""Start ``klaviyo_sandbox.server`` in its own process for a benchmark (as Klaviyo is a remote server)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_sandbox(*, seed: int, profiles: int, events: int, rate_limits: bool, scale: float = 1.0,
                  store_path: Path | None = None) -> tuple[subprocess.Popen, str, str]:
    """Run the sandbox server on a free port; returns (process, base_url, private api key).

    Response validation is off (``KLAVIYO_SANDBOX_VALIDATE=0``): it is a test aid, not part of the API.
    """
    command = [sys.executable, "-m", "klaviyo_sandbox.server", "--port", "0", "--seed", str(seed),
               "--profiles", str(profiles), "--events", str(events)]
    if store_path is not None:
        command += ["--store-path", str(store_path)]
    command += ["--rate-limit-scale", str(scale)] if rate_limits else ["--no-rate-limits"]
    env = dict(os.environ, KLAVIYO_SANDBOX_VALIDATE="0")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    base_url = api_key = None
    deadline = time.time() + 3600
    while time.time() < deadline and (base_url is None or api_key is None):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"sandbox exited early (code {proc.poll()})")
        if found := re.search(r"ready in .* at (http://\S+)", line):
            base_url = found.group(1)
        if found := re.search(r"private key (\S+)", line):
            api_key = found.group(1)
    return proc, base_url, api_key


def stop_sandbox(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU seconds (user + system) used so far by this process, or by process ``pid`` (Linux
    ``/proc``; None where it cannot be read)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
