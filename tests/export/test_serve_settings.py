"""`make serve` without a server: settings refused up front, llama-server's arguments, the file it serves, the
client example it prints, and the Makefile's handling of HOST and API_KEY. Fast; no llama.cpp build needed."""
from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from export import cli, modelfile, run_gguf, serve
from trainer.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def settings(**kw) -> serve.ServerSettings:
    return serve.ServerSettings(**{"gguf": Path("m.gguf"), "alias": "news-1", **kw})


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                                ("192.168.1.5", False), ("example.org", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert serve.is_loopback(host) is loopback


def test_the_network_needs_a_key_and_every_problem_is_reported_at_once() -> None:
    with pytest.raises(UserError) as err:
        serve.check_settings(settings(host="0.0.0.0", port=70000, context=8))
    text = str(err.value)
    assert "API_KEY" in text and "65535" in text and "16 tokens" in text
    serve.check_settings(settings(host="0.0.0.0", api_key="s3cret"))
    serve.check_settings(settings())  # loopback: no key needed


@pytest.mark.parametrize("key", ["two words", "line\nbreak", "#comment", " "])
def test_a_key_must_be_one_line_of_one_word(key: str) -> None:
    # llama-server reads keys from a file, one per line, '#' lines being comments.
    with pytest.raises(UserError, match="API_KEY"):
        serve.check_settings(settings(api_key=key))


def test_server_arguments_split_reasoning_use_the_gguf_template_and_keep_the_key_off_the_command_line() -> None:
    cmd = serve.server_command(Path("/b/llama-server"), settings(api_key="s3cret", context=2048, parallel=4),
                               8123, Path("/tmp/k/api-key"))
    flag = {cmd[i]: cmd[i + 1] for i in range(1, len(cmd) - 1) if cmd[i].startswith("--")}
    assert flag["--reasoning-format"] == "deepseek" and "--jinja" in cmd and "--chat-template" not in cmd
    assert flag["--alias"] == "news-1" and flag["--host"] == "127.0.0.1" and flag["--port"] == "8123"
    assert flag["--ctx-size"] == str(2048 * 4) and flag["--parallel"] == "4" and "--no-kv-unified" in cmd
    assert flag["--api-key-file"] == "/tmp/k/api-key" and "s3cret" not in cmd


def test_stray_llama_environment_is_not_passed_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_ARG_PORT", "9999")
    monkeypatch.setenv("LLAMA_API_KEY", "someone-elses")
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", "/kept")
    env = serve._server_env()
    assert "LLAMA_ARG_PORT" not in env and "LLAMA_API_KEY" not in env and env["LLAMA_CPP_LIB_PATH"] == "/kept"


def test_a_taken_port_is_named_with_a_fix() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"PORT={port + 1}"):
            serve.require_free_port("127.0.0.1", port)
    serve.require_free_port("127.0.0.1", 0)


def test_wildcard_addresses_are_reached_through_loopback() -> None:
    assert serve._url_host("0.0.0.0") == "127.0.0.1" and serve._url_host("::") == "[::1]"
    assert serve._url_host("::1") == "[::1]" and serve._url_host("10.0.0.2") == "10.0.0.2"


def test_printed_client_example_is_three_lines_of_python_naming_the_url_and_model() -> None:
    for key in (None, "s3cret"):
        text = cli.serve_banner("http://127.0.0.1:8000/v1", settings(api_key=key))
        code = text.strip().split("\n\n")[-1].splitlines()
        assert len(code) == 3
        tree = ast.parse("\n".join(code))
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        assert {"http://127.0.0.1:8000/v1", "news-1"} <= strings
        assert "s3cret" not in text and "reasoning_content" in text


def make_run(tmp_path: Path, files: list[str], last: str | None = None, passed: bool = True) -> Path:
    run_dir = tmp_path / "news-20261130-120000"
    (run_dir / "gguf").mkdir(parents=True)
    for name in files:
        (run_dir / "gguf" / name).write_bytes(b"GGUF")
    if last:
        entries = [{"path": f"/elsewhere/{n}"} for n in files if n != last] + [{"path": f"/elsewhere/{last}"}]
        (run_dir / "gguf" / "export.json").write_text(json.dumps({"files": entries, "checks": [{}],
                                                                  "passed": passed}))
    return run_dir


def test_the_file_make_gguf_wrote_last_is_chosen_even_in_a_moved_run_folder(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, ["news-20261130-120000-f16.gguf", "news-20261130-120000-q4_k_m.gguf"],
                       last="news-20261130-120000-q4_k_m.gguf")
    chosen = run_gguf.choose_gguf(run_dir)
    assert chosen.path == run_dir / "gguf" / "news-20261130-120000-q4_k_m.gguf" and chosen.verified is True
    assert "verified" in run_gguf.describe(chosen)
    assert run_gguf.choose_gguf(run_dir, "f16").path.name.endswith("-f16.gguf")
    assert run_gguf.choose_gguf(run_dir, "q8_0") is None
    with pytest.raises(UserError, match="QUANT=q8_0"):
        run_gguf.require_gguf(run_dir, "q8_0")


