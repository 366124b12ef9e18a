"""Bad inputs at the command line, as a clumsy or hostile user gives them.

Each case runs one failing ``e2ekit`` command in its own folder and checks three promises:
it fails (non-zero exit), the error is one line with no traceback, and it leaves no partial
output: nothing in its folder or in the trained runs and exports it read is added, removed or
rewritten.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reliability.common import KITS, Built, Row, build, changes, e2ekit, one_line_error, part_main
from reliability.common import snapshot as take_snapshot

TEXT_TRAIN = "text_a\tlabel\ngood\tpos\nbad\tneg\n"
TEXT_DEV = "text_a\tlabel\nfine\tmaybe\n"

Prepare = Callable[[Path, dict[str, Built]], list[object]]


@dataclass(frozen=True)
class Case:
    """A failing command: ``make(folder, built)`` writes its inputs and returns its argv."""

    kit: str
    name: str
    make: Prepare
    needle: str = ""  # a word the error line must contain (the file, key or limit it names)


def png_header_bomb(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width x height`` pixels (all-zero rows)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # a few rows; the header is what counts
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def good_png(path: Path, size: int = 64, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def broken_export(folder: Path, b: Built, **files: bytes | str) -> Path:
    """A copy of ``b``'s export with some files replaced."""
    dest = folder / "export"
    shutil.copytree(b.export, dest)
    for name, data in files.items():
        write(dest / name.replace("__", "."), data)
    return dest


def valid_input(folder: Path, kit: str) -> Path:
    """A small valid predict input for ``kit``."""
    if kit == "toy":
        rows = np.random.default_rng(0).normal(size=(4, 16))
        return write(folder / "rows.csv", "\n".join(",".join(map(str, r)) for r in rows))
    if kit in ("seg", "det"):
        images = folder / "images"
        images.mkdir()
        good_png(images / "a.png")
        return images
    if kit == "text":
        return write(folder / "texts.txt", "a good film\nnot good at all\n")
    row = "\t".join(["1", *["3"] * 13, *["a1b2c3d4"] * 26])
    return write(folder / "rows.tsv", row + "\n")


def generic_cases(kit: str) -> list[Case]:
    """Failures every kit must handle the same way."""

    def cfg(b: dict[str, Built]) -> str:
        return str(b[kit].config)

    other = "ctr" if kit != "ctr" else "toy"
    return [
        Case(
            kit,
            "train: config missing",
            lambda f, b: [kit, "train", "-c", f / "nope.yaml", "--out", f / "run"],
            "nope.yaml",
        ),
        Case(
            kit,
            "train: unknown key",
            lambda f, b: [
                kit,
                "train",
                "-c",
                cfg(b),
                "-o",
                "model.no_such_key=1",
                "--out",
                f / "run",
            ],
            "no_such_key",
        ),
        Case(
            kit,
            "train: config not UTF-8",
            lambda f, b: [
                kit,
                "train",
                "-c",
                write(f / "latin.yaml", "model: {type: caf\xe9}".encode("latin-1")),
                "--out",
                f / "run",
            ],
            "latin.yaml",
        ),
        Case(
            kit,
            "train: YAML tag",
            lambda f, b: [
                kit,
                "train",
                "-c",
                write(
                    f / "tag.yaml",
                    f"_base_: {cfg(b)}\nmodel: !!python/object/apply:os.system ['touch pwned']\n",
                ),
                "--out",
                f / "run",
            ],
            "tag.yaml",
        ),
        Case(
            kit,
            "train: over a finished run",
            lambda f, b: [kit, "train", "-c", cfg(b), "--out", b[kit].run],
            "--resume",
        ),
        Case(
            kit,
            "eval: random-bytes checkpoint",
            lambda f, b: [
                kit,
                "eval",
                "-c",
                cfg(b),
                "--weights",
                write(f / "junk.pt", np.random.default_rng(1).bytes(4096)),
            ],
            "junk.pt",
        ),
        Case(
            kit,
            "eval: checkpoint missing",
            lambda f, b: [kit, "eval", "-c", cfg(b), "--weights", f / "gone.pt"],
            "gone.pt",
        ),
        Case(
            kit,
            "export: onto an existing file",
            lambda f, b: [
                kit,
                "export",
                "-c",
                cfg(b),
                "--weights",
                b[kit].run / "best.pt",
                "--out",
                write(f / "taken", "mine"),
            ],
            "taken",
        ),
        Case(
            kit,
            "export: truncated checkpoint",
            lambda f, b: [
                kit,
                "export",
                "-c",
                cfg(b),
                "--weights",
                write(f / "half.pt", (b[kit].run / "best.pt").read_bytes()[:2000]),
                "--out",
                f / "export",
            ],
            "half.pt",
        ),
        Case(
            kit,
            "predict: input missing",
            lambda f, b: [
                kit,
                "predict",
                "--model",
                b[kit].export,
                "--input",
                f / "absent",
                "--out",
                f / "pred",
            ],
            "absent",
        ),
        Case(
            kit,
            "predict: garbage model.onnx",
            lambda f, b: [
                kit,
                "predict",
                "--model",
                broken_export(f, b[kit], model__onnx=b"not an onnx model"),
                "--input",
                valid_input(f, kit),
                "--out",
                f / "pred",
            ],
            "model.onnx",
        ),
        Case(
            kit,
            "predict: another kit's export",
            lambda f, b: [
                kit,
                "predict",
                "--model",
                b[other].export,
                "--input",
                valid_input(f, kit),
                "--out",
                f / "pred",
            ],
            other,
        ),
        Case(
            kit,
            "predict: --out is a file",
            lambda f, b: [
                kit,
                "predict",
                "--model",
                b[kit].export,
                "--input",
                valid_input(f, kit),
                "--out",
                write(f / "pred.txt", "mine"),
            ],
            "pred.txt",
        ),
        Case(
            kit,
            "predict: device cuda, no GPU",
            lambda f, b: [
                kit,
                "predict",
                "--model",
                b[kit].export,
                "--input",
                valid_input(f, kit),
                "--out",
                f / "pred",
                "--device",
                "cuda",
            ],
            "cuda",
        ),
        Case(
            kit,
            "predict: foreign builder",
            lambda f, b: [
                kit,
                "predict",
                "--model",
                foreign_builder_export(f, b[kit]),
                "--backend",
                "torch",
                "--input",
                valid_input(f, kit),
                "--out",
                f / "pred",
            ],
            "builder",
        ),
        Case(
            kit,
            "bench: garbage model.onnx",
            lambda f, b: [
                kit,
                "bench",
                "--model",
                broken_export(f, b[kit], model__onnx=b"\x00" * 64),
            ],
            "model.onnx",
        ),
        Case(
            kit,
            "serve: model folder missing",
            lambda f, b: [kit, "serve", "--model", f / "no_export"],
            "no_export",
        ),
    ]


