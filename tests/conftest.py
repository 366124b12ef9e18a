"""Shared fixtures: repo paths, a CLI runner in-process and as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("E2EKIT_NO_PROGRESS", "1")


@pytest.fixture(scope="session", autouse=True)
def _data_home(tmp_path_factory: pytest.TempPathFactory):
    """Generated built-in data goes to a temp folder, never to the user's cache."""
    old = os.environ.get("E2EKIT_DATA")
    os.environ["E2EKIT_DATA"] = str(tmp_path_factory.mktemp("e2ekit_data"))
    yield
    if old is None:
        os.environ.pop("E2EKIT_DATA", None)
    else:
        os.environ["E2EKIT_DATA"] = old


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``e2ekit`` in-process: returns (exit code, stdout, stderr)."""
    from e2ekit.core.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_subprocess(args: list[str], env_extra: dict[str, str] | None = None, timeout: int = 300):
    env = {**os.environ, "E2EKIT_NO_PROGRESS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "e2ekit", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
