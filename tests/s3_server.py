"""A real S3-compatible server on loopback for the tests, and a relay in front of it that counts
requests and injects faults.

`MotoServer` runs moto's standalone server (`moto_server`, S3 over HTTP) as a subprocess. `S3Relay`
listens on its own loopback port and forwards every request to it unchanged; on the way it records
which S3 operation each request was, can answer chosen requests with an S3 error (throttling, 5xx),
cut a response body short, and can stop listening altogether — to the client the endpoint is dead
(connections dropped, then refused) — and come back on the same port with the server's state intact,
which a restarted in-memory moto would not have.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

MOTO_SERVER = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "moto_server"
UPLOADS = frozenset({"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"})
WRITES = UPLOADS | {"DeleteObject", "DeleteObjects", "AbortMultipartUpload"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _moto_server_command() -> str:
    found = MOTO_SERVER if MOTO_SERVER.exists() else Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "moto_server"
    if not found.exists():
        raise RuntimeError("moto_server not found: install the test extra, pip install -e '.[test]'")
    return str(found)


class MotoServer:
    """moto's S3 server as a subprocess on 127.0.0.1; `env` adds variables such as
    INITIAL_NO_AUTH_ACTION_COUNT (moto then checks credentials and IAM policies)."""

    def __init__(self, env: dict[str, str] | None = None, startup_timeout: float = 30.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [_moto_server_command(), "-H", "127.0.0.1", "-p", str(self.port)],
            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"moto_server did not start on port {self.port}") from None
                time.sleep(0.1)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass(frozen=True)
class Request:
    operation: str  # PutObject, UploadPart, HeadObject, GetObject, DeleteObjects, …
    bucket: str
    key: str


@dataclass
class Fault:
    """Answer the next `times` requests of `operation` with an S3 error, or (`truncate`) forward them but
    send only half of the response body before closing the connection."""

    operation: str
    times: int = 1
    status: int = 503
    code: str = "SlowDown"
    truncate: bool = False


def operation_of(method: str, target: str) -> Request:
    """Which S3 operation a path-style request is (what botocore sends to an IP endpoint)."""
    parts = urlsplit(target)
    bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
    query = parse_qs(parts.query, keep_blank_values=True)
    if method == "PUT":
        name = "UploadPart" if "partNumber" in query else "PutObject" if key else "CreateBucket"
    elif method == "POST":
        name = ("CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload" if "uploadId" in query
                else "DeleteObjects" if "delete" in query else "Post")
    elif method == "GET":
        name = ("ListParts" if "uploadId" in query else "GetObject") if key else (
            "ListMultipartUploads" if "uploads" in query else "ListObjects")
    elif method == "HEAD":
        name = "HeadObject" if key else "HeadBucket"
    elif method == "DELETE":
        name = "AbortMultipartUpload" if "uploadId" in query else "DeleteObject" if key else "DeleteBucket"
    else:
        name = method
    return Request(name, bucket, key)


class S3Relay:
    def __init__(self, upstream: MotoServer):
        self.upstream_port = upstream.port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self._die_on: tuple[frozenset[str], int] | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.alive = False
        self.start()

    # -- control -------------------------------------------------------------------------------
    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _RelayHandler)
        server.daemon_threads = True
        server.relay = self  # type: ignore[attr-defined]
        self._server = server
        self.alive = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        """The endpoint dies: open connections are dropped at their next request, new ones refused."""
        self.alive = False
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def die_after(self, operations: frozenset[str], count: int) -> None:
        """Stop, mid-request, when a request of `operations` arrives after `count` such requests were served."""
        self._die_on = (operations, count)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            self._die_on = None

    def count(self, *operations: str) -> int:
        return sum(1 for request in self.requests if request.operation in operations)

    def of(self, *operations: str) -> list[Request]:
        return [request for request in self.requests if request.operation in operations]

    # -- called by the handler -----------------------------------------------------------------
    def admit(self, request: Request) -> Fault | str | None:
        """Record the request; say whether to die, inject a fault, or forward it."""
        with self._lock:
            if not self.alive:
                return "dead"
            if self._die_on is not None:
                operations, count = self._die_on
                if request.operation in operations:
                    if sum(1 for seen in self.requests if seen.operation in operations) >= count:
                        self._die_on = None
                        self.alive = False
                        threading.Thread(target=self.stop, daemon=True).start()
                        return "dead"
            self.requests.append(request)
            for fault in self.faults:
                if fault.operation == request.operation and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None


class _RelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue as botocore expects for large bodies
    upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass

    def _relay(self) -> None:
        relay: S3Relay = self.server.relay  # type: ignore[attr-defined]
        body = self._read_body()
        request = operation_of(self.command, self.path)
        action = relay.admit(request)
        if action == "dead":
            self.close_connection = True  # no answer at all: the server went away mid-request
            return
        if isinstance(action, Fault) and not action.truncate:
            payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{action.code}</Code>'
                       f"<Message>injected by the test relay</Message></Error>").encode()
            self.send_response_only(action.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        status, reason, headers, data = self._forward(body)
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                self.send_header(name, value)
        # A HEAD answer says how long the object is; anything else, how long this body is.
        upstream_length = dict((name.lower(), value) for name, value in headers).get("content-length", "0")
        self.send_header("Content-Length", upstream_length if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if isinstance(action, Fault):  # truncate: half the body, then hang up
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        relay: S3Relay = self.server.relay  # type: ignore[attr-defined]
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection("127.0.0.1", relay.upstream_port, timeout=120)
        headers = {name: value for name, value in self.headers.items()
                   if name.lower() not in ("expect", "connection", "transfer-encoding", "content-length")}
        headers["Content-Length"] = str(len(body))
        self.upstream.request(self.command, self.path, body=body, headers=headers)
        response = self.upstream.getresponse()
        data = response.read()
        return response.status, response.reason, response.getheaders(), data
