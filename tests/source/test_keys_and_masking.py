"""Keys are read without surrounding whitespace; registered secrets are masked in every printed form,
in dlt's log records (tracebacks included) and in dlt's trace pickle; the HTTP layer logs neither
request bodies nor query strings at any level."""

from __future__ import annotations

import io
import json
import logging
import pickle
import socket
from pathlib import Path
from urllib.parse import quote

import dlt
import pytest

from klaviyo_source.masking import SECRETS, Masker

ODD_SECRET = 'pk_odd"sec\\ret/é+x'


def test_every_printed_form_of_a_secret_is_masked():
    mask = Masker([f"  {ODD_SECRET}\n"])
    header = f"Klaviyo-API-Key {ODD_SECRET}\n"
    printed = {
        "raw": header,
        "repr": repr(header),
        "bytes repr": repr(header.encode()),
        "json": json.dumps(header),
        "json, ascii off": json.dumps(header, ensure_ascii=False),
        "json of a repr": json.dumps(f"Invalid header value {header.encode()!r}"),
        "url": f"https://x.test/?key={quote(ODD_SECRET, safe='')}",
    }
    for form, text in printed.items():
        masked = mask(text)
        assert "***" in masked, form
        assert "sec" not in masked and "ret/" not in masked, (form, masked)


def test_short_and_blank_values_are_not_secrets():
    mask = Masker(["", "  \n", None, "abc"])
    assert not mask
    assert mask("abc def") == "abc def"


def test_source_reads_a_key_with_whitespace_around_it(sandbox, tmp_path):
    from klaviyo_source import klaviyo_source

    pipeline = dlt.pipeline("keys_ws", destination=dlt.destinations.duckdb(str(tmp_path / "k.duckdb")),
                            dataset_name="keys_ws_data", pipelines_dir=str(tmp_path / "pipelines"))
    pipeline.run(klaviyo_source(api_key=f"  {sandbox.api_key}\n", base_url=sandbox.base_url, resources=["lists"]))
    with pipeline.sql_client() as client:
        assert client.execute_sql("SELECT count(*) FROM lists")[0][0] > 0


def test_environment_key_with_whitespace_is_stripped(sandbox, tmp_path, monkeypatch):
    from klaviyo_source import klaviyo_source

    monkeypatch.setenv("KLAVIYO_API_KEY", f"{sandbox.api_key}\r\n")
    source = klaviyo_source(api_key=None, base_url=sandbox.base_url, resources=["lists"])
    assert len(list(source.resources["lists"])) > 0


def test_maton_client_strips_its_key(sandbox):
    from klaviyo_source.maton import MatonClient

    client = MatonClient(f"\t{sandbox.maton_api_key}\n", ctrl_url=sandbox.base_url)
    assert sandbox.account.maton_connection_id in {c.connection_id for c in client.list()}


def test_trace_pickle_holds_no_secret(tmp_path):
    secret = "pk_tracecheck_5e1b7c9d3a2f4e6b8c0d"
    SECRETS.add(secret)

    @dlt.resource(name="boom")
    def boom():
        yield {"id": 1}
        raise ValueError(f"Invalid header value {('Klaviyo-API-Key ' + secret + chr(10)).encode()!r}")

    pipeline = dlt.pipeline("trace_mask", destination=dlt.destinations.duckdb(str(tmp_path / "t.duckdb")),
                            dataset_name="trace_mask_data", pipelines_dir=str(tmp_path / "pipelines"))
    with pytest.raises(Exception):
        pipeline.run(boom())
    raw = (Path(pipeline.working_dir) / "trace.pickle").read_bytes()
    trace = pickle.loads(raw)
    assert trace.steps and trace.steps[-1].step_exception  # the failure is still there, masked
    assert "***" in trace.steps[-1].step_exception
    for text in (raw.decode("utf-8", "replace"), repr(trace), str(trace.asdict())):
        assert secret not in text
    assert secret not in repr(pipeline.last_trace)


@pytest.fixture
def dlt_log(monkeypatch):
    """dlt's logger at DEBUG, printed (text format) into a buffer."""
    from dlt.common import logger as dlt_logger

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("dlt")
    monkeypatch.setattr(dlt_logger, "LOGGER", log)
    previous = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield buffer
    log.removeHandler(handler)
    log.setLevel(previous)


def test_dlt_log_records_mask_secrets_in_messages_and_tracebacks(dlt_log):
    import klaviyo_source  # noqa: F401 - installs the filters
    from dlt.common import logger as dlt_logger

    secret = "pk_logcheck_0a9b8c7d6e5f4a3b2c1d"
    SECRETS.add(secret)
    try:
        raise RuntimeError(f"header {secret!r} invalid")
    except RuntimeError:
        dlt_logger.exception(f"step failed with {secret}")
    dlt_logger.debug("value %s", secret.encode())
    printed = dlt_log.getvalue()
    assert "RuntimeError" in printed and "Traceback" in printed
    assert secret not in printed and "logcheck_0a9b" not in printed


def test_requests_log_no_body_and_no_query_at_debug(sandbox, dlt_log):
    """The reverse sync's writes (bodies with emails and names) and lookups (filters by email)
    at dlt's DEBUG level: method, host and path only."""
    from klaviyo_source.reverse_sync import make_client
    from klaviyo_source.reverse_sync.writer import KlaviyoWriter

    urllib3_log = io.StringIO()
    handler = logging.StreamHandler(urllib3_log)
    urllib3_logger = logging.getLogger("urllib3")
    urllib3_logger.addHandler(handler)
    urllib3_logger.setLevel(logging.DEBUG)
    try:
        writer = KlaviyoWriter(make_client(sandbox.api_key, sandbox.base_url, pacing=False))
        people = [(f"debugcheck.{i}@example.org", f"Debugname{i}") for i in range(5)]
        bodies = [json.dumps({"type": "profile", "attributes": {"email": e, "first_name": n}}) for e, n in people]
        job = writer.submit_import(bodies, None)
        writer.wait_import(job)
        found = writer.lookup_profile_ids("email", [e for e, _ in people])
        assert len(found) == 5
        list_id = writer.create_list("Debug check list")
        writer.add_to_list(list_id, list(found.values()))
    finally:
        urllib3_logger.removeHandler(handler)
        urllib3_logger.setLevel(logging.NOTSET)
    printed = dlt_log.getvalue() + urllib3_log.getvalue()
    assert "POST request to" in printed and "/api/profile-bulk-import-jobs" in printed
    assert "/api/profiles" in urllib3_log.getvalue()  # urllib3 did log the lookups
    for needle in ("debugcheck", "Debugname", "Debug check list", "any(email", "any%28email"):
        assert needle not in printed, needle


def test_network_failure_of_a_lookup_does_not_print_the_emails():
    from klaviyo_source.reverse_sync import make_client
    from klaviyo_source.reverse_sync.writer import KlaviyoWriter, ReverseSyncError

    with socket.socket() as sock:  # a port nobody listens on: bind, read the port, close
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    writer = KlaviyoWriter(make_client("pk_unreachable_0000", f"http://127.0.0.1:{port}", pacing=False,
                                       max_attempts=1))
    with pytest.raises(ReverseSyncError) as caught:
        writer.lookup_profile_ids("email", ["netcheck.person@example.org"])
    assert "netcheck" not in str(caught.value)
    assert "/api/profiles" in str(caught.value)


def test_sync_options_never_show_the_key():
    from klaviyo_source.pipeline_runner import SyncOptions

    assert "pk_repr_check_123456" not in repr(SyncOptions(api_key="pk_repr_check_123456"))
