"""The text kit end to end per task type: train, eval, export (parity), predict, serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "text" / "tiny.yaml")
TASKS = {
    "cls": [],
    "pair": ["-o", "task.type=pair"],
    "ner": ["-o", "task.type=ner"],
    "ner_crf": ["-o", "task.type=ner", "-o", "model.crf=true"],
    "mrc": [
        "-o",
        "task.type=mrc",
        "-o",
        "data.max_seq_len=96",
        "-o",
        "data.doc_stride=32",
        "-o",
        "data.max_query_length=24",
    ],
}
METRICS = {
    "cls": {"accuracy", "f1"},
    "pair": {"accuracy", "f1"},
    "ner": {"f1", "precision", "recall"},
    "ner_crf": {"f1", "precision", "recall"},
    "mrc": {"em", "f1"},
}


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=list(TASKS))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from e2ekit.core.cli import main

    name = request.param
    run = tmp_path_factory.mktemp(f"text-{name}") / "run"
    assert main(["text", "train", "-c", TINY, *TASKS[name], "--out", str(run)]) == 0
    return name, run


def test_train_eval_export_predict_serve(cli, trained, tmp_path: Path) -> None:
    name, run = trained
    metrics = json.loads((run / "metrics.json").read_text())
    assert METRICS[name] <= set(metrics), metrics
    code, out, err = cli("text", "eval", "--weights", run / "best.pt")
    assert code == 0, err
    key = "f1" if name in ("ner", "ner_crf", "mrc") else "accuracy"
    assert last_json(out)[key] == pytest.approx(metrics[key], abs=1e-6)

    export = tmp_path / "export"
    code, out, err = cli("text", "export", "--weights", run, "--out", export)
    assert code == 0, err
    report = json.loads((export / "export_report.json").read_text())
    assert report["onnx"]["max_abs_diff"] < 1e-4
    assert (export / "tokenizer.json").is_file()

    from e2ekit.core.config import load_config
    from e2ekit.text.config import TextConfig
    from e2ekit.text.kit import KIT

    task = KIT.make_task(load_config(run / "config.yaml", TextConfig, []))
    inp = KIT.demo_input(task.cfg, tmp_path)
    rows = {}
    for backend in ("onnxruntime", "torch"):
        out_dir = tmp_path / f"pred-{backend}"
        code, out, err = cli(
            "text",
            "predict",
            "--model",
            export,
            "--backend",
            backend,
            "--input",
            inp,
            "--out",
            out_dir,
        )
        assert code == 0, err
        rows[backend] = [
            json.loads(x) for x in (out_dir / "predictions.jsonl").read_text().splitlines()
        ]
        assert rows[backend] and last_json(out)["items"] == len(rows[backend])
    field = {"cls": "label", "pair": "label", "ner": "tags", "ner_crf": "tags", "mrc": "answer"}[
        name
    ]
    assert [r[field] for r in rows["onnxruntime"]] == [r[field] for r in rows["torch"]]

    from fastapi.testclient import TestClient

    from e2ekit.core.infer import Predictor
    from e2ekit.core.serve import create_app

    predictor = Predictor(export)
    app = create_app(KIT.endpoints(predictor))
    with TestClient(app) as client:
        r = client.post("/predict", json=KIT.demo_request(predictor.deploy))
        assert r.status_code == 200, r.text
        assert r.json()["results"]
        assert client.post("/predict", json={}).status_code == 422
        assert (
            client.post(
                "/predict",
                json={
                    "texts": ["x" * 30_000],
                    "pairs": [["a" * 30_000, "b"]],
                    "questions": [{"question": "q", "context": "c" * 30_000}],
                },
            ).status_code
            == 413
        )


def test_ner_predict_reads_conll_and_word_lists_as_train_does(cli, trained, tmp_path) -> None:
    name, run = trained
    if name != "ner":
        pytest.skip("a NER input format")
    conll = tmp_path / "dev.conll"
    conll.write_text(
        "-DOCSTART- -X- O O\n\nJohn NNP B-NP B-PER\nlives VBZ B-VP O\n\nParis NNP B-NP B-LOC\n"
    )
    words = tmp_path / "dev.jsonl"
    words.write_text('{"words": ["John", "lives"]}\n{"tokens": ["Paris"]}\n')
    plain = tmp_path / "dev.txt"
    plain.write_text("John lives\nParis\n")
    tags = {}
    for path in (conll, words, plain):
        code, _, err = cli("text", "predict", "--weights", run, "--input", path,
                           "--out", tmp_path / path.suffix[1:])  # fmt: skip
        assert code == 0, err
        rows = [json.loads(x) for x in (tmp_path / path.suffix[1:] / "predictions.jsonl").open()]
        assert [r["tokens"] for r in rows] == [["John", "lives"], ["Paris"]], path
        tags[path.suffix] = [r["tags"] for r in rows]
    assert tags[".conll"] == tags[".jsonl"] == tags[".txt"]
