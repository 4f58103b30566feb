"""The engine's hot path runs compiled (Makefile, COMPILED), and never from a stale build."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import pytest

from dunning import refuse_stale_builds

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = ".cpython-311-x86_64-linux-gnu.so"


def compiled_modules() -> list[str]:
    line = re.search(r"^COMPILED := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert line is not None, "the Makefile lists the modules mypyc compiles in COMPILED"
    return [path.removesuffix(".py").replace("/", ".") for path in line.group(1).split()]


def test_the_suite_runs_the_compiled_modules() -> None:
    modules = compiled_modules()
    assert {"dunning.engine", "dunning.budgets", "dunning.timing", "dunning.simulate"} <= set(modules)
    for name in modules:
        module = importlib.import_module(name)
        assert module.__file__ is not None and module.__file__.endswith(".so"), (
            f"{name} was imported from {module.__file__}: run `make install` to compile it"
        )


def _build(folder: Path, name: str, source_age: float, build_age: float) -> None:
    source, build = folder / f"{name}.py", folder / f"{name}{SUFFIX}"
    source.write_text("")
    build.write_bytes(b"")
    now = source.stat().st_mtime
    os.utime(source, (now - source_age, now - source_age))
    os.utime(build, (now - build_age, now - build_age))


def test_a_build_older_than_its_source_is_refused(tmp_path: Path) -> None:
    _build(tmp_path, "engine", source_age=10, build_age=60)
    with pytest.raises(ImportError, match=r"engine\.py changed after it was compiled into engine\.cpython.*make install"):
        refuse_stale_builds(tmp_path)


def test_builds_newer_than_their_sources_and_the_shared_runtime_pass(tmp_path: Path) -> None:
    _build(tmp_path, "engine", source_age=60, build_age=10)
    (tmp_path / f"compiled__mypyc{SUFFIX}").write_bytes(b"")  # mypyc's runtime: no source of its own
    refuse_stale_builds(tmp_path)
