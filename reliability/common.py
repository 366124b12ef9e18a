"""What every part of the reliability suite shares: tiny runs and exports per kit, a CLI
runner, file-tree snapshots (to catch partial outputs) and the figures table."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KITS = ("toy", "seg", "det", "text", "ctr")
PYTHON = sys.executable


def base_env(work: Path) -> dict[str, str]:
    """The environment every child command gets: no bars, generated data under ``work``."""
    env = {**os.environ, "E2EKIT_NO_PROGRESS": "1", "E2EKIT_DATA": str(work / "data")}
    env.pop("E2EKIT_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def e2ekit(
    work: Path,
    args: Sequence[object],
    *,
    cwd: Path | None = None,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``e2ekit ARGS`` as a user would (a fresh process); never raises on a failure."""
    return subprocess.run(
        [PYTHON, "-m", "e2ekit", *map(str, args)],
        cwd=cwd or work,
        env={**base_env(work), **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_config(kit: str) -> Path:
    return ROOT / "configs" / kit / "tiny.yaml"


@dataclass(frozen=True)
class Built:
    """A kit's tiny trained run and its export, made once per suite work folder."""

    kit: str
    config: Path
    run: Path
    export: Path


def build(work: Path, kit: str) -> Built:
    """Train and export ``kit``'s tiny config under ``work/built/<kit>`` (reused if done)."""
    home = work / "built" / kit
    built = Built(kit, tiny_config(kit), home / "run", home / "export")
    if (built.export / "deploy.yaml").is_file():
        return built
    home.mkdir(parents=True, exist_ok=True)
    for args in (
        [kit, "train", "-c", built.config, "--out", built.run, "--overwrite"],
        [
            kit,
            "export",
            "-c",
            built.config,
            "--weights",
            built.run / "best.pt",
            "--out",
            built.export,
        ],
    ):
        proc = e2ekit(work, args)
        if proc.returncode != 0:
            raise RuntimeError(f"building the {kit} fixture failed: {args}\n{proc.stderr[-2000:]}")
    return built


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folders`` with its size and mtime: what a command may not change."""
    seen: dict[str, tuple[int, int]] = {}
    for folder in folders:
        if not folder.exists():
            continue
        for p in [folder, *folder.rglob("*")]:
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            seen[str(p)] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return seen


def changes(before: dict[str, tuple[int, int]], *folders: Path) -> list[str]:
    """Paths added, removed or rewritten under ``folders`` since ``before``."""
    after = snapshot(*folders)
    added = [f"+{p}" for p in after if p not in before]
    removed = [f"-{p}" for p in before if p not in after]
    rewritten = [f"~{p}" for p, v in after.items() if p in before and v != before[p] and v[0] != -1]
    return sorted(added + removed + rewritten)


def one_line_error(stderr: str) -> bool:
    """A user-facing failure: no traceback, and exactly one ``error:`` line, the last one
    (log lines and warnings may come before it)."""
    if "Traceback (most recent call last)" in stderr:
        return False
    lines = [ln.split("\r")[-1].strip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return len(errors) == 1 and lines[-1] == errors[0]


@dataclass
class Row:
    """One line of the figures table; ``ok`` is False when the part found a defect."""

    part: str
    target: str
    figures: dict[str, object]
    ok: bool = True
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "part": self.part,
            "target": self.target,
            "figures": self.figures,
            "ok": self.ok,
            "notes": self.notes,
        }


def format_table(rows: Iterable[Row]) -> str:
    """The suite's one table: part, target, figures, verdict."""
    rows = list(rows)
    cells = [
        (
            r.part,
            r.target,
            "  ".join(f"{k}={v}" for k, v in r.figures.items()),
            "ok" if r.ok else "FAIL",
        )
        for r in rows
    ]
    header = ("part", "target", "figures", "verdict")
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(4)]
    line = lambda c: " | ".join(str(x).ljust(w) for x, w in zip(c, widths, strict=True))  # noqa: E731
    out = [line(header), "-+-".join("-" * w for w in widths), *map(line, cells)]
    return "\n".join(out)


def print_rows(rows: list[Row]) -> None:
    """A part run alone prints its table and its JSON rows."""
    print(format_table(rows))
    for r in rows:
        print(json.dumps(r.as_json()))


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = round(time.perf_counter() - self.t0, 1)


def part_main(doc: str, run: Callable[[Path, bool], list[Row]]) -> None:
    """``python -m reliability.<part> [--work DIR] [--quick]``: one part alone, its table."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: new)")
    parser.add_argument("--quick", action="store_true", help="a few cases (a smoke run)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="e2ekit-reliability-"))
    print_rows(run(work.resolve(), args.quick))
