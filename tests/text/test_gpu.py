"""The text kit on a CUDA device: a 2-layer BERT trained from scratch under bf16 and fp16,
evaluated, exported, and its class scores predicted there equal to the CPU's
(``E2EKIT_TEST_DEVICE=cpu``: a dry run of the same code, see tests/core/test_gpu.py).

The encoder and tokenizer come from a BERT folder written here (config.json + a WordPiece
vocabulary of the built-in data's words), not from the MiniLM package, which a GPU machine
need not have."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ..conftest import ROOT
from ..core.test_gpu import (
    AMPS,
    DEVICE,
    GPU_MARKS,
    check_eval,
    check_run,
    exact_fp32,
    export,
    predict_default_backend,
    predict_on,
    train_runs,
)

pytestmark = GPU_MARKS
TINY = str(ROOT / "configs" / "text" / "tiny.yaml")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_SIZE = 1200


def write_bert_folder(folder: Path) -> Path:
    """A Hugging Face BERT folder: config.json and vocab.txt (single characters, so no word
    is unknown, and the words of the built-in review data). Weights are not needed: the tiny
    config trains from scratch (``model.from_scratch``)."""
    from transformers import BertConfig

    from e2ekit.text.data import synthetic as s

    phrases = [*s.SUBJECTS, *s.POS, *s.NEG, *s.NEGATORS, *s.INTENS, *s.VERBS, *s.FILLERS]
    words = sorted({w for p in phrases for w in p.split()} | {"but", "although", "and"})
    chars = string.ascii_lowercase + string.digits
    vocab = [*SPECIAL, *string.punctuation, *chars, *(f"##{c}" for c in chars), *words]
    vocab = list(dict.fromkeys(vocab))
    # BERT's [unusedN] fillers up to a real vocabulary's size (export samples ids >= 1000)
    vocab += [f"[unused{i}]" for i in range(VOCAB_SIZE - len(vocab))]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertConfig(vocab_size=len(vocab)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("text_gpu")
    bert = write_bert_folder(root / "bert")
    with exact_fp32():  # for the whole module
        yield train_runs("text", ["-c", TINY, "-o", f"model.pretrained={bert}"], root)


@pytest.mark.parametrize("amp", AMPS)
def test_train_on_device(runs: dict[str, Path], amp: str) -> None:
    assert check_run(runs[amp], amp)["step"] == 6


def test_eval_on_device(cli, runs: dict[str, Path]) -> None:
    check_eval(cli, "text", runs["bf16"], "accuracy")


def scores(folder: Path) -> np.ndarray:
    rows = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    return np.array([list(r["scores"].values()) for r in rows])


def test_export_and_predict_on_device(cli, runs: dict[str, Path], tmp_path: Path) -> None:
    from e2ekit.core.config import load_config
    from e2ekit.text.config import TextConfig
    from e2ekit.text.kit import KIT

    run = runs["bf16"]
    model = export(cli, "text", run, tmp_path / "export")
    inp = KIT.demo_input(load_config(run / "config.yaml", TextConfig, []), tmp_path)
    summary = predict_on("cpu", cli, "text", ["--model", model], inp, tmp_path / "cpu")
    assert summary["items"] == 20 and summary["backend"] == "onnxruntime", summary
    cpu = scores(tmp_path / "cpu")
    assert cpu.shape == (20, 2)

    on_device = {
        "torch": (["--model", model], ["--backend", "torch"]),
        "checkpoint": (["--weights", run / "best.pt"], []),
    }
    for name, (source, flags) in on_device.items():
        summary = predict_on(DEVICE, cli, "text", source, inp, tmp_path / name, *flags)
        assert summary["backend"].startswith("torch"), summary
        np.testing.assert_allclose(scores(tmp_path / name), cpu, atol=1e-4, err_msg=name)
    if predict_default_backend(cli, "text", model, inp, tmp_path / "default"):
        np.testing.assert_allclose(scores(tmp_path / "default"), cpu, atol=1e-4)
