"""Text kit wiring: task factory, predict over TSV/JSON/stdin to JSONL, ``POST /predict``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from e2ekit.core.errors import DataError
from e2ekit.core.fileio import atomic_open
from e2ekit.core.kit import Kit, Verb
from e2ekit.core.progress import progress
from e2ekit.core.serve import BadRequest, Endpoint
from e2ekit.text.config import TextConfig
from e2ekit.text.runner import TextRunner, chunked
from e2ekit.text.task import TextTask

MAX_CHARS = 20_000


class QAItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    context: str
    id: str | None = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not ignored

    texts: list[str] | None = Field(None, description="cls and ner: raw texts")
    pairs: list[tuple[str, str]] | None = Field(None, description="pair: [text_a, text_b] items")
    questions: list[QAItem] | None = Field(None, description="mrc: question + context items")


def read_predict_input(task: str, path: Path) -> list[Any]:
    """Items for ``TextRunner.run_items`` from a TSV/JSON/text file or stdin ('-'); for ner
    also CoNLL columns and word-list JSON lines (each sentence its list of words)."""
    from e2ekit.text.data import read_ner_words, read_squad, read_texts

    if task == "mrc":
        if str(path) == "-":
            raise DataError("mrc predict reads a SQuAD JSON file, not stdin")
        return read_squad(path, require_answers=False)
    if task == "ner" and str(path) != "-":
        words = read_ner_words(path)  # CoNLL / word-list JSON lines, as train reads them
        if words is not None:
            return words
    items = read_texts(str(path))
    if task == "pair":
        bad = [i for i, x in enumerate(items, 1) if not isinstance(x, tuple)]
        if bad:
            raise DataError(
                f"{path}: item {bad[0]} has no text_b; pair needs a TSV with text_a and text_b"
            )
    elif any(isinstance(x, tuple) for x in items):
        items = [x[0] if isinstance(x, tuple) else x for x in items]
    return items


class TextKit(Kit[TextConfig]):
    name = "text"
    schema = TextConfig
    description = "fine-tune BERT/ERNIE-family encoders: cls, pair, ner, mrc"

    def make_task(self, cfg: TextConfig) -> TextTask:
        return TextTask(cfg)

    def verbs(self) -> dict[str, Verb]:
        """The shared verbs and ``distill``; ``serve`` also takes a pretrained encoder folder
        (or minilm)."""
        from e2ekit.text.distill.pipeline import add_distill_flags, cmd_distill
        from e2ekit.text.service import add_serve_flags, cmd_serve

        verbs = super().verbs()
        verbs["distill"] = Verb(
            cmd_distill,
            "distil a fine-tuned cls/pair teacher into tiny, fast students (bow, cnn, bilstm, "
            "tiny) through augmented data; writes their exports and a teacher/student table",
            add_distill_flags,
        )
        verbs["serve"] = replace(
            verbs["serve"].extend(handler=cmd_serve, add_arguments=add_serve_flags),
            help="serve over HTTP: an export (POST /predict) or a pretrained encoder folder / "
            "minilm (POST /encode, POST /v1/embeddings); GET /health, GET /metrics",
        )
        return verbs

    def predict(
        self, predictor: Any, input_path: Path, out_dir: Path, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        runner = TextRunner(predictor)
        items = read_predict_input(runner.task, input_path)
        out_dir.mkdir(parents=True, exist_ok=True)
        counts: dict[str, int] = {}
        bar = progress(total=len(items), desc="predict", unit="item")
        try:
            with atomic_open(out_dir / "predictions.jsonl") as fh:
                for chunk in chunked(items, 64):
                    for row in runner.run_items(chunk):
                        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                        key = row.get("label") or (
                            "entities" if runner.task == "ner" else "answers"
                        )
                        counts[key] = counts.get(key, 0) + (
                            len(row["entities"]) if runner.task == "ner" else 1
                        )
                    bar.update(len(chunk))
        finally:
            bar.close()
        return {"items": len(items), "output": str(out_dir / "predictions.jsonl"), "counts": counts}

    def endpoints(self, predictor: Any) -> list[Endpoint]:
        runner = TextRunner(predictor)
        task = runner.task
        field = {"cls": "texts", "ner": "texts", "pair": "pairs", "mrc": "questions"}[task]

        def to_items(req: PredictRequest) -> list[Any]:
            items = getattr(req, field)
            if not items:
                raise BadRequest(f"this {task} model needs a non-empty '{field}' list", 422)
            for i, it in enumerate(items):
                size = (
                    len(it.context) + len(it.question)
                    if task == "mrc"
                    else sum(map(len, it))
                    if task == "pair"
                    else len(it)
                )
                if size > MAX_CHARS:
                    raise BadRequest(
                        f"{field}[{i}] has {size} characters; at most {MAX_CHARS}", 413
                    )
            if task == "mrc":
                from e2ekit.text.data import MrcExample

                return [
                    MrcExample(q.id or str(i), q.question, q.context, [])
                    for i, q in enumerate(items)
                ]
            return [tuple(x) for x in items] if task == "pair" else list(items)

        def run_batch(items: list[Any]) -> list[dict[str, Any]]:
            if task == "mrc":  # question ids only need to be unique within one model call
                from e2ekit.text.data import MrcExample

                items = [
                    MrcExample(f"{i}:{x.qid}", x.question, x.context, [])
                    for i, x in enumerate(items)
                ]
                rows = runner.run_items(items)
                for row, x in zip(rows, items, strict=True):
                    row["id"] = x.qid.split(":", 1)[1]
                return rows
            return runner.run_items(items)

        def to_response(req: PredictRequest, results: list[dict[str, Any]]) -> dict[str, Any]:
            return {"task": task, "results": results}

        return [Endpoint("/predict", PredictRequest, to_items, run_batch, to_response)]

    def demo_input(self, cfg: TextConfig, folder: Path) -> Path:
        task = TextTask(cfg)
        path = task.data_file("val")
        assert path is not None
        if task.type == "mrc":
            return path
        lines = path.read_text(encoding="utf-8").splitlines()
        header = lines[0].split("\t")
        keep = [i for i, h in enumerate(header) if h in ("text_a", "text_b")]
        out = folder / "input.tsv"
        out.write_text(
            "\n".join("\t".join(r.split("\t")[i] for i in keep) for r in lines[:21]) + "\n",
            encoding="utf-8",
        )
        return out

    def demo_request(self, deploy: dict[str, Any]) -> dict[str, Any]:
        task = deploy["task"]
        if task == "pair":
            return {"pairs": [["the film was great", "the movie was great"]]}
        if task == "mrc":
            return {
                "questions": [
                    {
                        "question": "Who founded Acme?",
                        "context": "Acme was founded by Ada Park in 1990.",
                    }
                ]
            }
        return {"texts": ["the service was not good at all", "Ada Park lives in Berlin"]}


KIT = TextKit()
__all__ = ["KIT", "TextKit"]
