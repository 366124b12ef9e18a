"""Folders and files from someone else: exports whose deploy.yaml names files outside the
folder or builders e2ekit never registered, YAML tags, pickled code in checkpoints and ONNX
external data that points outside the export.

Every case must be refused with one line, and no code it carries may run: each hostile
payload would create a marker file, which must never appear.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from reliability.common import Built, Row, build, e2ekit, one_line_error, part_main

PROBE_MODULE = "e2ekit_hostile_probe"
# bench measures every runtime it can: a refused torch builder drops only the torch row
WARN_AND_SKIP = {"foreign builder via bench": "is not a builder registered by e2ekit"}


def probe_module(folder: Path, mark: Path) -> Path:
    """A module that leaves ``mark`` when imported (as a foreign builder would be)."""
    src = folder / "probe_path"
    src.mkdir(parents=True, exist_ok=True)
    (src / f"{PROBE_MODULE}.py").write_text(
        f"from pathlib import Path\nPath({str(mark)!r}).touch()\n"
        "def build(**kw):\n    raise SystemExit('ran')\n"
    )
    return src


class _Marks:
    """A pickled object whose unpickling would create the marker file."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.mark,))


def export_copy(folder: Path, b: Built, edit: Callable[[dict], None] | None = None) -> Path:
    dest = folder / "export"
    shutil.copytree(b.export, dest, symlinks=True)
    if edit is not None:
        deploy = yaml.safe_load((dest / "deploy.yaml").read_text())
        edit(deploy)
        (dest / "deploy.yaml").write_text(yaml.safe_dump(deploy))
    return dest


def setter(dotted: str, value: object) -> Callable[[dict], None]:
    def edit(deploy: dict) -> None:
        *parents, last = dotted.split(".")
        node = deploy
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


def external_data_escape(folder: Path, b: Built, secret: Path) -> Path:
    """An export whose model.onnx keeps a weight in 'external data' outside the folder."""
    import onnx
    from onnx import numpy_helper

    dest = export_copy(folder, b)
    model = onnx.load(str(dest / "model.onnx"))
    init = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    secret.write_bytes(numpy_helper.to_array(init).tobytes())
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", f"../{secret.name}"), ("offset", "0")):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    (dest / "model.onnx").write_bytes(model.SerializeToString())
    return dest


def cases(
    work: Path, built: dict[str, Built], mark: Path
) -> list[tuple[str, Callable[[Path], tuple[list[object], dict[str, str]]]]]:
    toy, ctr = built["toy"], built["ctr"]
    rows = work / "rows.csv"
    rows.write_text(",".join(["0.5"] * 16) + "\n")
    probe_env = {"PYTHONPATH": ""}  # filled per case: the probe module's folder comes first

    def predict(model: Path, *extra: object) -> list[object]:
        return [
            "toy",
            "predict",
            "--model",
            model,
            "--input",
            rows,
            "--out",
            model.parent / "pred",
            *extra,
        ]

    def with_probe(f: Path) -> dict[str, str]:
        from reliability.common import base_env

        path = base_env(work)["PYTHONPATH"]
        return {**probe_env, "PYTHONPATH": f"{probe_module(f, mark)}:{path}"}

    def pickled_checkpoint(f: Path) -> Path:
        import torch

        ckpt = torch.load(toy.run / "best.pt", weights_only=True)
        ckpt["extra"] = _Marks(mark)
        torch.save(ckpt, f / "evil.pt")
        return f / "evil.pt"

    return [
        (
            "model_file ../ escape",
            lambda f: (predict(export_copy(f, toy, setter("model_file", "../../etc/x.onnx"))), {}),
        ),
        (
            "model_file absolute",
            lambda f: (predict(export_copy(f, toy, setter("model_file", "/etc/passwd"))), {}),
        ),
        ("model_file symlink out", lambda f: (predict(symlinked(f, toy)), {})),
        (
            "sparse.dir escape (ctr)",
            lambda f: (
                ["ctr", "bench", "--model", export_copy(f, ctr, setter("sparse.dir", "../.."))],
                {},
            ),
        ),
        (
            "foreign builder: os:system",
            lambda f: (
                predict(
                    export_copy(f, toy, setter("torch.builder", "os:system")), "--backend", "torch"
                ),
                {},
            ),
        ),
        (
            "foreign builder: importable probe",
            lambda f: (
                predict(
                    export_copy(f, toy, setter("torch.builder", f"{PROBE_MODULE}:build")),
                    "--backend",
                    "torch",
                ),
                with_probe(f),
            ),
        ),
        (
            "foreign builder via bench",
            lambda f: (
                [
                    "toy",
                    "bench",
                    "--model",
                    export_copy(f, toy, setter("torch.builder", f"{PROBE_MODULE}:build")),
                ],
                with_probe(f),
            ),
        ),
        ("deploy.yaml python tag", lambda f: (predict(tagged_deploy(f, toy, mark)), {})),
        (
            "config python tag",
            lambda f: (["toy", "train", "-c", tagged_config(f, mark), "--out", f / "run"], {}),
        ),
        (
            "deploy.yaml not a mapping",
            lambda f: (predict(replaced(f, toy, "deploy.yaml", "- just\n- a list\n")), {}),
        ),
        (
            "pickled code in checkpoint (eval)",
            lambda f: (["toy", "eval", "--weights", pickled_checkpoint(f)], {}),
        ),
        (
            "pickled code in checkpoint (export)",
            lambda f: (
                ["toy", "export", "--weights", pickled_checkpoint(f), "--out", f / "exp"],
                {},
            ),
        ),
        (
            "onnx external data outside",
            lambda f: (predict(external_data_escape(f, toy, f / "secret.bin")), {}),
        ),
    ]


