"""The teacher/student table: dev accuracy through the served path, size, and speed here.

Every model is measured as it is served: its export folder under onnxruntime, the text
runner tokenising and batching, so the accuracy is the one ``/predict`` gives. Speed times
the model call alone on pre-tokenised rows (the same harness for teacher and students):
batch-1 latency over single dev rows, and throughput over batches of 64.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.fileio import atomic_open
from e2ekit.text.runner import INPUTS

THROUGHPUT_BATCH = 64


def onnx_size(export_dir: Path) -> dict[str, int]:
    """Parameters (initializer elements) and bytes of the export's ``model.onnx``."""
    import onnx

    path = export_dir / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return {"params": params, "model_bytes": path.stat().st_size}


def dev_accuracy(runner: Any, items: list[Any], labels: np.ndarray) -> float:
    """Accuracy of the runner's logits (the served argmax) on labelled dev rows."""
    logits = runner.class_logits(items)
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")


def _feeds(runner: Any, items: list[Any]) -> list[dict[str, np.ndarray]]:
    from e2ekit.text.data import encode_text, pad_batch
    from e2ekit.text.runner import text_examples

    feats, _ = encode_text(
        text_examples(items), runner.tokenizer, None, int(runner.deploy["max_seq_len"])
    )
    out = []
    for s in range(0, len(feats), THROUGHPUT_BATCH):
        batch = pad_batch(feats[s : s + THROUGHPUT_BATCH], runner.pad_id)
        out.append({k: batch[k].numpy().astype(np.int64) for k in INPUTS})
    return out


def _chars(item: Any) -> int:
    return sum(map(len, item)) if isinstance(item, tuple) else len(item)


def speed(runner: Any, items: list[Any], samples: int) -> dict[str, float]:
    """Batch-1 latency (median ms of a model call) and batch-64 throughput (rows/s)."""
    run = runner.predictor.backend.run  # the session alone: input checks are not the model
    singles = [f for it in items[:samples] for f in _feeds(runner, [it])]
    run(singles[0])  # warm-up: first-call allocations are not latency
    times = []
    for feeds in singles:
        t0 = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - t0)
    # batches of similar length, as the runner forms them for a request of many rows
    batches = _feeds(runner, sorted(items, key=_chars))
    run(batches[0])
    rows = 0
    t0 = time.perf_counter()
    for feeds in batches:
        run(feeds)
        rows += len(feeds["input_ids"])
    seconds = time.perf_counter() - t0
    return {
        "latency_ms_b1": round(statistics.median(times) * 1e3, 4),
        "latency_rows": len(times),
        "throughput_b64": round(rows / seconds, 1),
    }


COLUMNS = (
    ("model", "model"),
    ("trained_on", "trained on"),
    ("accuracy", "dev accuracy"),
    ("params", "params"),
    ("model_bytes", "ONNX bytes"),
    ("latency_ms_b1", "ms/row, batch 1"),
    ("speedup_b1", "x teacher, batch 1"),
    ("throughput_b64", "rows/s, batch 64"),
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown, one model per line."""

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if key == "accuracy":
            return f"{100 * value:.2f}"
        if key == "speedup_b1":
            return f"{value:.1f}"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell(k, row.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_table(out_dir: Path, rows: list[dict[str, Any]], header: str) -> Path:
    path = out_dir / "table.md"
    with atomic_open(path) as fh:
        fh.write(f"{header}\n\n{markdown_table(rows)}")
    return path
