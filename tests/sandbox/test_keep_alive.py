"""The sandbox keeps HTTP/1.1 connections open between requests, as Klaviyo does."""

import socket

import orjson
import pytest
import requests

from klaviyo_sandbox import Sandbox


@pytest.fixture(scope="module")
def sb():
    with Sandbox(seed=3, profiles=30, events=100, rate_limits=False) as sandbox:
        yield sandbox


def _raw_exchange(sb: Sandbox, *requests_bytes: bytes) -> list[bytes]:
    """Send each request on ONE socket, reading each response fully (Content-Length framed)."""
    host, port = sb.base_url.removeprefix("http://").split(":")
    responses = []
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        reader = conn.makefile("rb")
        for request in requests_bytes:
            conn.sendall(request)
            status = reader.readline()
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = reader.read(int(headers.get("content-length", 0)))
            responses.append(status + body)
    return responses


def _request(sb: Sandbox, method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in sb.headers().items())
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"{method} {path} HTTP/1.1\r\nHost: sandbox\r\n{head}{length}{extra}\r\n".encode() + body


def test_a_session_reuses_one_connection(sb):
    before = sb.connections_opened
    session = requests.Session()
    session.headers.update(sb.headers())
    for _ in range(3):
        response = session.get(f"{sb.base_url}/api/profiles", params={"page[size]": "5"}, timeout=10)
        assert response.status_code == 200 and len(response.json()["data"]) == 5
        assert "close" not in response.headers.get("Connection", "").lower()
    assert sb.connections_opened - before == 1


def test_an_unread_request_body_does_not_corrupt_the_next_request(sb):
    # a bad key: the app answers 401 without reading the body; the next request must still parse
    bad = _request(sb, "POST", "/api/profiles", b'{"data": {"type": "profile"}}').replace(
        sb.api_key.encode(), b"pk_wrong_0000000000000000000000000000")
    first, second = _raw_exchange(sb, bad, _request(sb, "GET", "/api/profiles?page[size]=2"))
    assert first.startswith(b"HTTP/1.1 401")
    assert second.startswith(b"HTTP/1.1 200") and len(orjson.loads(second.split(b"\r\n", 1)[1])["data"]) == 2


def test_a_chunked_request_body_is_dechunked(sb):
    payload = orjson.dumps({"data": {"type": "profile", "attributes": {"email": "chunked.body@example.com"}}})
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:10], payload[10:])) + b"0\r\n\r\n"
    created, listed = _raw_exchange(
        sb,
        _request(sb, "POST", "/api/profiles", extra="Transfer-Encoding: chunked\r\nContent-Type: application/vnd.api+json\r\n")
        + chunks,
        _request(sb, "GET", "/api/profiles?filter=equals(email,%22chunked.body@example.com%22)"),
    )
    assert created.startswith(b"HTTP/1.1 201"), created[:300]
    assert len(orjson.loads(listed.split(b"\r\n", 1)[1])["data"]) == 1


def test_connection_close_from_the_client_is_honoured(sb):
    host, port = sb.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(_request(sb, "GET", "/api/profiles?page[size]=1", extra="Connection: close\r\n"))
        received = b""
        while chunk := conn.recv(65536):  # the server closes: recv returns b"" instead of blocking
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
