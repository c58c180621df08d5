"""The project's packaging: a wheel built from pyproject.toml holds every module and data file, quietly."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_builds_without_setuptools_package_warnings_and_keeps_the_launch_configs(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("trainer", "export"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = ("import sys; from setuptools import build_meta; "
             "print(build_meta.build_wheel(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=source, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "is absent from the" not in output and "Package would be ignored" not in output
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl"))).namelist()
    launch = sorted(p.relative_to(source).as_posix() for p in (source / "trainer" / "training" / "launch").iterdir())
    assert launch and set(launch) <= set(names)
    assert "trainer/cli.py" in names and "export/pipeline.py" in names
