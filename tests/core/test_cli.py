"""The CLI end to end on the toy kit: every verb, error messages, exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ..conftest import ROOT, run_subprocess

TINY = str(ROOT / "configs" / "toy" / "tiny.yaml")


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from e2ekit.core.cli import main

    run = tmp_path_factory.mktemp("toy") / "run"
    assert main(["toy", "train", "-c", TINY, "--out", str(run), "-o", "train.epochs=3"]) == 0
    return run


def test_train_writes_the_run_folder(trained: Path) -> None:
    names = {p.name for p in trained.iterdir()}
    assert {
        "config.yaml",
        "best.pt",
        "last.pt",
        "metrics.json",
        "metrics.jsonl",
        "train.log",
        "tb",
    } <= names
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["best_metric"] == "accuracy" and 0 <= metrics["accuracy"] <= 1


def test_eval_prints_metrics_last(cli, trained: Path) -> None:
    code, out, _ = cli("toy", "eval", "--weights", trained / "best.pt")
    assert code == 0
    metrics = last_json(out)
    best = json.loads((trained / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(best["accuracy"])


def test_export_predict_and_int8(cli, trained: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    code, out, err = cli("toy", "export", "--weights", trained, "--out", export, "--quantize")
    assert code == 0, err
    summary = last_json(out)
    assert summary["max_abs_diff"] < 1e-4
    assert summary["int8_max_abs_diff"] > 0
    report = json.loads((export / "export_report.json").read_text())
    assert report["onnx"]["passed"] and "int8" in report
    rows = np.random.default_rng(0).normal(size=(10, 16))
    inp = tmp_path / "rows.csv"
    inp.write_text("\n".join(",".join(map(str, r)) for r in rows))
    outs = {}
    for backend in ("onnxruntime", "torch"):
        pred_dir = tmp_path / f"pred_{backend}"
        code, out, err = cli(
            "toy",
            "predict",
            "--model",
            export,
            "--backend",
            backend,
            "--input",
            inp,
            "--out",
            pred_dir,
        )
        assert code == 0, err
        lines = (pred_dir / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 10
        outs[backend] = np.array([json.loads(x)["scores"] for x in lines])
    np.testing.assert_allclose(outs["onnxruntime"], outs["torch"], atol=1e-5)
    code, out, err = cli(
        "toy",
        "predict",
        "--weights",
        trained / "best.pt",
        "--input",
        inp,
        "--out",
        tmp_path / "pred_ckpt",
    )
    assert code == 0, err
    ckpt_scores = [
        json.loads(x)["scores"]
        for x in (tmp_path / "pred_ckpt" / "predictions.jsonl").read_text().splitlines()
    ]
    np.testing.assert_allclose(np.array(ckpt_scores), outs["torch"], atol=1e-5)


def test_predict_bad_input_names_file_and_line(cli, trained: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(["0.1"] * 16) + "\n1,2,3\n")
    out_dir = tmp_path / "pred"
    code, _, err = cli("toy", "predict", "--weights", trained, "--input", bad, "--out", out_dir)
    assert code == 1
    assert f"{bad}:2" in err and "expected 16" in err
    assert not (out_dir / "predictions.jsonl").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_and_shuts_down_gracefully(cli, trained: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    assert cli("toy", "export", "--weights", trained, "--out", export)[0] == 0
    port = _free_port()
    env = {**os.environ, "E2EKIT_NO_PROGRESS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "e2ekit",
            "toy",
            "serve",
            "--model",
            str(export),
            "--port",
            str(port),
            "-o",
            "serve.max_batch_size=8",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        r = httpx.post(f"{url}/predict", json={"inputs": [[0.0] * 16, [1.0] * 16]}, timeout=10)
        assert r.status_code == 200
        preds = r.json()["predictions"]
        assert len(preds) == 2 and abs(sum(preds[0]["scores"]) - 1) < 1e-4
        bad = httpx.post(f"{url}/predict", json={"inputs": [[0.0] * 3]}, timeout=10)
        assert bad.status_code == 422 and "expected 16" in bad.text
        assert httpx.get(f"{url}/health", timeout=5).json()["kit"] == "toy"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    # uvicorn re-raises the caught SIGTERM after its graceful shutdown completes.
    assert proc.returncode in (0, -signal.SIGTERM), output[-2000:]
    assert "serving on" in output and "serve: stopped" in output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["tyo", "train"], "did you mean 'toy'"),
        (["toy", "trian"], "did you mean 'train'"),
        (["toy", "train", "--otu", "x"], "did you mean '--out'"),
        (["confgs"], "did you mean 'configs'"),
    ],
)
def test_unknown_kit_verb_flag_suggest(cli, args: list[str], needle: str) -> None:
    code, _, err = cli(*args)
    assert code != 0
    assert needle in err
    assert len(err.strip().splitlines()) == 1


def test_announced_kit_not_built_yet(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from e2ekit.core import kit

    monkeypatch.setitem(kit.KITS, "det", None)  # every public kit is built now: fake one
    code, _, err = cli("det", "train")
    assert code != 0 and "not in this build yet" in err and "available now: text, seg" in err
    assert "#" not in err and "det," not in err


SHARED = ["train", "eval", "export", "predict", "serve", "bench"]


def _verbs_listed(help_text: str) -> list[str]:
    block = help_text.split("verbs:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in block.splitlines()]


def test_kit_help_lists_exactly_its_verbs(cli) -> None:
    code, out, _ = cli("det", "-h")
    assert code == 0
    assert _verbs_listed(out) == [*SHARED, "preview", "convert", "split", "anchors"]
    code, out, _ = cli("seg", "-h")
    assert code == 0 and _verbs_listed(out) == [*SHARED, "convert", "split"]
    code, out, _ = cli("text", "-h")
    assert code == 0 and _verbs_listed(out) == [*SHARED, "distill"]
    code, out, _ = cli("toy", "--help")
    assert code == 0 and _verbs_listed(out) == SHARED
    code, out, _ = cli("det", "anchors", "-h")
    assert code == 0 and "--per-level" in out and "verbs of det:" in out and "anchors" in out


@pytest.mark.parametrize(
    ("args", "needle", "verbs"),
    [
        (["seg", "anchors"], "e2ekit seg has no verb 'anchors'", [*SHARED, "convert", "split"]),
        (["seg", "distill"], "e2ekit seg has no verb 'distill'", [*SHARED, "convert", "split"]),
        (["toy"], "missing verb: e2ekit toy <verb>", SHARED),
    ],
)
def test_missing_or_other_kits_verb_names_this_kits_verbs(
    cli, args: list[str], needle: str, verbs: list[str]
) -> None:
    code, _, err = cli(*args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert err.strip().endswith("verbs: " + ", ".join(verbs))


def test_usage_points_to_kit_help_and_names_no_kit_verb() -> None:
    from e2ekit.core.cli import USAGE

    assert "e2ekit <kit> -h" in USAGE
    assert not {"distill", "preview", "convert", "anchors"} & set(USAGE.replace(",", " ").split())


KIT_ONLY = re.compile(
    r"""["'](preview|convert|anchors|distill)["']|\b(anchors|distill)\b"""
    r"|--(stream|classwise|draw-threshold|from|label-list|levels|per-level)\b"
    r"|\b(draw_threshold|classwise)\b"
)