def test_a_failed_export_is_said_and_no_export_means_no_file(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, ["news-20261130-120000-q8_0.gguf"], last="news-20261130-120000-q8_0.gguf",
                       passed=False)
    assert "FAILED" in run_gguf.describe(run_gguf.choose_gguf(run_dir))
    empty = tmp_path / "other"
    (empty / "gguf").mkdir(parents=True)
    assert run_gguf.choose_gguf(empty) is None


def test_llama_cli_command_uses_the_context_it_is_given() -> None:
    commands = modelfile.run_commands(Path("runs/r/gguf/r-q4_k_m.gguf"), "news", context=2048)
    assert commands.llama_cli.split()[-2:] == ["-c", "2048"]


def test_readme_llama_cli_example_matches_the_medical_recipe_context() -> None:
    # The README shows the command `make gguf` prints for the medical recipe on a GPU without a profile: its -c
    # is the model.max_seq_length written in that recipe.
    import yaml

    readme = (ROOT / "README.md").read_text("utf-8")
    line = next(x for x in readme.splitlines() if "bin/llama-cli -m" in x)
    recipe = yaml.safe_load((ROOT / "recipes" / "medical.yaml").read_text("utf-8"))
    assert line.split("-c ")[1].split()[0] == str(recipe["model"]["max_seq_length"])


