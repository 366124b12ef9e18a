"""Training survives ``kill -9``: each kit's tiny run is killed at seeded random points (mid
step, mid evaluation, mid checkpoint write), resumed, and must end exactly as an uninterrupted
run; a save (a checkpoint, the final metrics) that meets a full disk fails in one line naming
the file, leaves no partial file, and the run resumes once space is back."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reliability.common import (
    KITS,
    PYTHON,
    Row,
    Timer,
    base_env,
    one_line_error,
    part_main,
    tiny_config,
)

SEED = 20240617
RUN_TIMEOUT_S = 300.0
# More kill points than the tiny configs give: a checkpoint every step, an evaluation every
# few steps, a log line every step (the log is how the killer knows where the run is).
COMMON = ["train.save_interval=1", "train.log_interval=1", "train.tensorboard=false"]
OVERRIDES: dict[str, list[str]] = {
    "toy": [*COMMON, "train.eval_interval=3"],
    "seg": [*COMMON, "train.eval_interval=2"],
    "det": [*COMMON, "train.eval_interval=2"],
    "text": [*COMMON, "train.eval_interval=2"],
    "ctr": [*COMMON, "train.eval_interval=4"],  # also evaluates at the end of its epoch
}
KILLS_FULL = {"toy": 5, "seg": 2, "det": 2, "text": 2, "ctr": 4}  # 5 minutes on 2 cores
CHAIN = 2  # kills per run: a continued run is killed again before it may finish
QUICK_KITS = ("toy", "ctr")
# final: during the run's last checkpoint write; start: before the first step (no checkpoint)
POINTS = ("step", "eval", "ckpt", "final", "start")
TEMP = re.compile(r"\.tmp")  # ``.last.pt.tmp-<pid>``, ``metrics.json.tmp``, ...

STEP_LINE = re.compile(r"^(\S+ [\d:,]+) INFO step (\d+)[/ ]")
EVAL_LINE = re.compile(r"^(\S+ [\d:,]+) INFO eval step (\d+):")
START_LINE = re.compile(r"^(\S+ [\d:,]+) INFO train ")


# -- watching a run folder ------------------------------------------------------------------------
class FolderEvents:
    """Names created or modified in one folder, as they happen (inotify), else by polling.

    A checkpoint temp file lives for milliseconds; inotify reports its creation at once, so
    the killer lands while the file is being written."""

    IN_MODIFY, IN_MOVED_TO, IN_CREATE = 0x2, 0x80, 0x100

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fd = -1
        self.seen: set[str] = set()
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            mask = self.IN_MODIFY | self.IN_MOVED_TO | self.IN_CREATE
            if fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(folder), mask) >= 0:
                self.fd = fd
            elif fd >= 0:
                os.close(fd)
        except (OSError, AttributeError):
            self.fd = -1

    def wait(self, timeout: float) -> list[tuple[str, bool]]:
        """``(name, created)`` for what changed within ``timeout`` seconds."""
        if self.fd < 0:
            time.sleep(min(timeout, 0.002))
            names = {p.name for p in self.folder.iterdir()} if self.folder.is_dir() else set()
            new = [(n, True) for n in sorted(names - self.seen)]
            self.seen = names
            return [*new, ("train.log", False)]
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        out: list[tuple[str, bool]] = []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return out
        pos = 0
        while pos + 16 <= len(data):
            _wd, mask, _cookie, size = struct.unpack_from("iIII", data, pos)
            name = data[pos + 16 : pos + 16 + size].rstrip(b"\0").decode(errors="replace")
            pos += 16 + size
            out.append((name, bool(mask & (self.IN_CREATE | self.IN_MOVED_TO))))
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class LogTail:
    """``train.log`` read as it grows: step, evaluation and start lines with their times."""

    path: Path
    offset: int = 0
    inode: int | None = None
    partial: str = ""
    steps: dict[int, float] = field(default_factory=dict)
    evals: dict[int, float] = field(default_factory=dict)

    @classmethod
    def at_end(cls, path: Path) -> LogTail:
        """From the end of ``path``: a resumed run appends to the log of the killed one."""
        if not path.is_file():
            return cls(path)
        st = path.stat()
        return cls(path, offset=st.st_size, inode=st.st_ino)

    def read(self) -> list[tuple[str, int]]:
        """New ``("start"|"step"|"eval", step)`` events since the last read."""
        try:
            with self.path.open("rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_ino != (self.inode or st.st_ino) or st.st_size < self.offset:
                    self.offset, self.partial = 0, ""  # a new log: --overwrite removed the old
                self.inode = st.st_ino
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        text = self.partial + chunk.decode(errors="replace")
        lines = text.split("\n")
        self.partial = lines.pop()
        events = []
        for line in lines:
            if START_LINE.match(line):
                events.append(("start", 0))
            elif m := STEP_LINE.match(line):
                self.steps[int(m.group(2))] = stamp(m.group(1))
                events.append(("step", int(m.group(2))))
            elif m := EVAL_LINE.match(line):
                self.evals[int(m.group(2))] = stamp(m.group(1))
                events.append(("eval", int(m.group(2))))
        return events


def stamp(text: str) -> float:
    """Seconds of a log time stamp (``YYYY-MM-DD HH:MM:SS,mmm``) within its day."""
    clock, ms = text.split(" ")[1].split(",")
    h, m, s = map(int, clock.split(":"))
    return h * 3600 + m * 60 + s + int(ms) / 1000


def temps(folder: Path) -> list[str]:
    """Temp files of an unfinished write anywhere under ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if TEMP.search(p.name))


