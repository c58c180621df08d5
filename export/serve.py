"""`make serve`: a GGUF behind llama.cpp's OpenAI-compatible `llama-server`, the reasoning apart from the answer.

llama-server comes from the same llama.cpp build as the other tools. It speaks OpenAI's chat-completions protocol
(`/v1/chat/completions`, streamed as server-sent events or not, `/v1/models`, `/health`). With
`--reasoning-format deepseek` the text the model writes before `</think>` goes to `message.reasoning_content`
(`delta.reasoning_content` when streaming), DeepSeek's API convention, and `content` holds only the answer. The
prompt is rendered by the GGUF's own chat template (the original R1 one, `--jinja`): the server has none of its own.

llama-server listens on a loopback port of its own; the user's address is served by `export.front`, a pass-through
that answers a body that is not JSON with 400 where llama-server says 500 (see there why).

`serving(gguf)` is the library form: it starts the server, waits until the model is loaded, yields the base URL
(`http://127.0.0.1:<port>/v1`) and stops the server on the way out. `chat_stream` is a client for it: the web UI's
chat on a GGUF that `make serve` is serving goes through it.
"""
from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from export.children import die_with_parent
from trainer.errors import UserError

PARALLEL = 4
"""Requests answered at once (llama-server slots), each with the full context; more wait in its queue."""
DEFAULT_CONTEXT = 4096
"""Context per request for a GGUF that is not in a run folder (a run's is its recipe's model.max_seq_length)."""
STARTUP_TIMEOUT_S = 600.0
"""Loading a 14B file from a slow disk takes minutes; a server that exits is reported at once anyway."""
STOP_TIMEOUT_S = 15.0
CHAT_TIMEOUT_S = 600.0
"""Longest wait for the next piece of a streamed answer (a long prompt is read before the first one)."""
LOG_TAIL_LINES = 8


@dataclass(frozen=True)
class ServerSettings:
    gguf: Path
    alias: str
    """The model name `/v1/models` lists (requests may name it; llama-server serves one model whatever they say)."""
    host: str = "127.0.0.1"
    port: int = 0
    """0: any free port."""
    context: int = DEFAULT_CONTEXT
    api_key: str | None = None
    parallel: int = PARALLEL


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings: ServerSettings) -> None:
    """Refuse what would serve the model to the network without a key, or cannot work; all problems at once.

    The GGUF itself is checked when the server starts (`make serve` may have to export it first).
    """
    problems = []
    if not is_loopback(settings.host) and not settings.api_key:
        problems.append(f"listening on {settings.host} (not this machine only) needs API_KEY=<a secret>, "
                        "which clients then send as their bearer token")
    if not 0 <= settings.port <= 65535:
        problems.append(f"PORT must be 1-65535, got {settings.port}")
    if settings.api_key is not None and (not settings.api_key.strip() or any(c.isspace() for c in settings.api_key)
                                         or settings.api_key.startswith("#")):
        problems.append("API_KEY must be one word (no spaces, not starting with #)")
    if settings.context < 16:
        problems.append(f"the context must be at least 16 tokens, got {settings.context}")
    if problems:
        raise UserError("; ".join(problems), where="make serve")


def server_command(server: Path, settings: ServerSettings, port: int, key_file: Path | None) -> list[str]:
    """llama-server's argument list (run without a shell): on loopback `port`, behind the front on the user's."""
    cmd = [str(server), "--model", str(settings.gguf), "--alias", settings.alias,
           "--host", "127.0.0.1", "--port", str(port),
           # One slot per parallel request, each with the whole context (not a shared, unified cache).
           "--parallel", str(settings.parallel), "--no-kv-unified",
           "--ctx-size", str(settings.context * settings.parallel),
           "--jinja", "--reasoning-format", "deepseek", "--no-webui"]
    if key_file is not None:
        cmd += ["--api-key-file", str(key_file)]  # a file, not --api-key: arguments are visible to `ps`
    return cmd


