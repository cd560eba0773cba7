"""The sandbox's HTTP/1.1 server: one thread per connection, connections kept alive as Klaviyo's are.

Werkzeug's development server answers every request with ``Connection: close`` and then
drains the socket (it cannot skip a request body the app left unread), so every client
request paid for a new TCP connection and a new server thread.  This server runs the WSGI
app with the standard library's ``wsgiref`` handler and keeps the connection open: each
request body is read in full before the app runs, so the next request on the connection
always starts at its request line.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any, Callable
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

# environ key an app sets to close the connection after its response (e.g. a dropped-connection fault)
CLOSE_AFTER_RESPONSE = "klaviyo_sandbox.close_connection"
SOCKET = "klaviyo_sandbox.socket"  # the client socket, for faults that cut the connection
IDLE_TIMEOUT_SECONDS = 60.0
CLOSE_WAIT_SECONDS = 120.0  # server_close waits this long at most for requests being served
MAX_LINE = 65536


class _ResponseWriter(ServerHandler):
    http_version = "1.1"
    server_software = "klaviyo-sandbox"
    reusable = False  # the response had a Content-Length and all of it was sent

    def close(self) -> None:
        headers = self.headers
        length = headers.get("Content-Length") if headers is not None else None
        self.reusable = length is not None and length.isdigit() and int(length) == self.bytes_sent
        super().close()  # clears status, headers and environ


def _read_chunked(rfile: Any) -> bytes:
    """A ``Transfer-Encoding: chunked`` request body, de-chunked (trailers skipped)."""
    parts = []
    while True:
        line = rfile.readline(MAX_LINE + 1)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ValueError("bad chunk size line") from None
        if size == 0:
            while rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        parts.append(rfile.read(size))
        rfile.readline(MAX_LINE + 1)  # the CRLF after the chunk


class KeepAliveRequestHandler(WSGIRequestHandler):
    """Serves requests on one connection until the client closes it (or asks to)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the response leaves in two writes; no 40 ms delayed-ACK stall
    wbufsize = -1  # buffered: status line and headers go out with the first body write
    timeout = IDLE_TIMEOUT_SECONDS  # an idle kept-alive connection is closed after this

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the client (or a dropped-connection fault) already closed the socket
        finally:
            self.server.track(self.connection, add=False)

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(MAX_LINE + 1)
        except (TimeoutError, OSError):
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if len(self.raw_requestline) > MAX_LINE:
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414)
            self.close_connection = True
            return
        if not self.parse_request():  # sent its own error response
            self.close_connection = True
            return
        try:
            body = self._read_body()
        except ValueError:  # bad Content-Length or chunk framing
            self.send_error(400, "Bad request body framing")
            self.close_connection = True
            return
        environ = self.get_environ()
        environ[SOCKET] = self.connection
        if "HTTP_TRANSFER_ENCODING" in environ:  # the app sees the de-chunked body with its length
            del environ["HTTP_TRANSFER_ENCODING"]
            environ["CONTENT_LENGTH"] = str(len(body))
        writer = _ResponseWriter(io.BytesIO(body), self.wfile, self.get_stderr(), environ, multithread=True)
        writer.request_handler = self
        writer.run(self.server.get_app())
        if environ.get(CLOSE_AFTER_RESPONSE) or not writer.reusable:
            self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").strip().lower() == "chunked":
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length) if length else b""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # no access log on stderr


class KeepAliveServer(ThreadingMixIn, WSGIServer):
    """Threaded WSGI server; ``server_close`` ends the kept-alive connections and waits for every
    connection thread to end.

    ``on_thread_end`` runs in each connection thread as it ends (the sandbox closes the thread's
    DuckDB cursor there: a thread still freeing DuckDB objects when the interpreter exits is
    unwound by force and the process aborts)."""

    daemon_threads = True
    block_on_close = False  # joined by server_close itself, after their connections are ended
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: Callable,
                 on_thread_end: Callable[[], None] | None = None) -> None:
        self.connections_opened = 0  # TCP connections accepted so far
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._connections_lock = threading.Lock()
        self._on_thread_end = on_thread_end
        super().__init__(address, KeepAliveRequestHandler)
        self.set_app(app)

    def track(self, connection: socket.socket, add: bool) -> None:
        with self._connections_lock:
            if add:
                self.connections_opened += 1
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on a new thread, remembered until it ends."""
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name=f"klaviyo-sandbox-connection-{client_address[1]}", daemon=True)
        with self._connections_lock:
            self._handler_threads = {t for t in self._handler_threads if t.is_alive()}
            self._handler_threads.add(thread)
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self._on_thread_end is not None:
                self._on_thread_end()

    def server_close(self) -> None:
        """Close the listening socket, end every kept-alive connection and wait for their threads.

        The read side is shut: a thread waiting for the next request reads end-of-file and ends;
        a request being served gets its answer first."""
        super().server_close()
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        ended: set[socket.socket] = set()
        while True:
            with self._connections_lock:
                connections = self._connections - ended  # a thread may register its connection late
                threads = list(self._handler_threads)
            for connection in connections:
                try:
                    connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            ended |= connections
            for thread in threads:  # joined even once ended: join returns when its teardown is over
                thread.join(0.05)
            if not any(t.is_alive() for t in threads) or time.monotonic() >= deadline:
                return


def make_server(host: str, port: int, app: Callable, on_thread_end: Callable[[], None] | None = None) -> KeepAliveServer:
    """A keep-alive HTTP/1.1 server for ``app`` on ``host:port`` (port 0: any free port)."""
    return KeepAliveServer((host, port), app, on_thread_end)
