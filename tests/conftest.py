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
