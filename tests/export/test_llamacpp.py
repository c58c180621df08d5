"""The one llama.cpp build (tools + shared library), its progress line, and llama-cpp-python loading that library.

The real build takes about ten minutes; a stand-in CMake project with the same targets (executables linked to a
shared `llama`) runs the same code path in seconds. Tests marked `llamacpp` use the real build.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from export import llamacpp
from export.progress import BuildProgress, percent_of
from trainer.errors import UserError

# Every tool calls into the shared library, so running one after the build folder was renamed shows that the
# binaries find libllama through an RPATH relative to themselves, not through the temporary build path.
FAKE_PROJECT = """cmake_minimum_required(VERSION 3.14)
project(fake C)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
file(WRITE ${CMAKE_BINARY_DIR}/lib.c "int fake_answer(void) { return 42; }")
file(WRITE ${CMAKE_BINARY_DIR}/main.c "int fake_answer(void); int main(void) { return fake_answer() - 42; }")
add_library(llama SHARED ${CMAKE_BINARY_DIR}/lib.c)
foreach(name llama-quantize llama-cli llama-completion llama-perplexity llama-server)
  add_executable(${name} ${CMAKE_BINARY_DIR}/main.c)
  target_link_libraries(${name} llama)
endforeach()
"""


@pytest.fixture
def fake_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("R1TUNE_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(FAKE_PROJECT)
    return src


def test_build_is_atomic_pruned_and_survives_the_rename(fake_source: Path) -> None:
    target = llamacpp.build_dir()
    llamacpp._build(fake_source, target)
    assert sorted(p.name for p in target.iterdir()) == ["bin", "build.log", llamacpp.OPTIONS_NAME]
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary folder left
    assert llamacpp.library_file(target / "bin").exists()
    for name in llamacpp.TARGETS:
        binary = target / "bin" / name
        assert os.access(binary, os.X_OK)
        assert subprocess.run([str(binary)], env={**os.environ, "LD_LIBRARY_PATH": ""}).returncode == 0, name


def test_failed_build_leaves_no_folder_and_keeps_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R1TUNE_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text('cmake_minimum_required(VERSION 3.14)\nmessage(FATAL_ERROR "boom")\n')
    with pytest.raises(UserError) as err:
        llamacpp._build(src, llamacpp.build_dir())
    log = Path(err.value.where)
    assert log.name.endswith(".failed.log") and "boom" in log.read_text()
    assert [p.name for p in llamacpp.build_dir().parent.iterdir()] == [log.name]


def test_other_cmake_options_rebuild_and_no_options_keep_the_build(fake_source: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    real_build = llamacpp._build
    monkeypatch.setattr(llamacpp, "llama_cpp_source", lambda: fake_source)
    monkeypatch.setattr(llamacpp, "converter", lambda: (fake_source / "convert.py", fake_source / "gguf-py"))
    monkeypatch.setattr(llamacpp, "_build", lambda src, target, extra=(): built.append(extra) or
                        real_build(src, target, extra))
    llamacpp.tools()
    llamacpp.tools(())           # same options: reused
    llamacpp.tools(("-DFAKE_OPTION=1",))  # other options (CMAKE_ARGS at setup): built again, and recorded
    found = llamacpp.tools()     # at run time: whatever build there is
    assert built == [(), ("-DFAKE_OPTION=1",)]
    assert (llamacpp.build_dir() / llamacpp.OPTIONS_NAME).read_text() == "-DFAKE_OPTION=1\n"
    assert found.lib_dir == llamacpp.build_dir() / "bin" and found.server.name == "llama-server"


def test_cmake_args_are_split_like_a_shell_but_never_run_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=ON  '-DCMAKE_CUDA_ARCHITECTURES=86;89' ; rm -rf /")
    assert llamacpp.options_from_env() == ("-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=86;89", ";", "rm", "-rf",
                                           "/")
    monkeypatch.delenv("CMAKE_ARGS")
    assert llamacpp.options_from_env() == ()


@pytest.mark.parametrize(("line", "percent"), [
    ("[12/300] Building CXX object src/CMakeFiles/llama.dir/llama.cpp.o", 4),
    ("[300/300] Linking CXX executable bin/llama-server", 100),
    ("[ 45%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o", 45),
    ("[100%] Built target llama-cli", 100),
    ("-- Configuring done", None),
    ("/src/llama.cpp:12:3: warning: [12/300] unused", None),
])
def test_percent_of_reads_ninja_and_make_lines(line: str, percent: int | None) -> None:
    assert percent_of(line) == percent


def test_progress_into_a_log_writes_a_line_per_tenth_and_never_goes_back() -> None:
    out = io.StringIO()  # not a terminal
    with BuildProgress("llama.cpp build", stream=out, interval=3600, quiet_interval=3600) as progress:
        for line in ["[1/100] a", "[5/100] b", "[ 12%] c", "[ 3%] stepping back", "[35/100] d", "[36/100] e",
                     "noise", "[100/100] z"]:
            progress.feed(line)
    shown = [line.split(": ")[1].split(" done")[0] for line in out.getvalue().splitlines()]
    assert shown == ["0 min 00 s", "1%", "12%", "35%", "100%"]


def test_progress_is_kept_alive_while_the_compiler_is_silent() -> None:
    out = io.StringIO()
    with BuildProgress("llama.cpp build", stream=out, interval=0.01, quiet_interval=0.05):
        import time

        time.sleep(0.3)
    assert len(out.getvalue().splitlines()) >= 3  # "starting", then a line per quiet interval


def test_binding_install_is_skipped_when_the_pinned_version_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    from export import binding

    monkeypatch.setattr(binding, "installed_version", lambda: binding.LLAMA_CPP_PYTHON_VERSION)
    monkeypatch.setattr(binding.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    binding.install_binding()


def test_binding_install_turns_off_the_sdist_build_and_the_wheel_cache(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    from export import binding

    calls = []
    archive = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    monkeypatch.setattr(binding, "installed_version", lambda: None)
    monkeypatch.setattr(binding, "sdist_archive", lambda: archive)
    monkeypatch.setattr(binding.subprocess, "run",
                        lambda cmd, env, **k: calls.append((cmd, env)) or subprocess.CompletedProcess(cmd, 0))
    binding.install_binding()
    ((cmd, env),) = calls
    assert env["CMAKE_ARGS"] == "-DLLAMA_BUILD=OFF" and "--no-cache-dir" in cmd and cmd[-1] == str(archive)


def test_load_llama_cpp_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path)])  # nothing importable from here
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(tmp_path))
    with pytest.raises(UserError, match="make setup-export"):
        llamacpp.load_llama_cpp()


@pytest.mark.llamacpp
def test_llama_cpp_python_runs_the_library_of_the_one_build() -> None:
    # In a fresh interpreter, as a user's process would start; the library mapped in is the build's file.
    code = ("from export.llamacpp import load_llama_cpp, tools; import os; m = load_llama_cpp(); "
            "maps = open('/proc/self/maps').read(); print(os.path.realpath(tools().lib_dir) in maps, "
            "m.__version__)")
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", llamacpp.LLAMA_CPP_PYTHON_VERSION]