# -- one training process, watched and maybe killed ---------------------------------------------
@dataclass
class Plan:
    """Where to kill: after the log shows ``step`` (plus ``delay`` s), or at the ``nth``
    creation of a ``name`` temp file (``ckpt``)."""

    point: str
    step: int = 0
    delay: float = 0.0
    name: str = "last.pt"
    nth: int = 1


@dataclass
class Watched:
    """What a watched training did: exit code, or where it was killed."""

    rc: int | None
    killed: bool
    landed: str = ""  # where the kill landed, as the run folder shows it
    out: Path = Path()
    saved: list[tuple[str, int]] = field(default_factory=list)  # (file, step) per save begun
    tail: LogTail | None = None
    stderr: str = ""


def train_cmd(
    kit: str, out: Path, resume: bool = False, overrides: Sequence[str] = ()
) -> list[str]:
    """``e2ekit KIT train`` of the tiny config with ``overrides`` (default: the kit's own)."""
    if resume:
        return [PYTHON, "-m", "e2ekit", kit, "train", "--resume", str(out)]
    cfg = ["-c", str(tiny_config(kit))]
    for o in overrides or OVERRIDES[kit]:
        cfg += ["-o", o]
    return [PYTHON, "-m", "e2ekit", kit, "train", *cfg, "--out", str(out)]


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def watch(
    work: Path,
    cmd: Sequence[str],
    out: Path,
    plan: Plan | None = None,
    evals: frozenset[int] = frozenset(),
) -> Watched:
    """Run ``cmd`` (a train writing to ``out``) and SIGKILL its process group per ``plan``;
    ``evals`` are the steps the run evaluates at (to tell where a kill landed)."""
    out.mkdir(parents=True, exist_ok=True)  # an empty --out is accepted; watched from birth
    err_path = out.parent / f"{out.name}.stderr"
    events = FolderEvents(out)
    tail = LogTail.at_end(out / "train.log")
    saves: Counter[str] = Counter()
    saved: list[tuple[str, int]] = []
    kill_at: float | None = None
    killed, landed = False, ""
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            list(cmd),
            cwd=work,
            env=base_env(work),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                wait = 0.05 if kill_at is None else max(0.0, min(0.05, kill_at - time.monotonic()))
                seen: list[tuple[str, int]] = []  # log events, read as they come
                for name, created in events.wait(wait):
                    if not created or ".tmp-" not in name:
                        continue
                    base = name.lstrip(".").split(".tmp-")[0]
                    saves[base] += 1
                    hit = plan is not None and plan.point in ("ckpt", "final")
                    hit = hit and base == plan.name
                    if hit and saves[base] == plan.nth:
                        kill_group(proc)  # at once: the temp file is being written now
                        kill_at = 0.0
                        break
                    seen += tail.read()
                    saved.append((base, max(tail.steps, default=0)))
                timed = plan is not None and plan.point in ("step", "eval", "start")
                for what, step in seen + tail.read():
                    at = (what == "start" and step == 0) or what == "step"
                    if timed and kill_at is None and at and step == plan.step:
                        kill_at = time.monotonic() + plan.delay
                if kill_at is not None and time.monotonic() >= kill_at:
                    kill_group(proc)
                    killed = proc.wait() == -signal.SIGKILL
                    landed = where_landed(out, tail, evals) if killed else ""
                    break
            if proc.poll() is None and not killed:
                raise RuntimeError(f"{' '.join(cmd[3:])} ran past {RUN_TIMEOUT_S:.0f}s")
        finally:
            events.close()
            if proc.poll() is None:
                kill_group(proc)
                proc.wait()
    tail.read()
    return Watched(
        rc=None if killed else proc.returncode,
        killed=killed,
        landed=landed,
        out=out,
        saved=saved,
        tail=tail,
        stderr=err_path.read_text(errors="replace"),
    )


