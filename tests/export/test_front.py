"""The front of `make serve` (export/front.py) against a stand-in upstream: fast, no llama.cpp needed.

The stand-in answers the way llama-server does where it matters (401 before reading a body without the key, 500
for a body it cannot parse, events streamed as HTTP chunks) and lets each test control its timing. What the real
llama-server answers through the front is tested in test_serve.py and test_make_serve.py.
"""
from __future__ import annotations

import http.client
import json
import select
import socket
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from export import front

KEY = "k-123"


class Upstream(ThreadingHTTPServer):
    """A stand-in for llama-server: records requests, echoes JSON, streams `/stream?n=<events>`."""

    daemon_threads = True

    def __init__(self):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.go = threading.Event()
        self.client_left = threading.Event()
        super().__init__(("127.0.0.1", 0), UpstreamHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as llama-server: it answers a small request in well under a millisecond

    def do_GET(self):
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self.answer(401, {"error": {"message": "Invalid API Key", "type": "authentication_error"}})
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.command, self.path, dict(self.headers.items()), body))
        if self.path.startswith("/stream"):
            return self.stream(int(self.path.partition("n=")[2]))
        try:
            parsed = json.loads(body) if self.command == "POST" else None
        except ValueError:
            return self.answer(500, {"error": {"message": "parse error", "type": "server_error", "code": 500}})
        self.answer(201, {"echo": parsed, "path": self.path}, {"X-Upstream": "yes"})

    do_POST = do_GET

    def answer(self, status, value, headers=None):
        data = json.dumps(value).encode()
        self.send_response(status)
        for name, text in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, text)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def stream(self, events: int):
        """Event 1, then (once the test sets `go`) events 2..`events` and [DONE], or until the client is gone."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.chunk(b'data: {"n": 1}\n\n')
        self.server.go.wait(60)  # longer than the client waits for event 1 (10 s)
        try:
            for n in range(2, events + 1):
                self.chunk(b'data: {"n": %d}\n\n' % n)
                if self.hung_up():
                    return self.server.client_left.set()
            self.chunk(b"data: [DONE]\n\n")
            self.chunk(b"")
        except OSError:
            self.server.client_left.set()

    def hung_up(self) -> bool:
        """What llama-server checks between tokens: its client's side of the connection is closed (readable, and
        at its end). Writing alone may not fail for a long while: the kernel takes data for a peer that stopped
        reading."""
        if not select.select([self.connection], [], [], 0)[0]:
            return False
        return self.connection.recv(1, socket.MSG_PEEK) == b""

    def chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def front_port(upstream):
    served = front.Front("127.0.0.1", 0, upstream.server_address[1])
    served.start()
    yield served.port
    served.stop()


def request(port: int, method: str, path: str, body: bytes | None = None, key: str | None = KEY, **headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body, headers)
    reply = conn.getresponse()
    return reply.status, dict(reply.getheaders()), reply.read()


def test_requests_and_answers_pass_unchanged(front_port, upstream):
    status, headers, body = request(front_port, "POST", "/v1/chat/completions?x=1", b'{"a": [1, "\xc3\xa9"]}',
                                    **{"Content-Type": "application/json", "X-Client": "c"})
    assert status == 201 and headers["X-Upstream"] == "yes"
    assert json.loads(body) == {"echo": {"a": [1, "é"]}, "path": "/v1/chat/completions?x=1"}
    method, path, seen, sent = upstream.requests[-1]
    assert (method, path, sent) == ("POST", "/v1/chat/completions?x=1", b'{"a": [1, "\xc3\xa9"]}')
    assert seen["X-Client"] == "c" and seen["Authorization"] == f"Bearer {KEY}"


def test_one_connection_carries_several_requests(front_port):
    conn = http.client.HTTPConnection("127.0.0.1", front_port, timeout=30)
    for n in range(3):
        conn.request("POST", "/x", json.dumps({"n": n}), {"Authorization": f"Bearer {KEY}"})
        assert json.loads(conn.getresponse().read())["echo"] == {"n": n}


def test_small_answers_are_not_held_back(front_port):
    # Headers and body leave in two writes; were Nagle's algorithm on, each answer would wait for the client's
    # delayed ACK: 40 ms or more every time. Without it an answer takes about a millisecond, even on a busy machine.
    conn = http.client.HTTPConnection("127.0.0.1", front_port, timeout=30)
    took = []
    for n in range(21):
        start = time.perf_counter()
        conn.request("POST", "/x", json.dumps({"n": n}), {"Authorization": f"Bearer {KEY}"})
        conn.getresponse().read()
        took.append(time.perf_counter() - start)
    assert statistics.median(took) < 0.02


def test_a_body_that_is_not_json_is_400_in_openai_form_and_the_key_still_comes_first(front_port):
    status, _, body = request(front_port, "POST", "/v1/chat/completions", b"not json")
    assert status == 400
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400 and "not JSON" in error["message"]
    assert request(front_port, "POST", "/v1/chat/completions", b"not json", key="wrong")[0] == 401


def test_a_stream_goes_out_event_by_event(front_port, upstream):
    # Event 2 is not even written until event 1 has come through the front: a front that buffered would keep
    # event 1 back, and the client would give up after 10 s.
    conn = http.client.HTTPConnection("127.0.0.1", front_port, timeout=10)
    conn.request("POST", "/stream?n=200", b"{}", {"Authorization": f"Bearer {KEY}"})
    reply = conn.getresponse()
    assert reply.status == 200 and reply.getheader("Content-Type") == "text/event-stream"
    assert reply.readline() == b'data: {"n": 1}\n'
    upstream.go.set()
    rest = reply.read()
    assert rest.endswith(b"data: [DONE]\n\n") and rest.count(b"data: ") == 200  # events 2-200 and [DONE]


def test_an_http_1_0_client_gets_the_stream_unchunked_until_the_connection_closes(front_port, upstream):
    upstream.go.set()
    with socket.create_connection(("127.0.0.1", front_port), timeout=30) as sock:
        sock.sendall(b"POST /stream?n=3 HTTP/1.0\r\nAuthorization: Bearer %s\r\nContent-Length: 2\r\n\r\n{}"
                     % KEY.encode())
        answer = sock.makefile("rb").read()  # returns only once the front closes the connection
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert body == b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: {"n": 3}\n\ndata: [DONE]\n\n'


def test_a_client_that_leaves_mid_stream_ends_the_upstream_request(front_port, upstream):
    sock = socket.create_connection(("127.0.0.1", front_port), timeout=30)
    sock.sendall(b"POST /stream?n=10000000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Length: 2\r\n\r\n{}" % KEY.encode())
    seen = b""
    while b'data: {"n": 1}' not in seen:  # the headers and the first event may come in separate packets
        piece = sock.recv(4096)
        assert piece, seen
        seen += piece
    sock.close()
    upstream.go.set()  # the stand-in writes on, endlessly, until the front hangs up on it as llama-server needs
    assert upstream.client_left.wait(20)


def test_stop_hangs_up_the_requests_in_flight(upstream):
    # llama-server waits for its requests before it exits on SIGTERM: a long answer being streamed would keep it
    # alive until it is killed, unless the front hangs up on it.
    served = front.Front("127.0.0.1", 0, upstream.server_address[1])
    served.start()
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(b"POST /stream?n=10000000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                     b"Content-Length: 2\r\n\r\n{}" % KEY.encode())
        sock.recv(1)  # the answer has begun; this client now reads nothing more, as a slow one would
        upstream.go.set()
        served.stop()
        assert upstream.client_left.wait(10)


def test_bodies_not_taken_are_refused_before_anything_is_forwarded(front_port, upstream):
    for head, status in [(b"Transfer-Encoding: chunked\r\n", 411),
                         (b"Content-Length: %d\r\n" % (front.MAX_BODY + 1), 413),
                         (b"Content-Length: ten\r\n", 400)]:
        with socket.create_connection(("127.0.0.1", front_port), timeout=30) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
            answer = sock.makefile("rb").read()  # the front closes the connection after such an answer
        head_text, _, body = answer.partition(b"\r\n\r\n")
        assert head_text.startswith(b"HTTP/1.1 %d" % status) and json.loads(body)["error"]["code"] == status
    assert upstream.requests == []


def test_what_python_refuses_itself_is_answered_in_json_too(front_port):
    with socket.create_connection(("127.0.0.1", front_port), timeout=30) as sock:
        sock.sendall(b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.makefile("rb").read()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501") and json.loads(body)["error"]["code"] == 501


def test_an_upstream_that_is_gone_is_a_502_in_json():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # nothing listens there once this is closed
    served = front.Front("127.0.0.1", 0, dead_port)
    served.start()
    try:
        status, _, body = request(served.port, "GET", "/health")
    finally:
        served.stop()
    assert status == 502 and json.loads(body)["error"]["type"] == "server_error"


def test_stop_is_safe_before_start_and_twice():
    served = front.Front("127.0.0.1", 0, 1)
    served.stop()
    served.stop()


@pytest.mark.parametrize(("body", "refused"), [(b'{"a": 1}', False), (b"[]", False), (b'"x"', False),
                                               (b"not json", True), (b"", True), (b'{"a": NaN}', True),
                                               (b"[Infinity]", True), (b'{"a": "\xff"}', True), (b"{'a': 1}", True)])
def test_what_counts_as_json(body: bytes, refused: bool):
    # nlohmann::json (llama-server's parser) takes RFC 8259 JSON in UTF-8: no NaN/Infinity, no single quotes
    assert (front.json_problem(body) is not None) is refused
