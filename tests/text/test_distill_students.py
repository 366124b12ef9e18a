"""Students, their word tokenizer and the distillation loss: served like a text export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from e2ekit.core.errors import ConfigError
from e2ekit.core.export import export_onnx
from e2ekit.text.data import pad_batch
from e2ekit.text.data.features import encode_text
from e2ekit.text.data.readers import TextExample
from e2ekit.text.distill.loss import distill_loss
from e2ekit.text.distill.students import (
    STUDENT_KINDS,
    StudentSpec,
    build_student,
    init_embeddings,
    student_from_config,
)
from e2ekit.text.distill.word_tokenizer import SPECIALS, build_word_tokenizer
from e2ekit.text.models import load_tokenizer

CORPUS = [
    "The movie was good",
    "the plot was bad",
    "Good acting, good music!",
    "bad bad bad",
    "a movie",
]


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(CORPUS)


# -- tokenizer ------------------------------------------------------------------------------
def test_specials_take_ids_0_to_4(tok):
    assert [tok.convert_tokens_to_ids(s) for s in SPECIALS] == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id) == (0, 1, 2)
    assert (tok.sep_token_id, tok.mask_token_id) == (3, 4)


def test_vocab_by_frequency_then_word(tok):
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    words = [w for w, _ in vocab[len(SPECIALS) :]]
    # bad x4, good x3, movie/the/was x2, then the singletons in string order
    assert words[:5] == ["bad", "good", "movie", "the", "was"]
    assert words[5:] == ["!", ",", "a", "acting", "music", "plot"]


def test_max_size_and_min_freq():
    small = build_word_tokenizer(CORPUS, max_size=7)
    assert len(small.get_vocab()) == 7
    assert small.convert_ids_to_tokens([5, 6]) == ["bad", "good"]
    frequent = build_word_tokenizer(CORPUS, min_freq=2)
    assert set(frequent.get_vocab()) == {*SPECIALS, "bad", "good", "movie", "the", "was"}
    with pytest.raises(ConfigError, match="leaves no room for words"):
        build_word_tokenizer(CORPUS, max_size=5)


def test_cjk_split_lowercase_and_unknown():
    t = build_word_tokenizer(["我爱北京 Hello"])
    assert t.tokenize("我爱北京 HELLO") == ["我", "爱", "北", "京", "hello"]
    ids = t("hello zebra")["input_ids"]
    assert ids == [2, t.convert_tokens_to_ids("hello"), 1, 3]
    cased = build_word_tokenizer(["Hello hello"], lowercase=False)
    assert {"Hello", "hello"} <= set(cased.get_vocab())


def test_pair_type_ids_and_offsets(tok):
    enc = tok("good movie", "bad", return_token_type_ids=True, return_offsets_mapping=True)
    assert enc["input_ids"] == [2, 6, 7, 3, 5, 3]
    assert enc["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    assert enc["offset_mapping"] == [(0, 0), (0, 4), (5, 10), (0, 0), (0, 3), (0, 0)]


def test_save_load_round_trip_and_encode_text(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(Path(tmp_path))
    text = "The GOOD movie, unseen 好"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    offsets = loaded(text, return_offsets_mapping=True)["offset_mapping"]
    assert offsets[1:4] == [(0, 3), (4, 8), (9, 14)]
    examples = [TextExample("good movie", "bad plot", "1", 1), TextExample("bad", "x", "0", 2)]
    feats, stats = encode_text(examples, loaded, ["0", "1"], 5)
    assert feats[0]["input_ids"][0] == 2 and feats[0]["input_ids"][-1] == 3
    assert len(feats[0]["input_ids"]) == 5 and stats.truncated == 1
    assert feats[1]["token_type_ids"] == [0, 0, 0, 1, 1]
    assert [f["label"] for f in feats] == [1, 0]


# -- students --------------------------------------------------------------------------------
VOCAB = 40
CASES = [(kind, pair) for kind in STUDENT_KINDS for pair in (False, True)]


def _spec(kind: str, pair: bool) -> StudentSpec:
    return StudentSpec(
        kind, VOCAB, 3, pair=pair, embed_dim=16, hidden=16, kernel_sizes=(1, 2, 3), dropout=0.1
    )


def _batch(seed: int, lengths: list[int], pair: bool) -> dict[str, torch.Tensor]:
    """Right-padded rows like pad_batch builds; pair rows split into two segments."""
    g = torch.Generator().manual_seed(seed)
    feats = []
    for n in lengths:
        ids = torch.randint(5, VOCAB, (n,), generator=g).tolist()
        types = [0] * (n // 2) + [1] * (n - n // 2) if pair else [0] * n
        feats.append({"input_ids": ids, "token_type_ids": types})
    b = pad_batch(feats, 0)
    return {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def _model(kind: str, pair: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_student(_spec(kind, pair)).eval()


@pytest.mark.parametrize(("kind", "pair"), CASES)
def test_shape_and_batch_invariance(kind, pair):
    model = _model(kind, pair)
    lengths = [7, 2, 11, 4]
    batch = _batch(1, lengths, pair)
    with torch.no_grad():
        logits = model(**batch)
        assert logits.shape == (4, 3) and logits.dtype == torch.float32
        for i, n in enumerate(lengths):
            alone = model(**{k: v[i : i + 1, :n] for k, v in batch.items()})
            torch.testing.assert_close(logits[i : i + 1], alone, atol=1e-5, rtol=0)
    # the padding and the other rows really are ignored: a changed pad id changes nothing
    noisy = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(**noisy), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("kind", "pair"), CASES)
def test_gradients_reach_the_embedding(kind, pair):
    model = _model(kind, pair).train()
    assert model.spec == _spec(kind, pair)
    assert model.embedding.padding_idx == 0
    logits = model(**_batch(2, [5, 3], pair))
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    grad = model.embedding.weight.grad
    assert grad is not None and grad[5:].abs().sum() > 0
    assert grad[0].abs().sum() == 0  # the padding row stays put


AXES = {0: "batch", 1: "sequence"}
DYNAMIC = {
    "input_ids": AXES,
    "attention_mask": AXES,
    "token_type_ids": AXES,
    "logits": {0: "batch"},
}


@pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size other than 1")
@pytest.mark.parametrize(("kind", "pair"), CASES)
def test_onnx_export_parity(kind, pair, tmp_path):
    model = _model(kind, pair)
    out = tmp_path / "export"
    report = export_onnx(
        model,
        _batch(3, [6, 6], pair),
        out,
        output_names=["logits"],
        dynamic_axes=DYNAMIC,
        deploy={"kit": "text", "task": "cls", "labels": ["a", "b", "c"]},
        parity_inputs=[_batch(4, [9, 3, 5], pair), _batch(5, [1], pair)],
    )
    assert report["onnx"]["passed"] and report["onnx"]["cases"] == 3
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    batch = _batch(6, [12, 4, 8, 2, 7], pair)
    (got,) = session.run(["logits"], {k: v.numpy() for k, v in batch.items()})
    with torch.no_grad():
        want = model(**batch).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_export_is_served_by_the_text_runner(tok, tmp_path):
    from e2ekit.core.infer import Predictor
    from e2ekit.text.runner import TextRunner

    torch.manual_seed(0)
    spec = StudentSpec("cnn", VOCAB, 3, pair=True, embed_dim=16, hidden=16)  # >= len(tok)
    model = build_student(spec).eval()
    out = tmp_path / "export"
    deploy = {"kit": "text", "task": "pair", "labels": ["x", "y", "z"], "max_seq_len": 16}
    export_onnx(
        model,
        _batch(7, [6, 6], True),
        out,
        output_names=["logits"],
        dynamic_axes=DYNAMIC,
        deploy=deploy | {"pad_token_id": tok.pad_token_id},
        parity_inputs=[_batch(8, [9, 3], True)],
        assets=lambda d: tok.save_pretrained(str(d)),
    )
    pairs = [("good movie", "bad plot"), ("The music was good!", "a")]
    served = TextRunner(Predictor(out)).classify(pairs)
    enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).softmax(-1)
    for row, p in zip(served, probs, strict=True):
        assert [row["scores"][n] for n in "xyz"] == pytest.approx(p.tolist(), abs=1e-5)
        assert row["label"] == "xyz"[int(p.argmax())]


def test_spec_checks_and_config_builder():
    with pytest.raises(ConfigError, match="did you mean 'cnn'"):
        StudentSpec("cnm", VOCAB, 2)
    with pytest.raises(ConfigError, match="pad_id"):
        StudentSpec("bow", VOCAB, 2, pad_id=VOCAB)
    with pytest.raises(ConfigError, match="kernel_sizes"):
        StudentSpec("cnn", VOCAB, 2, kernel_sizes=())
    model = student_from_config(kind="cnn", vocab_size=VOCAB, num_labels=2, kernel_sizes=[3, 5])
    assert model.spec.kernel_sizes == (3, 5) and len(model.convs) == 2


def test_init_embeddings_copies_known_words():
    model = build_student(StudentSpec("bow", 8, 2, embed_dim=4, hidden=4))
    vocab = {"[PAD]": 0, "[UNK]": 1, "good": 5, "movie": 6, "zebra": 7}
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    before = model.embedding.weight[7].detach().clone()
    assert init_embeddings(model, vocab, ["Good", "movie", "movie"], vectors) == 2
    w = model.embedding.weight.detach()
    np.testing.assert_array_equal(w[5].numpy(), vectors[0])  # found by its lowercase form
    np.testing.assert_array_equal(w[6].numpy(), vectors[1])  # first of duplicates
    torch.testing.assert_close(w[7], before)
    assert w[0].abs().sum() == 0
    with pytest.raises(ValueError, match=r"dim 3 .* embed_dim is 4"):
        init_embeddings(model, vocab, ["good"], np.zeros((1, 3), dtype=np.float32))


def _planted(rng: np.random.Generator, n: int) -> tuple[list[str], list[int]]:
    """Random filler words; every odd row also holds "good" and is label 1."""
    fillers = [f"w{i}" for i in range(30)]
    texts, labels = [], []
    for i in range(n):
        words = list(rng.choice(fillers, size=int(rng.integers(2, 8))))
        if i % 2:
            words.insert(int(rng.integers(0, len(words) + 1)), "good")
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts, labels


def _inputs(texts: list[str], tok) -> dict[str, torch.Tensor]:
    feats, _ = encode_text([TextExample(t, None, None, 1) for t in texts], tok, None, 32)
    batch = pad_batch(feats, tok.pad_token_id)
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_bow_student_learns_a_planted_rule():
    rng = np.random.default_rng(0)
    train_texts, train_labels = _planted(rng, 200)
    test_texts, test_labels = _planted(rng, 100)
    tok = build_word_tokenizer(train_texts)
    x, y = _inputs(train_texts, tok), torch.tensor(train_labels)
    torch.manual_seed(0)
    spec = StudentSpec("bow", len(tok.get_vocab()), 2, embed_dim=16, hidden=16, dropout=0.0)
    model = build_student(spec)
    for _ in range(200):  # plain full-batch SGD: torch.optim's first use imports dynamo (~2 s)
        model.zero_grad()
        distill_loss(model(**x), None, y, soft_weight=0.0).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 1.0 * p.grad
    model.eval()
    with torch.no_grad():
        pred = model(**_inputs(test_texts, tok)).argmax(-1)
    assert (pred == torch.tensor(test_labels)).float().mean().item() >= 0.95  # unseen rows


# -- loss --------------------------------------------------------------------------------------
def _logits(seed: int, shape=(6, 4)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_soft_weight_zero_is_cross_entropy():
    s, t, y = _logits(0), _logits(1), torch.tensor([0, 3, 1, 2, 2, 0])
    got = distill_loss(s, t, y, soft_weight=0.0)
    torch.testing.assert_close(got, F.cross_entropy(s, y))


def test_identical_logits_have_no_soft_loss():
    s = _logits(2)
    for soft in ("kl", "mse"):
        assert distill_loss(s, s.clone(), None, soft_weight=1.0, soft=soft).abs() < 1e-6


def test_kl_matches_hand_computation_with_t_squared():
    s, t = _logits(3).double().numpy(), _logits(4).double().numpy()
    temp = 3.0

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p_t, p_s = softmax(t / temp), softmax(s / temp)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum() / s.shape[0]
    got = distill_loss(
        torch.tensor(s), torch.tensor(t), None, temperature=temp, soft_weight=1.0
    ).item()
    assert got == pytest.approx(temp**2 * kl, rel=1e-5)
    assert kl > 1e-3  # the check above is not 0 == 0


def test_unlabelled_rows_are_ignored():
    s, t = _logits(5), _logits(6)
    y = torch.tensor([1, -100, 2, -100, -100, 0])
    keep = y != -100
    hard = F.cross_entropy(s[keep], y[keep])
    soft = distill_loss(s, t, None, soft_weight=1.0, temperature=2.0)
    got = distill_loss(s, t, y, soft_weight=0.3, temperature=2.0)
    torch.testing.assert_close(got, 0.3 * soft + 0.7 * hard)


def test_all_unlabelled_batch_keeps_the_soft_weight():
    s, t = _logits(7), _logits(8)
    none = torch.full((6,), -100)
    soft = distill_loss(s, t, None, soft_weight=1.0)
    torch.testing.assert_close(distill_loss(s, t, none, soft_weight=0.4), 0.4 * soft)
    torch.testing.assert_close(distill_loss(s, t, None, soft_weight=0.4), 0.4 * soft)
    s.requires_grad_(True)
    distill_loss(s, t, none, soft_weight=0.4).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_mse_option():
    s, t = _logits(9), _logits(10)
    got = distill_loss(s, t, None, soft_weight=1.0, soft="mse", temperature=5.0)
    torch.testing.assert_close(got, ((s - t) ** 2).mean())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"soft_weight": 1.5}, "soft_weight"),
        ({"soft_weight": -0.1}, "soft_weight"),
        ({"soft": "ce"}, "soft must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distill_loss(_logits(0), _logits(1), None, **kwargs)