def where_landed(out: Path, tail: LogTail, evals: frozenset[int]) -> str:
    """Where the process was when it died: a half-written checkpoint, an evaluation whose
    result is not logged yet, the steps, or before the first step."""
    tail.read()
    if any(".pt.tmp-" in t for t in temps(out)):
        return "ckpt"
    if not tail.steps:
        return "start"
    last = max(tail.steps)
    if last in evals and last not in tail.evals:
        return "eval"
    return "step"


# -- comparing a resumed run with the reference --------------------------------------------------
def untimed(value: Any) -> Any:
    """``value`` without wall-clock figures (``eval_seconds``): never equal across runs."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if not str(k).endswith("seconds")}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def records(path: Path) -> list[Any]:
    if not path.is_file():
        return []
    return [untimed(json.loads(ln)) for ln in path.read_text().splitlines() if ln.strip()]


def final(path: Path) -> Any:
    return untimed(json.loads(path.read_text())) if path.is_file() else None


def same_weights(a: Path, b: Path) -> str:
    """'' when both checkpoints load with ``weights_only=True`` and hold equal weights."""
    import torch

    try:
        ca = torch.load(a, map_location="cpu", weights_only=True)
        cb = torch.load(b, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or unsafe file: the finding itself
        return f"{b.name} does not load: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    ma, mb = ca.get("model", {}), cb.get("model", {})
    if ca.get("ema") and cb.get("ema"):  # the averaged weights, which inference uses
        ma = {**ma, **{f"ema.{k}": v for k, v in ca["ema"]["module"].items()}}
        mb = {**mb, **{f"ema.{k}": v for k, v in cb["ema"]["module"].items()}}
    if ma.keys() != mb.keys():
        return f"{b.name}: other weight names than the reference"
    diff = [k for k in ma if not torch.equal(ma[k], mb[k])]
    if diff:
        return f"{b.name} (step {cb.get('step')}) weights differ from the reference's ({diff[0]})"
    if ca.get("step") != cb.get("step"):
        return f"{b.name}: step {cb.get('step')}, the reference's is {ca.get('step')}"
    return ""


def compare(ref: Path, run: Path) -> list[str]:
    """How ``run`` differs from the uninterrupted ``ref`` (empty: identical)."""
    broken = []
    if (left := temps(run)) and not (set(left) <= set(temps(ref))):
        broken.append(f"temp files left: {left}")
    got_final, want_final = final(run / "metrics.json"), final(ref / "metrics.json")
    if got_final != want_final:
        keys = sorted(
            k
            for k in {*(got_final or {}), *(want_final or {})}
            if (got_final or {}).get(k) != (want_final or {}).get(k)
        )
        broken.append(f"metrics.json differs from the reference at {keys[:5]}")
    got, want = records(run / "metrics.jsonl"), records(ref / "metrics.jsonl")
    if got != want:
        steps = lambda rs: [r.get("step") for r in rs]  # noqa: E731
        broken.append(f"metrics.jsonl steps {steps(got)} vs reference {steps(want)}")
    for name in ("last.pt", "best.pt"):
        if not (run / name).is_file():
            broken.append(f"no {name}")
        elif why := same_weights(ref / name, run / name):
            broken.append(why)
    return broken


# -- after a kill: continue the run ---------------------------------------------------------------
def error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    return lines[-1] if lines else stderr.strip().splitlines()[-1] if stderr.strip() else ""


def quiet(work: Path, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), cwd=work, env=base_env(work), capture_output=True, text=True, timeout=600
    )


def way_on(work: Path, kit: str, run: Path, notes: list[str]) -> list[str] | None:
    """The command that continues ``run`` after a kill, as the CLI tells a user: ``--resume``
    once there is a checkpoint; before the first one, the messages of ``--resume`` and of a
    plain rerun must be one line and name a way on that works. None: the plain rerun was
    accepted and trained to the end."""
    if (run / "last.pt").is_file():
        return train_cmd(kit, run, resume=True)
    tried = quiet(work, train_cmd(kit, run, resume=True))
    said = error_line(tried.stderr)
    if tried.returncode == 0 or not one_line_error(tried.stderr):
        notes.append(f"--resume without a checkpoint: rc {tried.returncode}, {said!r}")
    elif "--overwrite" not in said:
        notes.append(f"--resume without a checkpoint names no way on: {said!r}")
    plain = train_cmd(kit, run)
    tried = quiet(work, plain)
    if tried.returncode == 0:
        return None
    said = error_line(tried.stderr)
    if not one_line_error(tried.stderr) or "--overwrite" not in said:
        notes.append(f"plain rerun refused, no clear way on: {said!r}")
    elif "--resume" in said:
        notes.append(f"plain rerun advises --resume, which cannot work without last.pt: {said!r}")
    return [*plain, "--overwrite"]


# -- the kills ------------------------------------------------------------------------------------
def draw(rng: random.Random, point: str, ref: Watched, after: int, until: int) -> Plan:
    """A kill point of kind ``point`` in steps ``(after, until]`` that the reference run
    shows (a mid-step kill falls back to when none of that kind is there)."""
    tail = ref.tail
    assert tail is not None
    steps = sorted(tail.steps)
    times = [tail.steps[s] for s in steps]
    step_s = (times[-1] - times[0]) / max(len(times) - 1, 1) if len(times) > 1 else 0.2
    evals = [s for s in sorted(tail.evals) if s in tail.steps and after < s <= until]
    saves = [(name, s) for name, s in ref.saved if after < s <= until]
    if point == "start" and not after:
        return Plan("start")  # at the log line that starts training, before any step
    if point == "eval" and evals:
        s = rng.choice(evals)
        took = max(tail.evals[s] - tail.steps[s], 0.0)
        return Plan("eval", step=s, delay=rng.uniform(0.0, 0.5) * took)
    if point in ("ckpt", "final") and saves:
        name, s = saves[-1] if point == "final" else rng.choice(saves)
        nth = sum(1 for n, t in ref.saved if n == name and after < t <= s)
        return Plan(point, step=s, name=name, nth=nth)
    # 0: before the first step, so before any checkpoint (only for a fresh run); the kill
    # lands up to one step after the drawn step's log line
    s = rng.randint(after + 1 if after else 0, max(until - 1, after + 1))
    return Plan("step", step=s, delay=rng.uniform(0.0, 1.0) * step_s)


def chain(
    work: Path, kit: str, run: Path, ref: Watched, points: Sequence[str], rng: random.Random
) -> tuple[Counter[str], list[str], list[str]]:
    """Kill a fresh run at ``points[0]``, its continuation at ``points[1]``, ...; then let
    the last continuation finish. Returns where each kill landed, what broke and a label."""
    notes: list[str] = []
    where: Counter[str] = Counter()
    labels = []
    evals = frozenset(ref.tail.evals) if ref.tail else frozenset()
    cmd: list[str] | None = train_cmd(kit, run)
    after = 0
    last = max(ref.tail.steps) if ref.tail else 0
    for i, point in enumerate(points):
        if cmd is None or after >= last:
            break  # nothing left to kill: the continuation only writes the final metrics
        # leave steps for the kills still to come in this chain
        until = after + max(1, (last - after) // (len(points) - i))
        plan = draw(rng, point, ref, after, until)
        got = watch(work, cmd, run, plan, evals)
        name = f"/{plan.name}" if plan.point in ("ckpt", "final") else ""
        labels.append(f"{plan.point}@{plan.step}{name}")
        if not got.killed:
            if got.rc != 0:
                notes.append(f"{labels[-1]}: exit {got.rc}: {error_line(got.stderr)}")
                return where, notes, labels
            labels[-1] += "->missed"  # the run ended before the kill point
            cmd = None
            break
        where[got.landed] += 1
        labels[-1] += f"->{got.landed}"
        cmd = way_on(work, kit, run, notes)
        if cmd is None:
            break
        after = load_step(run / "last.pt") or 0
    if cmd is not None:
        done = watch(work, cmd, run, None, evals)
        if done.rc != 0:
            notes.append(f"continuing exit {done.rc}: {error_line(done.stderr)}")
            return where, notes, labels
    notes += compare(ref.out, run)
    return where, notes, labels


def kills_for(work: Path, kit: str, n: int, rng: random.Random) -> Row:
    """``n`` kills of ``kit``'s training, in chains of two (kill, continue, kill, continue)."""
    home = work / "kills" / kit
    if home.exists():
        shutil.rmtree(home)
    with Timer() as t:
        ref = watch(work, train_cmd(kit, home / "ref"), home / "ref")
        if ref.rc != 0:
            return Row("kills", kit, {"kills": 0}, False, [f"reference run failed: {ref.stderr}"])
        kinds = POINTS if n >= len(POINTS) else POINTS[:-1]  # one start kill is enough
        points = [kinds[i % len(kinds)] for i in range(n)] if n >= len(kinds) else []
        points = points or rng.sample(kinds, n)
        rng.shuffle(points)
        # in each chain a kill before the first step comes first, one at the last save last
        order = {"start": 0, "final": 2}
        points = [
            p
            for c in range(0, n, CHAIN)
            for p in sorted(points[c : c + CHAIN], key=lambda p: order.get(p, 1))
        ]
        notes: list[str] = []
        where: Counter[str] = Counter()
        survived = 0
        for c in range(0, n, CHAIN):
            part = points[c : c + CHAIN]
            landed, broken, labels = chain(work, kit, home / f"c{c // CHAIN}", ref, part, rng)
            where += landed
            if broken:
                notes.append(f"chain {' '.join(labels)}: " + "; ".join(broken))
            else:
                survived += sum(landed.values())
                if any(label.endswith("missed") for label in labels):
                    notes.append(f"chain {' '.join(labels)}: the run ended before a kill point")
    kills = sum(where.values())
    figures: dict[str, object] = {
        "kills": kills,
        "survived": survived,
        "where": ",".join(f"{k}:{v}" for k, v in sorted(where.items())),
        "s": t.seconds,
    }
    if kills < n:
        figures["missed"] = n - kills
    broken = any(not note.endswith("before a kill point") for note in notes)
    return Row("kills", kit, figures, survived == kills and not broken, notes)


