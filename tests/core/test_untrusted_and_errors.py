"""Export folders from elsewhere run no code and name no outside file; expected failures
(unreadable files, foreign exports, bad checkpoints) are one line, with --debug for more."""

from __future__ import annotations

import ast
import errno
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from e2ekit.core import builders
from e2ekit.core.builders import (
    E2EKIT_TORCH_BUILDERS,
    UnsafeExportError,
    is_registered,
    register_torch_builder,
)
from e2ekit.core.engine.checkpoint import load_checkpoint
from e2ekit.core.errors import CheckpointError, ConfigError
from e2ekit.core.infer import Predictor
from e2ekit.core.state_fit import load_state_strict, state_mismatch

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "toy" / "tiny.yaml")
PROBE = "e2ekit_untrusted_probe"  # a module an export folder names; importing it leaves a mark


def copy_export(toy: dict[str, Path], dest: Path, **changes: object) -> Path:
    """A copy of the toy export whose deploy.yaml has ``changes`` applied (``a__b`` is the
    nested key ``a.b``)."""
    folder = dest / "export"
    shutil.copytree(toy["export"], folder)
    deploy = yaml.safe_load((folder / "deploy.yaml").read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = deploy
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (folder / "deploy.yaml").write_text(yaml.safe_dump(deploy))
    return folder


def error_line(err: str, *needles: str) -> str:
    """The one ``error:`` line of a failed command (no traceback), checked for ``needles``."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- untrusted export folders -------------------------------------------------------------------
@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable module whose import writes a marker file (and whose builder would too)."""
    mark = tmp_path / "imported"
    code = f"from pathlib import Path\nPath({str(mark)!r}).touch()\ndef build(**kw):\n    pass\n"
    (tmp_path / f"{PROBE}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, PROBE, raising=False)
    monkeypatch.setattr(builders, "_registered", set(builders._registered))  # undo registrations
    return mark


def test_unregistered_builder_is_refused_before_any_import(toy, probe, cli, tmp_path) -> None:
    folder = copy_export(toy, tmp_path, torch__builder=f"{PROBE}:build")
    with pytest.raises(UnsafeExportError, match="not a builder registered by e2ekit"):
        Predictor(folder, backend="torch")
    code, _, err = cli(
        "toy", "predict", "--model", folder, "--input", toy["rows"], "--backend", "torch"
    )
    assert code == 1
    error_line(err, f"{PROBE}:build", "deploy.yaml")
    # bench runs every variant by default: the torch one is skipped, the others still run
    code, out, _ = cli("toy", "bench", "--model", folder, "--seconds", "0.01", "--batch-sizes", "1")
    assert code == 0
    summary = __import__("json").loads(out.strip().splitlines()[-1])
    assert "not a builder registered" in summary["skipped"]["torch"]
    assert "onnxruntime_fp32" in summary["results"]
    assert not probe.exists() and PROBE not in sys.modules


def test_registered_builder_loads_and_programs_may_register_their_own(toy, probe, tmp_path) -> None:
    assert Predictor(toy["export"], backend="torch").backend_name == "torch"
    folder = copy_export(toy, tmp_path, torch__builder=f"{PROBE}:build")
    register_torch_builder(f"{PROBE}:build")  # code (not a folder) vouches for it
    with pytest.raises(AttributeError):  # now imported and called: its None has no load
        Predictor(folder, backend="torch")
    assert probe.exists()


def test_every_kit_builder_is_registered_and_exists() -> None:
    """Each ``torch_builder="..."`` a kit records is on the allow-list, and each entry names a
    function of that module (read from the source: nothing is imported)."""
    named = set()
    for path in (ROOT / "src" / "e2ekit").rglob("*.py"):
        named |= set(re.findall(r'torch_builder="([^"]+)"', path.read_text(encoding="utf-8")))
    assert named and all(is_registered(name) for name in named), named
    for dotted in E2EKIT_TORCH_BUILDERS.values():
        module, _, func = dotted.partition(":")
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, dotted
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, dotted


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("model_file", "../../etc/x.onnx"),
        ("model_file", "/etc/passwd"),
        ("model_file", "outside.onnx"),  # a link leading out of the folder
        ("sparse__dir", "../shared"),
    ],
)
def test_files_an_export_names_stay_inside_it(toy, cli, tmp_path, key: str, name: str) -> None:
    folder = copy_export(toy, tmp_path, **{key: name})
    if name == "outside.onnx":
        (folder / name).symlink_to(toy["export"] / "model.onnx")  # another folder's model
    with pytest.raises(UnsafeExportError, match="outside the export folder"):
        Predictor(folder)
    code, _, err = cli("toy", "predict", "--model", folder, "--input", toy["rows"])
    assert code == 1
    error_line(err, key.replace("__", "."), "outside the export folder")


def test_a_checkpoint_only_path_in_an_export_is_not_followed(toy, tmp_path) -> None:
    folder = copy_export(toy, tmp_path, tokenizer_source="/somewhere/else")
    assert "tokenizer_source" not in Predictor(folder).deploy


# -- one-line errors ----------------------------------------------------------------------------
def test_non_utf8_config_and_data_name_file_and_line(toy, cli, tmp_path) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes(b"_base_: " + TINY.encode() + b"\nmodel:\n  hidden: 8  # caf\xe9\n")
    code, _, err = cli("toy", "train", "-c", config, "--out", tmp_path / "run")
    assert code == 1
    error_line(err, f"{config}:3", "not UTF-8")
    with pytest.raises(ConfigError, match=r":3: not UTF-8"):
        from e2ekit.core.config import load_yaml_tree

        load_yaml_tree(config)

    rows = tmp_path / "rows.csv"
    rows.write_bytes(toy["rows"].read_bytes() + b"1,2\xff\n")
    code, _, err = cli("toy", "predict", "--model", toy["export"], "--input", rows)
    assert code == 1
    error_line(err, f"{rows}:4", "not UTF-8")