def foreign_builder_export(folder: Path, b: Built) -> Path:
    """An export whose deploy.yaml names a builder e2ekit never registered."""
    import yaml

    deploy = yaml.safe_load((b.export / "deploy.yaml").read_text())
    deploy.setdefault("torch", {})["builder"] = "os:system"
    return broken_export(folder, b, deploy__yaml=yaml.safe_dump(deploy))


def kit_cases() -> list[Case]:
    """Failures of one kit's own inputs."""

    def images_with_a_corrupt_one(f: Path) -> Path:
        images = f / "images"
        images.mkdir()
        for i in range(3):
            good_png(images / f"a{i}.png", seed=i)
        write(images / "b_corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
        return images

    def bomb(f: Path) -> Path:
        return write(f / "images" / "bomb.png", png_header_bomb(40000, 40000))

    def seg_root_with_corrupt_image(f: Path) -> Path:
        root = f / "segdata"
        write(root / "img.png", b"not a png at all")
        from PIL import Image

        (root / "lab.png").parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "lab.png")
        write(root / "train.txt", "img.png lab.png\n")
        write(root / "val.txt", "img.png lab.png\n")
        return root

    return [
        Case(
            "toy",
            "predict: NaN row",
            lambda f, b: [
                "toy",
                "predict",
                "--model",
                b["toy"].export,
                "--input",
                write(f / "nan.csv", ",".join(["nan"] * 16) + "\n"),
                "--out",
                f / "pred",
            ],
            "nan.csv",
        ),
        Case(
            "toy",
            "predict: short row",
            lambda f, b: [
                "toy",
                "predict",
                "--model",
                b["toy"].export,
                "--input",
                write(f / "short.csv", ",".join(["0.5"] * 16) + "\n1,2\n"),
                "--out",
                f / "pred",
            ],
            "short.csv:2",
        ),
        Case(
            "seg",
            "predict: a corrupt image among good ones",
            lambda f, b: [
                "seg",
                "predict",
                "--model",
                b["seg"].export,
                "--input",
                images_with_a_corrupt_one(f),
                "--out",
                f / "pred",
            ],
            "b_corrupt.png",
        ),
        Case(
            "seg",
            "predict: image bomb",
            lambda f, b: [
                "seg",
                "predict",
                "--model",
                b["seg"].export,
                "--input",
                bomb(f),
                "--out",
                f / "pred",
            ],
            "bomb.png",
        ),
        Case(
            "seg",
            "train: corrupt image at step 0",
            lambda f, b: [
                "seg",
                "train",
                "-c",
                b["seg"].config,
                "-o",
                f"data.root={seg_root_with_corrupt_image(f)}",
                "--out",
                f / "run",
            ],
            "img.png",
        ),
        Case(
            "det",
            "predict: a corrupt image among good ones",
            lambda f, b: [
                "det",
                "predict",
                "--model",
                b["det"].export,
                "--input",
                images_with_a_corrupt_one(f),
                "--out",
                f / "pred",
            ],
            "b_corrupt.png",
        ),
        Case(
            "det",
            "predict: image bomb",
            lambda f, b: [
                "det",
                "predict",
                "--model",
                b["det"].export,
                "--input",
                bomb(f),
                "--out",
                f / "pred",
            ],
            "bomb.png",
        ),
        Case(
            "text",
            "predict: input not UTF-8",
            lambda f, b: [
                "text",
                "predict",
                "--model",
                b["text"].export,
                "--input",
                write(f / "latin.txt", "caf\xe9 au lait\n".encode("latin-1")),
                "--out",
                f / "pred",
            ],
            "latin.txt",
        ),
        Case(
            "text",
            "train: label not in the label list",
            lambda f, b: [
                "text",
                "train",
                "-c",
                b["text"].config,
                "-o",
                "data.train=" + str(write(f / "train.tsv", TEXT_TRAIN)),
                "-o",
                "data.dev=" + str(write(f / "dev.tsv", TEXT_DEV)),
                "--out",
                f / "run",
            ],
            "dev.tsv",
        ),
        Case(
            "ctr",
            "predict: header-only file",
            lambda f, b: [
                "ctr",
                "predict",
                "--model",
                b["ctr"].export,
                "--input",
                write(f / "empty.tsv", ""),
                "--out",
                f / "pred",
            ],
            "empty.tsv",
        ),
        Case(
            "ctr",
            "predict: every row malformed",
            lambda f, b: [
                "ctr",
                "predict",
                "--model",
                b["ctr"].export,
                "--input",
                write(f / "bad.tsv", "x\ty\n1\t2\t3\n"),
                "--out",
                f / "pred",
            ],
            "bad.tsv",
        ),
        Case(
            "ctr",
            "train: no valid row",
            lambda f, b: [
                "ctr",
                "train",
                "-c",
                b["ctr"].config,
                "-o",
                "data.train=" + str(write(f / "bad.tsv", "x\ty\n" * 10)),
                "--out",
                f / "run",
            ],
            "bad.tsv",
        ),
    ]