# -- a full disk during a checkpoint save ----------------------------------------------------------
DISK_KIT = "toy"
# a checkpoint of a few MB: far above what the logs write while a save runs
BIG_TOY = ("train.tensorboard=false", "model.hidden=512", "model.depth=2")
PAGE = 4096


def pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


@dataclass(frozen=True)
class DiskCase:
    """Which write meets the full disk, and the disk size that makes it so."""

    target: str  # the file whose write fails
    overrides: tuple[str, ...]

    def size(self, ref: Path) -> int:
        ckpt = (ref / "last.pt").stat().st_size
        small = [p.stat().st_size for p in ref.iterdir() if p.is_file() and p.suffix != ".pt"]
        if self.target == "last.pt":
            # one checkpoint and the small files fit, the next save's temp file does not
            return int(1.5 * ckpt) + sum(small) + (64 << 10)
        # best.pt, last.pt and the small files (less metrics.json) fill it to the last page
        files = [p for p in ref.iterdir() if p.is_file() and p.name != "metrics.json"]
        return sum(pages(p.stat().st_size) for p in files)


DISK_CASES = (
    DiskCase("last.pt", ("train.save_interval=1", *BIG_TOY)),
    DiskCase("metrics.json", BIG_TOY),
)


class SmallDisk:
    """A folder of ``size`` bytes: a tmpfs mounted there (root), or failing that a file-size
    limit in the child (EFBIG, "file too large", rather than a real ENOSPC)."""

    def __init__(self, folder: Path, size: int) -> None:
        self.folder, self.size = folder, size
        folder.mkdir(parents=True, exist_ok=True)
        self.how = "tmpfs" if self._mount(size) else "rlimit-fsize"

    def _mount(self, size: int, remount: bool = False) -> bool:
        if not shutil.which("mount"):
            return False
        opts = f"{'remount,' if remount else ''}size={size}"
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(self.folder)],
            capture_output=True,
            text=True,
        )
        return proc.returncode == 0

    def limit(self) -> Callable[[], None] | None:
        """What the child runs before exec so its writes meet the small disk."""
        if self.how == "tmpfs":
            return None
        size = self.size

        def apply() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

        return apply

    def grow(self) -> None:
        """Space is back."""
        if self.how == "tmpfs":
            self._mount(1 << 30, remount=True)
        self.size = resource.RLIM_INFINITY

    def close(self) -> None:
        if self.how == "tmpfs":
            subprocess.run(["umount", str(self.folder)], capture_output=True)