def test_core_names_no_kit_verb_or_flag() -> None:
    """Kits own their verbs: the core must not know any kit's verbs or flags by name."""
    core = ROOT / "src" / "e2ekit" / "core"
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted(core.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if KIT_ONLY.search(line)
    ]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("verb", ["predict", "serve", "bench"])
def test_inference_verbs_take_a_device(verb: str) -> None:
    from e2ekit.core.cli import UsageError, parse_verb
    from e2ekit.core.kit import get_kit

    kit = get_kit("toy")
    assert parse_verb(kit, verb, ["--device", "cuda"])[1].device == "cuda"
    assert parse_verb(kit, verb, [])[1].device is None
    with pytest.raises(UsageError, match="--device"):
        parse_verb(kit, verb, ["--device", "tpu"])


def test_train_overwrite_flag_reaches_every_kits_train() -> None:
    from e2ekit.core.cli import parse_verb
    from e2ekit.core.kit import get_kit

    for name in ("toy", "ctr"):  # ctr runs its own train handler, on the shared flags
        kit = get_kit(name)
        assert parse_verb(kit, "train", ["--overwrite"])[1].overwrite is True
        assert parse_verb(kit, "train", [])[1].overwrite is False


def test_predict_flags_reach_the_kit_as_options(
    cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """det's own predict flag arrives in ``Kit.predict``'s options; nothing stays on the kit."""
    from e2ekit.core import verbs
    from e2ekit.core.kit import get_kit

    det = get_kit("det")
    seen: list[dict] = []

    def fake_predict(predictor, input_path, out_dir, options) -> dict:
        seen.append(dict(options))
        return {"images": 0}

    monkeypatch.setattr(verbs, "make_predictor", lambda kit, args: object())
    monkeypatch.setattr(det, "predict", fake_predict)
    for extra, expected in ((["--draw-threshold", "0.7"], 0.7), ([], None)):
        code, _, err = cli("det", "predict", "--input", tmp_path, "--out", tmp_path, *extra)
        assert code == 0, err
        assert seen[-1]["draw_threshold"] == expected and seen[-1]["input"] == str(tmp_path)
    assert "draw_threshold" not in vars(det)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.batch_szie=3", "did you mean 'train.batch_size'"),
        ("optim.lr=fast", "'optim.lr'"),
        ("model.hiden=3", "did you mean 'hidden'"),
    ],
)
def test_config_errors_are_one_line_and_create_nothing(
    cli, tmp_path: Path, override: str, needle: str
) -> None:
    out = tmp_path / "run"
    code, _, err = cli("toy", "train", "-c", TINY, "-o", override, "--out", out)
    assert code == 1
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_base_file_creates_nothing(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("_base_: ../nope.yaml\n")
    out = tmp_path / "run"
    code, _, err = cli("toy", "train", "-c", cfg, "--out", out)
    assert code == 1 and "nope.yaml" in err and str(cfg) in err
    assert not out.exists()


def test_configs_lists_shipped(cli) -> None:
    code, out, _ = cli("configs", "toy")
    assert code == 0
    assert "toy/quick" in out and "toy/tiny" in out


def test_config_descriptions_are_whole_sentences(tmp_path: Path) -> None:
    from e2ekit.core.paths import config_description, shipped_configs

    cfg = tmp_path / "c.yaml"
    cfg.write_text("# A detector (160 px,\n# multi-scale): AP50 0.9. Tuned on X.\nm: {}\n")
    assert config_description(cfg) == "A detector (160 px, multi-scale): AP50 0.9."
    for paths in shipped_configs().values():
        for path in paths:
            text = config_description(path)
            header = " ".join(
                line.lstrip("#").strip()
                for line in path.read_text().splitlines()[:40]
                if line.startswith("#")
            )
            assert text and header.startswith(text), path  # the header's start, not a cut


def test_configs_into_a_closed_pipe_exits_quietly() -> None:
    proc = subprocess.run(
        f"{sys.executable} -m e2ekit configs | head -1",
        shell=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_python_dash_m_and_help() -> None:
    proc = run_subprocess(["--help"])
    assert proc.returncode == 0 and "e2ekit <kit> <verb>" in proc.stdout


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_ours_and_the_libraries(cli, flag: str) -> None:
    from importlib import metadata

    code, out, _ = cli(flag)
    first, libs = out.strip().splitlines()
    assert code == 0 and first == f"e2ekit {metadata.version('e2ekit')}"
    assert f"torch {metadata.version('torch')}" in libs and "onnxruntime" in libs


def test_a_user_config_bases_itself_on_a_shipped_one_by_name(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("_base_: tiny\ntrain: {max_steps: 2}\n")
    out = tmp_path / "run"
    code, _, err = cli("toy", "train", "-c", cfg, "--out", out, "-o", "train.tensorboard=false")
    assert code == 0, err
    saved = (out / "config.yaml").read_text()
    assert "toy_mlp" in saved and "hidden: 8" in saved  # from the shipped toy/tiny


def test_a_misspelled_boolean_in_a_transform_fails_naming_it(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(
        "_base_: det/quick\n"
        "data:\n  train_transforms:\n    - {type: Resize, target_size: 96, keep_ratio: flase}\n"
    )
    code, _, err = cli("det", "train", "-c", cfg, "--out", tmp_path / "run")
    assert code == 1 and "'keep_ratio' must be a boolean, got 'flase'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("trian.epochs=3", "error: -o trian.epochs=3: unknown key 'trian' (did you mean 'train'?)"),
        ("data.num_classes=3", "error: -o data.num_classes=3: data.class_names has 4 names"),
    ],
)
def test_an_override_error_blames_the_override(cli, tmp_path: Path, override, needle) -> None:
    code, _, err = cli("seg", "train", "-c", "quick", "-o", override, "--out", tmp_path / "r")
    assert code == 1 and err.strip().startswith(needle), err
    assert "{" not in err  # a section check names its keys, it does not print the section