def test_unwritable_output_is_one_line(toy, cli, tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = cli(
        "toy", "predict", "--model", toy["export"], "--input", toy["rows"], "--out", blocker / "x"
    )
    assert code == 1
    error_line(err, str(blocker / "x"), "Not a directory")

    read_only = tmp_path / "read-only"
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if read_only in (self, *self.parents):  # what a folder without write access answers
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    for argv in (
        ("toy", "train", "-c", TINY, "-o", "train.max_steps=1"),
        ("toy", "eval", "--weights", toy["run"]),
        ("toy", "predict", "--model", toy["export"], "--input", toy["rows"]),
    ):
        code, _, err = cli(*argv, "--out", read_only / "out")
        assert code == 1, argv
        error_line(err, str(read_only / "out"), "Permission denied")


def test_garbage_onnx_model_is_one_line(toy, cli, tmp_path) -> None:
    folder = copy_export(toy, tmp_path)
    (folder / "model.onnx").write_bytes(np.random.default_rng(0).bytes(300))
    for verb, extra in (("predict", ["--input", toy["rows"]]), ("bench", ["--seconds", "0.01"])):
        code, _, err = cli("toy", verb, "--model", folder, *extra)
        assert code == 1
        error_line(err, f"not a valid ONNX model: {folder / 'model.onnx'}")


def test_export_error_is_one_line(toy, cli, monkeypatch) -> None:
    from e2ekit.core import shared_verbs
    from e2ekit.core.export.errors import ExportError

    def failing_export(kit: object, args: object) -> dict:
        raise ExportError("ONNX parity failed: output 'probs' max_abs_diff=0.5 (atol=0.0001)")

    monkeypatch.setattr(shared_verbs, "cmd_export", failing_export)
    code, _, err = cli("toy", "export", "--weights", toy["run"])
    assert code == 1
    error_line(err, "export failed: ONNX parity failed: output 'probs'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_eval_on_cuda_without_a_gpu_fails_before_reading_weights(cli, tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    code, _, err = cli("toy", "eval", "-c", TINY, "-o", "device=cuda", "--weights", junk)
    assert code == 1
    error_line(err, "device=cuda", "no usable CUDA device")


@pytest.mark.parametrize("verb", ["predict", "serve", "bench"])
def test_an_export_of_another_kit_is_refused_up_front(toy, cli, verb: str) -> None:
    extra = ["--input", toy["rows"]] if verb == "predict" else []
    code, _, err = cli("seg", verb, "--model", toy["export"], *extra)
    assert code == 1
    error_line(err, f"this export is a toy model; use `e2ekit toy {verb}`")


def test_det_model_num_classes_names_the_key() -> None:
    from e2ekit.core.config import load_config
    from e2ekit.core.paths import resolve_config
    from e2ekit.det.config import DetConfig
    from e2ekit.det.task import DetTask

    cfg = load_config(resolve_config("det", "quick"), DetConfig, ["model.num_classes=3"])
    with pytest.raises(ConfigError, match=r"^model\.num_classes: set data\.num_classes"):
        DetTask(cfg).build_detector()


def test_debug_flag_and_env_show_the_traceback(toy, cli, tmp_path, monkeypatch) -> None:
    folder = copy_export(toy, tmp_path)
    (folder / "model.onnx").write_bytes(b"not a model")
    argv = ("toy", "predict", "--model", folder, "--input", toy["rows"])
    code, _, err = cli("--debug", *argv)
    assert code == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error:")
    monkeypatch.setenv("E2EKIT_DEBUG", "1")
    code, _, err = cli(*argv)
    assert code == 1 and "Traceback" in err


def test_a_bug_keeps_its_traceback(toy, cli, monkeypatch) -> None:
    from e2ekit.core import verbs

    def broken(kit: object, args: object) -> object:
        raise KeyError("a bug, not the user's input")

    monkeypatch.setattr(verbs, "make_predictor", broken)
    with pytest.raises(KeyError):
        cli("toy", "predict", "--model", toy["export"], "--input", toy["rows"])


# -- checkpoints --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content", [np.random.default_rng(1).bytes(200), b"hello, world\n", b""], ids=str
)
def test_a_file_that_is_no_checkpoint_says_so(tmp_path, content: bytes) -> None:
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not an e2ekit checkpoint (")
    assert "weights_only" not in message and "\n" not in message


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("unpickled",))


def test_a_checkpoint_with_code_names_it_and_gives_no_unsafe_advice(tmp_path) -> None:
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "refused to load" in message and "it names print" in message
    assert "weights_only" not in message and "allowlist" not in message


def test_state_dict_mismatch_names_keys_and_shapes(toy, cli) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = {k: v for k, v in nn.Sequential(nn.Linear(4, 5)).state_dict().items()}
    state["extra.bias"] = torch.zeros(1)
    why = state_mismatch(model, state)
    assert "missing keys 1.weight, 1.bias" in why and "unexpected keys extra.bias" in why
    assert "0.weight is [5, 4] in the checkpoint, [3, 4] in the model (+1 more)" in why
    with pytest.raises(CheckpointError, match=r"^w\.pt does not fit this model config: missing"):
        load_state_strict(model, state, "w.pt")

    code, _, err = cli("toy", "eval", "--weights", toy["run"], "-o", "model.hidden=5")
    assert code == 1
    error_line(err, f"--weights {toy['run']} does not fit", "in the checkpoint", "in the model")