def disk_full(work: Path, case: DiskCase) -> Row:
    """Train on a disk that fills up at ``case.target``'s write: one line naming the file
    and the full disk, no temp file, the last complete checkpoint kept; once space is back,
    ``--resume`` ends as the same run on a big disk does."""
    home = work / "diskfull" / case.target
    if home.exists():
        subprocess.run(["umount", str(home / "small")], capture_output=True)
        shutil.rmtree(home)
    home.mkdir(parents=True)
    ref = home / "ref"
    target = f"{DISK_KIT} {case.target}"
    with Timer() as t:
        proc = quiet(work, train_cmd(DISK_KIT, ref, overrides=case.overrides))
        if proc.returncode != 0:
            return Row("disk-full", target, {}, False, [f"reference failed: {proc.stderr}"])
        ckpt = (ref / "last.pt").stat().st_size
        disk = SmallDisk(home / "small", case.size(ref))
        if disk.how != "tmpfs":
            if case.target != "last.pt":
                disk.close()
                return Row("disk-full", target, {"how": disk.how}, True, ["needs a small disk"])
            disk.size = ckpt // 2  # a file-size limit: the first save fails already
        run = disk.folder / "run"
        try:
            full = subprocess.run(
                train_cmd(DISK_KIT, run, overrides=case.overrides),
                cwd=work,
                env=base_env(work),
                capture_output=True,
                text=True,
                preexec_fn=disk.limit(),
            )
            said = error_line(full.stderr)
            step = load_step(run / "last.pt") if (run / "last.pt").is_file() else None
            left = temps(run)
            checks = {
                "failed": full.returncode != 0,
                "one_line": one_line_error(full.stderr),
                "names": any(w in said.lower() for w in ("no space left", "too large"))
                and str(run / case.target) in said,
                "no_temp": not left,
                "kept": step is not None or disk.how != "tmpfs",
            }
            disk.grow()
            cmd = train_cmd(DISK_KIT, run, resume=step is not None, overrides=case.overrides)
            again = subprocess.run(
                cmd if step is not None else [*cmd, "--overwrite"],
                cwd=work,
                env=base_env(work),
                capture_output=True,
                text=True,
                preexec_fn=disk.limit(),
            )
            checks["resumed"] = again.returncode == 0
            diff = compare(ref, run) if again.returncode == 0 else [error_line(again.stderr)]
            checks["matched"] = not diff
        finally:
            disk.close()
    notes = [f"{name}: no" for name, good in checks.items() if not good]
    notes.append(f"said: {said}")
    if not checks["one_line"]:
        notes.append(f"stderr: {full.stderr[-600:]!r}")
    if left:
        notes.append(f"left: {left}")
    notes += diff
    if full.returncode == 0:
        notes.append("the write never met a full disk (the run finished)")
    figures = {
        "how": disk.how,
        "ckpt_kb": ckpt >> 10,
        "kept_step": "-" if step is None else step,
        "msg": "ok" if checks["one_line"] and checks["names"] else "bad",
        "no_tmp": "yes" if not left else "no",
        "resumed": "yes" if checks["resumed"] and checks["matched"] else "no",
        "s": t.seconds,
    }
    return Row("disk-full", target, figures, all(checks.values()), notes)


def load_step(path: Path) -> int | None:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:
        return None


def run(work: Path, quick: bool = False) -> list[Row]:
    rng = random.Random(SEED)
    kits = QUICK_KITS if quick else KITS
    rows = [kills_for(work, kit, 1 if quick else KILLS_FULL[kit], rng) for kit in kits]
    rows += [disk_full(work, case) for case in DISK_CASES[: 1 if quick else None]]
    return rows


if __name__ == "__main__":
    part_main(__doc__, run)
