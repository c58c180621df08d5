"""The front of `make serve`: a pass-through to llama-server that answers a body that is not JSON with 400.

llama-server (the pinned llama.cpp) parses each POST body with nlohmann::json, and a parse error falls into its
catch-all for server faults: `curl -d 'not json' .../v1/chat/completions` is answered 500 `server_error`, telling
the client that the server failed when the request did. No llama-server option changes that and its sources are
pinned, so `make serve` runs llama-server on a loopback port of its own and this front on the user's address.

The front changes one thing: a POST whose body is not JSON, which llama-server answers with a 5xx, is answered
400 with an OpenAI-style error (`{"error": {"message", "type": "invalid_request_error", "code": 400}}`).
Everything else passes unchanged (status, headers, body), and a streamed answer (server-sent events) goes out
piece by piece as llama-server writes it, nothing buffered.

The API key stays llama-server's business, checked in one place: the front forwards the request headers, and
llama-server checks the key before it reads the body, so a wrong or missing key is 401 whatever the body. (That
is why a body that is not JSON is still forwarded: llama-server's answer says whether the key was good.)
llama-server's own port keeps the key too, so other users of this machine cannot go around it.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "expect", "content-length"})
"""Headers about one connection (RFC 9110 7.6.1), not the message: each side of the front sets its own.
Content-Length is set again from the body that is actually sent."""
MAX_BODY = 64 * 2**20
"""Largest request body taken. The front reads a body whole (to know whether it is JSON) before llama-server has
checked the key, so without a limit anyone who can connect could make it hold any amount of memory; a chat
request filling a 128k-token context is a few MB."""
PIECE = 64 * 1024
"""Most bytes relayed in one write; a server-sent event is far smaller and goes out as soon as it arrives."""


class Front(ThreadingHTTPServer):
    """Listens on (host, port) at once (so a taken port fails before the model loads); `start()` serves."""

    daemon_threads = True  # a client holding a stream open must not keep `make serve` from stopping

    def __init__(self, host: str, port: int, upstream_port: int):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.upstream_port = upstream_port
        self._thread: threading.Thread | None = None
        self.open_upstreams: set[http.client.HTTPConnection] = set()
        """Requests being answered now; `stop()` hangs them up."""
        super().__init__((host, port), Relay)

    def server_bind(self) -> None:
        # HTTPServer's own also looks the host's name up (socket.getfqdn): seconds of waiting on a machine
        # without DNS, for a name nothing here uses
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="serve-front", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking connections and hang up the requests in flight; safe to call twice, and before `start()`.

        Hanging up is what makes llama-server stop generating for them: on SIGTERM it waits for its requests
        first, so a long answer being streamed kept it alive until it was killed (measured: 15 s, the timeout).
        """
        if self._thread is not None:
            self.shutdown()  # waits for serve_forever to return, which never happens if it was not started
            self._thread = None
        for upstream in list(self.open_upstreams):
            with contextlib.suppress(AttributeError, OSError):  # closed meanwhile by its handler: nothing to do
                upstream.sock.shutdown(socket.SHUT_RDWR)  # the handler's read ends at once; it then closes
        self.server_close()


class Relay(BaseHTTPRequestHandler):
    """One client connection: each request goes to llama-server and its answer comes back."""

    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams as llama-server sends them
    # Headers and body go out in separate writes: with Nagle's algorithm on, the second waits for the client's
    # delayed ACK, 40 ms per answer (measured: 44 ms for GET /v1/models, against 0.2 ms from llama-server).
    disable_nagle_algorithm = True

    def forward(self) -> None:
        body = self._read_body()
        if body is None:
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port)  # no timeout: answers are slow
        self.server.open_upstreams.add(upstream)
        try:
            reply = self._ask(upstream, body)
        except OSError as err:
            self.server.open_upstreams.discard(upstream)
            upstream.close()
            self.send_json_error(502, f"llama-server did not answer ({err})", "server_error", close=True)
            return
        try:
            problem = json_problem(body) if reply.status >= 500 and self.command == "POST" else None
            if problem is not None:
                reply.read()
                self.send_json_error(400, f"the request body is not JSON: {problem}", "invalid_request_error")
            else:
                self._relay(reply)
        except (OSError, http.client.HTTPException):
            # The client left (closing upstream below makes llama-server stop generating for it), or llama-server
            # went away mid-answer (make serve stopping): either way this answer cannot be finished.
            self.close_connection = True
        finally:
            self.server.open_upstreams.discard(upstream)
            upstream.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = forward

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Python's own refusals (a broken request line, an unknown method, headers too long) in JSON too."""
        self.send_json_error(code, message or self.responses.get(code, ("error",))[0], "invalid_request_error",
                             close=True)

    def send_json_error(self, status: int, message: str, kind: str, close: bool = False) -> None:
        """`close`: the rest of the request may be unread, so this connection cannot carry another one."""
        data = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        pass  # llama-server logs every request in serve.log already

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering why it is not taken."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():  # no OpenAI client sends one
            self.send_json_error(411, "send the body with a Content-Length", "invalid_request_error", close=True)
            return None
        text = self.headers.get("Content-Length") or "0"
        if not text.isdigit():
            self.send_json_error(400, f"Content-Length is not a number: {text!r}", "invalid_request_error",
                                 close=True)
            return None
        if int(text) > MAX_BODY:
            self.send_json_error(413, f"the body is over {MAX_BODY // 2**20} MiB", "invalid_request_error",
                                 close=True)
            return None
        return self.rfile.read(int(text))

    def _ask(self, upstream: http.client.HTTPConnection, body: bytes) -> http.client.HTTPResponse:
        # putheader, not request(headers=dict): a header the client sent twice is forwarded twice
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                upstream.putheader(name, value)
        if body or "Content-Length" in self.headers:
            upstream.putheader("Content-Length", str(len(body)))
        upstream.endheaders(body or None)
        return upstream.getresponse()

    def _relay(self, reply: http.client.HTTPResponse) -> None:
        """llama-server's answer as it comes: a sized body as is, anything else re-chunked piece by piece."""
        self.send_response_only(reply.status, reply.reason)
        for name, value in reply.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        length = reply.getheader("Content-Length")
        bodiless = self.command == "HEAD" or reply.status in (204, 304) or reply.status < 200
        # An HTTP/1.0 client knows no chunks: it is sent the bare body, which ends when the connection closes.
        chunked = length is None and not bodiless and self.request_version != "HTTP/1.0"
        if length is not None:
            self.send_header("Content-Length", length)
        elif chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif not bodiless:
            self.close_connection = True
        self.end_headers()
        if bodiless:
            return
        # read1 returns what has arrived (at most one chunk of llama-server's), so no event waits for the next
        while piece := reply.read1(PIECE):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)  # unbuffered: sent now
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


def json_problem(body: bytes) -> str | None:
    """Why llama-server's parser refuses `body` (UTF-8 JSON, no NaN or Infinity, which Python's json takes), or None."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    try:
        json.loads(body.decode("utf-8"), parse_constant=refuse)
    except UnicodeDecodeError as err:
        return f"not UTF-8 ({err.reason} at byte {err.start})"
    except ValueError as err:
        return str(err)
    return None