class RunningServer:
    """A started llama-server behind its front; `stop()` ends both (also at interpreter exit), safe to call twice."""

    def __init__(self, settings: ServerSettings, log_path: Path | None = None):
        from export.front import Front
        from export.llamacpp import tools

        check_settings(settings)
        if not settings.gguf.is_file():
            raise UserError("GGUF file not found", where=str(settings.gguf), fix="run `make gguf RUN=...` first")
        server_bin = tools().server  # built first if needed (minutes, once), before anything is started
        self.settings = settings
        self.upstream_port = free_port()
        try:  # the user's port is taken now, so a busy one is said before the model loads, not after
            self.front = Front(settings.host, settings.port, self.upstream_port)
        except OSError as err:
            raise port_taken(settings.host, settings.port, err) from None
        self.port = self.front.port
        self.base_url = f"http://{_url_host(settings.host)}:{self.port}/v1"
        self._secrets = Path(tempfile.mkdtemp(prefix="r1tune-serve-"))  # 0700: only this user reads the key
        self.key_file = None
        """The file holding the API key (in a folder only this user can read), None without a key."""
        self.process = None
        atexit.register(self.stop)
        try:
            self._start(server_bin, log_path)
            self._wait_ready()
            self.front.start()
        except BaseException:
            self.stop()
            raise

    def _start(self, server_bin: Path, log_path: Path | None) -> None:
        if self.settings.api_key:
            self.key_file = self._secrets / "api-key"
            self.key_file.touch(mode=0o600)
            self.key_file.write_text(self.settings.api_key + "\n", "utf-8")
        if log_path is None:  # kept after the server stops: it is where a failure is explained
            handle, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = server_command(server_bin, self.settings, self.upstream_port, self.key_file)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=_server_env(), preexec_fn=die_with_parent)

    def wait(self) -> int:
        """Block until the server exits by itself; return its exit code."""
        return self.process.wait()

    def stop(self) -> None:
        self.front.stop()  # first: no new request reaches a server that is going away
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # llama-server finishes its requests and frees the model on SIGTERM
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            except KeyboardInterrupt:  # a second Ctrl-C while it stops: stop it now, then let the user go
                self.process.kill()
                self.process.wait()
                raise
        atexit.unregister(self.stop)
        shutil.rmtree(self._secrets, ignore_errors=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def _wait_ready(self) -> None:
        """Poll `/health` (200 once the model is loaded, 503 while loading) until it answers or the server exits."""
        health = f"http://127.0.0.1:{self.upstream_port}/health"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise UserError(f"llama-server stopped while starting (exit code {code}):\n{self.log_tail()}",
                                where=str(self.log_path), fix="read that log")
            try:
                with _direct().open(health, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 503 while loading the model
            time.sleep(0.2)
        raise UserError(f"llama-server did not become ready in {STARTUP_TIMEOUT_S:.0f} s", where=str(self.log_path))


def start_server(gguf_path: Path | str, port: int = 0, *, alias: str | None = None, context: int | None = None,
                 api_key: str | None = None, host: str = "127.0.0.1", log_path: Path | None = None) -> RunningServer:
    """Start llama-server on a GGUF file and wait until it answers; `.base_url`, `.stop()`.

    `alias` defaults to the run's name (the file's stem outside a run folder); `context` (tokens per request) to the
    run recipe's `model.max_seq_length`, else `DEFAULT_CONTEXT`.
    """
    gguf = Path(gguf_path)
    default_alias, default_context = defaults_for(gguf)
    settings = ServerSettings(gguf=gguf, alias=alias or default_alias, host=host, port=port,
                              context=context or default_context, api_key=api_key)
    return RunningServer(settings, log_path)


@contextlib.contextmanager
def serving(gguf_path: Path | str, port: int = 0, **options) -> Iterator[str]:
    """`with serving(path) as base_url:` an OpenAI-compatible server on that GGUF; stopped on exit.

    `options` are `start_server`'s (alias, context, api_key, host, log_path). Use the base URL with any OpenAI
    client, e.g. `OpenAI(base_url=base_url, api_key="none")`.
    """
    server = start_server(gguf_path, port, **options)
    try:
        yield server.base_url
    finally:
        server.stop()


def chat_stream(base_url: str, messages: list[dict], api_key: str | None = None,
                **params) -> Iterator[tuple[str, str]]:
    """One streamed chat completion from an OpenAI-compatible server with DeepSeek's reasoning field, as
    `("reasoning" | "answer", text)` pieces in the order they come (`delta.reasoning_content`, `delta.content`).

    `params` go into the request as the protocol names them (max_tokens, temperature, top_p, ...). A refusal or
    an error event is a UserError with the server's message.
    """
    body = json.dumps({"messages": messages, "stream": True, **params}).encode("utf-8")
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(f"{base_url}/chat/completions", body, headers)
    try:
        with _direct().open(request, timeout=CHAT_TIMEOUT_S) as reply:
            for line in reply:  # server-sent events: `data: {...}` lines, then `data: [DONE]`
                data = line.removeprefix(b"data:").strip() if line.startswith(b"data:") else None
                if data is None or data == b"[DONE]":
                    continue
                event = json.loads(data)
                if "error" in event:
                    raise UserError(f"the server stopped the answer: {_message(event)}", where=base_url)
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("reasoning_content"):
                        yield "reasoning", delta["reasoning_content"]
                    if delta.get("content"):
                        yield "answer", delta["content"]
    except urllib.error.HTTPError as err:
        raise UserError(f"the server answered {err.code}: {_message(_json_or_empty(err.read()))}",
                        where=base_url) from None
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"the server does not answer ({getattr(err, 'reason', err)})", where=base_url,
                        fix="is `make serve` still running?") from None


def _message(event: dict) -> str:
    error = event.get("error")
    return str(error.get("message", error) if isinstance(error, dict) else error)


def _json_or_empty(data: bytes) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        return {"error": data.decode("utf-8", "replace")[:200]}
    return value if isinstance(value, dict) else {}


def _direct() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def require_free_port(host: str, port: int) -> None:
    """A clear message now, rather than after a possibly long export (0: any port: fine)."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the front does: TIME_WAIT is no obstacle
        try:
            sock.bind((host, port))
        except OSError as err:
            raise port_taken(host, port, err) from None


def port_taken(host: str, port: int, err: OSError) -> UserError:
    return UserError(f"cannot listen on {host}:{port}: {err.strerror}", where="PORT",
                     fix=f"stop what uses it, or pick another port (e.g. PORT={port + 1})")


def _url_host(host: str) -> str:
    """The address clients on this machine use: a wildcard address is reached through loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _server_env() -> dict[str, str]:
    # llama-server also reads its options from LLAMA_ARG_* and LLAMA_API_KEY: a stray one in the user's
    # environment would change what this command promises (another port, a key nobody asked for).
    return {k: v for k, v in os.environ.items() if not (k.startswith("LLAMA_ARG_") or k == "LLAMA_API_KEY")}


def defaults_for(gguf: Path) -> tuple[str, int]:
    """The model name and context (tokens) to run a GGUF with: its run's name and recipe context, if it is a run's."""
    from export.run_gguf import context_length, run_of_gguf
    from trainer.recipe import load_resolved

    run_dir = run_of_gguf(gguf)
    if run_dir is None:
        return gguf.stem, DEFAULT_CONTEXT
    return run_dir.name, context_length(load_resolved(run_dir))