def all_cases(kits: tuple[str, ...]) -> list[Case]:
    return [c for k in kits for c in generic_cases(k)] + [c for c in kit_cases() if c.kit in kits]


def check(work: Path, case: Case, built: dict[str, Built], index: int) -> list[str]:
    """Run one case; the promises it broke (empty when it held)."""
    folder = work / "cases" / f"{index:03d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    argv = case.make(folder, built)
    watched = [folder, *(p for b in built.values() for p in (b.run, b.export))]
    before = take_snapshot(*watched)
    proc = e2ekit(work, argv, cwd=folder, timeout=300)
    broken: list[str] = []
    if proc.returncode == 0:
        broken.append("exit 0")
    if not one_line_error(proc.stderr):
        broken.append("traceback" if "Traceback" in proc.stderr else "not one line")
    elif case.needle and case.needle not in proc.stderr:
        broken.append(f"error does not name {case.needle!r}")
    left = changes(before, *watched)
    if left:
        broken.append("partial output: " + ", ".join(p.replace(str(folder), "") for p in left[:4]))
    if (folder / "pwned").exists():
        broken.append("ran code from a YAML tag")
    if broken:
        last = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else [""]
        broken.append(f"stderr: {last[0][:200]}")
    return broken


def run(work: Path, quick: bool = False, jobs: int = 2) -> list[Row]:
    kits = ("toy", "ctr") if quick else KITS
    built = {k: build(work, k) for k in sorted({*kits, "toy", "ctr"})}
    cases = all_cases(kits)
    # two at a time: each case is mostly a fresh interpreter importing torch
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda ic: check(work, ic[1], built, ic[0]), enumerate(cases)))
    rows = []
    for kit in kits:
        mine = [(c, broken) for c, broken in zip(cases, results, strict=True) if c.kit == kit]
        notes = [f"{c.name}: " + "; ".join(broken) for c, broken in mine if broken]
        tracebacks = sum(any(b in ("traceback", "not one line") for b in br) for _, br in mine)
        partial = sum(any(b.startswith("partial output") for b in br) for _, br in mine)
        held = sum(not br for _, br in mine)
        figures = {"cases": len(mine), "held": held, "tracebacks": tracebacks, "partial": partial}
        rows.append(Row("bad-input", kit, figures, ok=held == len(mine), notes=notes))
    return rows


if __name__ == "__main__":
    part_main(__doc__, run)