def make_environment(*args: str, env: dict | None = None) -> dict[str, str]:
    """What `make serve ...` hands its command: the recipe line runs a shell that prints the variables instead."""
    printer = 'PY=sh -c "echo HOST=[$$HOST] PORT=[$$PORT] QUANT=[$$QUANT]" sh'
    done = subprocess.run(["make", "-s", "--no-print-directory", "serve", "VENV=/nonexistent-venv",
                           "-o", "/nonexistent-venv/.export", "-o", "/nonexistent-venv/.core", printer, *args],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    line = done.stdout.strip().splitlines()[-1]
    return {k: v.strip("[]") for k, v in (part.split("=", 1) for part in line.split())}


def test_make_serve_takes_host_from_the_command_line_only() -> None:
    from trainer.makeargs import TARGETS, command_line

    assert make_environment("HOST=0.0.0.0")["HOST"] == "0.0.0.0"
    assert make_environment(env={"HOST": "my-laptop"})["HOST"] == ""  # zsh and others export a HOST of their own
    serve = TARGETS["serve"]
    argv = command_line(serve, {"RUN": "latest", "HOST": "0.0.0.0", "PORT": "9001", "QUANT": "q8_0"})
    assert argv[:1] == ["serve"] and "--host" in argv and argv[argv.index("--port") + 1] == "9001"
    assert argv[argv.index("--quant") + 1] == "q8_0" and "--host" not in command_line(serve, {"RUN": "latest"})


def finished_run(tmp_path: Path) -> Path:
    from trainer.recipe import RESOLVED_NAME, find_recipe, load_recipe, save_resolved
    from trainer.runs import COMPLETE

    run_dir = tmp_path / "runs" / "news-20261130-120000"
    run_dir.mkdir(parents=True)
    save_resolved(load_recipe(find_recipe("news", ROOT / "recipes"), ["profile=cpu"]), run_dir / RESOLVED_NAME)
    (run_dir / COMPLETE).write_text("")
    return run_dir


class RecordedServer:
    """Stands in for llama-server (the real one is tested in test_serve.py): records what it was asked to serve."""

    started: list = []

    def __init__(self, settings, log_path):
        self.started.append(settings)
        self.base_url, self.log_path, self.stopped = "http://127.0.0.1:1/v1", log_path, False
        self.key_file = None

    def wait(self):
        raise KeyboardInterrupt  # the user presses Ctrl-C

    def stop(self):
        self.stopped = True


def test_serve_exports_a_run_without_gguf_first_says_so_then_serves_that_file(tmp_path, monkeypatch, capsys):
    run_dir = finished_run(tmp_path)
    exported = []

    def export_gguf(run, quant, verify=True):
        exported.append((run, quant))
        made = run / "gguf" / f"{run.name}-q4_k_m.gguf"
        made.parent.mkdir(exist_ok=True)
        made.write_bytes(b"GGUF")
        return 0

    monkeypatch.setattr(cli, "export_gguf", export_gguf)
    monkeypatch.setattr(serve, "RunningServer", RecordedServer)
    monkeypatch.setattr(cli, "_stop_on_signals", lambda: None)
    RecordedServer.started = []
    assert cli.main(["serve", str(run_dir), "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert exported == [(run_dir, None)] and "has no GGUF yet: exporting it first" in err
    (settings,) = RecordedServer.started
    assert settings.gguf == run_dir / "gguf" / f"{run_dir.name}-q4_k_m.gguf" and settings.alias == run_dir.name
    import yaml

    news = yaml.safe_load((ROOT / "recipes" / "news.yaml").read_text("utf-8"))
    assert settings.context == news["profiles"]["cpu"]["model"]["max_seq_length"]  # the recipe's, not a default
    assert "llama-server stopped" in err


def test_serve_refuses_the_network_without_a_key_before_exporting(tmp_path, monkeypatch, capsys):
    run_dir = finished_run(tmp_path)
    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.setattr(cli, "export_gguf", lambda *a, **k: pytest.fail("must not export"))
    assert cli.main(["serve", str(run_dir), "--host", "0.0.0.0"]) == 2
    assert "needs API_KEY" in capsys.readouterr().err


# A stand-in for llama-server (an HTTP server in Python) to check our process handling quickly: waiting for the
# model to load, reporting a server that dies, the key file, and stopping without leaving a process. What
# llama-server itself answers is tested against the real binary in test_serve.py.
FAKE_SERVER = r'''
import http.server, json, os, signal, sys, time
args, argv, i = {}, sys.argv[1:], 0
while i < len(argv):  # "--flag value" or a lone "--flag"
    value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
    args[argv[i]] = value
    i += 2 if value else 1
if os.environ.get("FAKE_FAIL"):
    print("error: failed to load model", flush=True)
    sys.exit(3)
if "--api-key-file" in args:
    with open(os.environ["FAKE_SEEN_KEY"], "w") as seen:
        seen.write(open(args["--api-key-file"]).read())
loaded_at = time.monotonic() + 0.5
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = time.monotonic() > loaded_at
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(json.dumps({"status": "ok" if ok else "loading model"}).encode())
    def log_message(self, *a):
        pass
server = http.server.HTTPServer((args["--host"], int(args["--port"])), Handler)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
server.serve_forever()
'''


@pytest.fixture
def fake_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import sys

    from export import llamacpp

    script = tmp_path / "llama-server"
    script.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    script.chmod(0o755)
    tools = llamacpp.LlamaCppTools(*(script,) * 7, lib_dir=tmp_path)
    monkeypatch.setattr(llamacpp, "tools", lambda *a: tools)
    monkeypatch.setenv("FAKE_SEEN_KEY", str(tmp_path / "seen-key"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    return tmp_path


def test_server_start_waits_for_the_model_then_stop_leaves_nothing(fake_server: Path) -> None:
    server = serve.start_server(fake_server / "m.gguf", api_key="s3cret", log_path=fake_server / "serve.log")
    try:
        assert server.process.poll() is None and server.base_url == f"http://127.0.0.1:{server.port}/v1"
        with urllib_open(server.base_url.removesuffix("/v1") + "/health") as reply:
            assert reply.status == 200  # start_server returned only once the model was loaded
        assert (fake_server / "seen-key").read_text() == "s3cret\n"
        assert oct(server._secrets.stat().st_mode & 0o777) == "0o700"
    finally:
        server.stop()
    assert server.process.returncode == 0 and not server._secrets.exists()
    server.stop()  # twice is fine


def test_a_server_that_dies_while_starting_is_reported_with_its_log(fake_server: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(UserError) as err:
        serve.start_server(fake_server / "m.gguf", log_path=fake_server / "serve.log")
    assert "exit code 3" in str(err.value) and "failed to load model" in str(err.value)


def test_serving_stops_the_server_when_the_caller_fails(fake_server: Path) -> None:
    seen = []
    with pytest.raises(RuntimeError):
        with serve.serving(fake_server / "m.gguf") as base_url:
            seen.append(base_url)
            raise RuntimeError("the caller fails")
    with pytest.raises(OSError):
        urllib_open(seen[0].removesuffix("/v1") + "/health")


def urllib_open(url: str):
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5)


def test_chat_stream_yields_each_piece_as_it_arrives() -> None:
    # The stand-in writes the answer only once the reasoning has reached the caller (or after 10 s): a client
    # that waited for the whole reply would get the reasoning too late.
    import http.server
    import threading

    reached = threading.Event()
    waited = []

    class Stream(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.event({"reasoning_content": "think"})
            waited.append(reached.wait(10))
            self.event({"content": "answer"})
            self.chunk(b"data: [DONE]\n\n")
            self.chunk(b"")

        def event(self, delta: dict):
            self.chunk(f"data: {json.dumps({'choices': [{'delta': delta}]})}\n\n".encode())

        def chunk(self, data: bytes):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pieces = []
        base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        for piece in serve.chat_stream(base_url, [{"role": "user", "content": "x"}]):
            pieces.append(piece)
            reached.set()
    finally:
        server.shutdown()
        server.server_close()
    assert pieces == [("reasoning", "think"), ("answer", "answer")] and waited == [True]