def symlinked(folder: Path, b: Built) -> Path:
    dest = export_copy(folder, b, setter("model_file", "outside.onnx"))
    (dest / "outside.onnx").symlink_to(b.export / "model.onnx")
    return dest


def tagged_deploy(folder: Path, b: Built, mark: Path) -> Path:
    dest = export_copy(folder, b)
    text = (dest / "deploy.yaml").read_text()
    (dest / "deploy.yaml").write_text(
        text
        + "extra: !!python/object/apply:pathlib.Path.touch "
        + f"[!!python/object/apply:pathlib.Path [{str(mark)!r}]]\n"
    )
    return dest


def tagged_config(folder: Path, mark: Path) -> Path:
    path = folder / "tagged.yaml"
    path.write_text(f"model: !!python/object/apply:os.system ['touch {mark}']\n")
    return path


def replaced(folder: Path, b: Built, name: str, text: str) -> Path:
    dest = export_copy(folder, b)
    (dest / name).write_text(text)
    return dest


def run(work: Path, quick: bool = False) -> list[Row]:
    built = {k: build(work, k) for k in ("toy", "ctr")}
    mark = work / "untrusted" / "CODE_RAN"
    notes, refused, ran = [], 0, 0
    all_cases = cases(work, built, mark)
    if quick:
        all_cases = all_cases[:4] + all_cases[-3:]
    for i, (name, make) in enumerate(all_cases):
        folder = work / "untrusted" / f"{i:02d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        mark.unlink(missing_ok=True)
        argv, env = make(folder)
        proc = e2ekit(work, argv, cwd=folder, env=env, timeout=300)
        problems = []
        if mark.exists():
            ran += 1
            problems.append("CODE RAN")
        if proc.returncode == 0 and name in WARN_AND_SKIP:
            if WARN_AND_SKIP[name] not in proc.stderr:
                problems.append("ran without saying what it skipped")
        elif proc.returncode == 0:
            problems.append("accepted")
        elif not one_line_error(proc.stderr):
            problems.append("not a one-line error")
        if problems:
            tail = proc.stderr.strip().splitlines()[-1:] or [""]
            notes.append(f"{name}: {', '.join(problems)}; stderr: {tail[0][:200]}")
        else:
            refused += 1
    total = len(all_cases)
    figures = {"cases": total, "refused": refused, "code_ran": ran}
    return [
        Row("untrusted", "exports+ckpts", figures, ok=refused == total and ran == 0, notes=notes)
    ]


if __name__ == "__main__":
    part_main(__doc__, run)
