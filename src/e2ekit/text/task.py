"""Text task: tokenised features per task type, encoder + head, metrics, ONNX export."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from e2ekit.core.engine import ExportSpec, Task
from e2ekit.core.engine.optim import layer_decay_groups
from e2ekit.core.errors import ConfigError, DataError
from e2ekit.core.logs import log
from e2ekit.text.config import BUILTIN_PREFIX, TextConfig
from e2ekit.text.models import (
    TextInference,
    TextModel,
    build_encoder,
    extend_tokenizer,
    first_subtoken_index,
    load_encoder_config,
    load_tokenizer,
    resize_embeddings,
    resolve_model_dir,
    saved_tokenizer_dir,
    select_added_tokens,
    unknown_rate,
    unknown_words,
)

__all__ = ["TextDataset", "TextTask", "build_inference_module", "build_text_model"]

DEFAULT_METRIC = {"cls": "accuracy", "pair": "accuracy", "ner": "f1", "mrc": "f1"}
OUTPUTS = {
    "cls": ["logits"],
    "pair": ["logits"],
    "ner": ["emissions"],
    "mrc": ["start_logits", "end_logits"],
}
_LAYER = re.compile(r"\.layers?\.(\d+)\.")


class TextDataset(Dataset):
    """Encoded features (dicts of python lists) plus the examples they came from."""

    def __init__(self, features: list[dict], examples: list[Any], split: str) -> None:
        self.features = features
        self.examples = examples
        self.split = split

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return {**self.features[i], "index": i}


def build_text_model(
    model: dict[str, Any], task_type: str, num_labels: int, *, pretrained_weights: bool = True
) -> TextModel:
    """Encoder from ``model.pretrained`` (or a scratch config on top of it) + task head.

    With ``model.added_tokens`` the input embeddings grow to the base tokenizer's size plus
    those tokens (the new rows start as the mean embedding), matching the ids that
    ``TextTask.tokenizer`` gives them.
    """
    scratch = model.get("from_scratch")
    folder = resolve_model_dir(model.get("pretrained"), weights=pretrained_weights and not scratch)
    config = load_encoder_config(folder, scratch)
    _quiet_transformers()
    encoder = build_encoder(config, None if (scratch or not pretrained_weights) else folder)
    added = model.get("added_tokens") or []
    if added:
        key = "model.tokenizer" if model.get("tokenizer") else "model.pretrained"
        tok_dir = resolve_model_dir(model.get("tokenizer") or folder, key, weights=False)
        base = len(load_tokenizer(tok_dir))
        resize_embeddings(encoder, base, base + len(added))
    return TextModel(
        encoder,
        task_type,
        num_labels,
        pooling=model.get("pooling", "mean"),
        dropout=model.get("dropout"),
        crf=bool(model.get("crf")),
        rdrop=float(model.get("rdrop") or 0.0),
    )


def build_inference_module(model: dict[str, Any], task_type: str, num_labels: int) -> nn.Module:
    """Rebuilds the export wrapper for the Predictor's torch backend (weights loaded after)."""
    net = build_text_model(model, task_type, num_labels, pretrained_weights=False)
    return TextInference(net).eval()


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class TextTask(Task):
    kit = "text"
    schema = TextConfig
    metric_mode = "max"
    cfg: TextConfig

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__(cfg)
        self.type = cfg.task.type
        self.default_metric = DEFAULT_METRIC[self.type]  # type: ignore[misc]
        self.bucket = cfg.data.bucket
        self._tokenizer: Any = None
        self._datasets: dict[str, TextDataset] = {}
        self._files: dict[str, Path] | None = None

    # -- data -----------------------------------------------------------------------------
    def _tokenizer_dir(self) -> Path:
        m = self.cfg.model
        key = "model.tokenizer" if m.tokenizer else "model.pretrained"
        return resolve_model_dir(m.tokenizer or m.pretrained, key, weights=False)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, plus ``model.added_tokens`` (collected from the train file first
        when ``model.extend_vocab`` is on and they are not set yet)."""
        if self._tokenizer is None:
            tok = load_tokenizer(self._tokenizer_dir())
            m = self.cfg.model
            counts = None
            if m.extend_vocab and m.added_tokens is None:
                counts = self._train_word_counts()
                before = unknown_rate(tok, counts)
                unknown = unknown_words(tok, counts)
                m.added_tokens = select_added_tokens(unknown, m.extend_vocab_min_freq)
            if m.added_tokens:
                extend_tokenizer(tok, m.added_tokens)
            if counts is not None:
                assert m.added_tokens is not None
                log.info(
                    "model.extend_vocab: %d new tokens (of %d unknown words; min_freq %d): "
                    "%s; unknown-token rate on train %.1f%% -> %.1f%%",
                    len(m.added_tokens),
                    len(unknown),
                    m.extend_vocab_min_freq,
                    " ".join(m.added_tokens[:20]) + (" ..." if len(m.added_tokens) > 20 else ""),
                    100 * before,
                    100 * unknown_rate(tok, counts),
                )
            self._tokenizer = tok
        return self._tokenizer

    def _train_word_counts(self) -> Counter[str]:
        from e2ekit.text.data import split_words

        train = self.data_file("train")
        if train is None:
            raise ConfigError(
                "model.extend_vocab reads the new tokens from data.train, which is not set "
                "(or give them as model.added_tokens)"
            )

        def words() -> Iterator[str]:
            for ex in self.read_examples(train, "train"):
                if self.type == "ner":
                    yield from ex.tokens
                elif self.type == "mrc":
                    yield from split_words(ex.question)
                    yield from split_words(ex.context)
                else:
                    yield from split_words(ex.text_a)
                    yield from split_words(ex.text_b or "")

        return Counter(words())

    def data_file(self, split: str) -> Path | None:
        d = self.cfg.data
        value = {"train": d.train, "val": d.dev, "dev": d.dev, "test": d.test}.get(split)
        if not value:
            return None
        if value.startswith(BUILTIN_PREFIX):
            from e2ekit.text.data.synthetic import builtin_dir, write_builtin

            name = value[len(BUILTIN_PREFIX) :]
            if self._files is None:
                params = d.builtin.model_dump()
                root = builtin_dir(self.type, params)
                self._files = write_builtin(self.type, root, **params)
            if name not in self._files or self._files[name] is None:
                raise ConfigError(
                    f"data.{split}: unknown built-in file '{value}'; use builtin:train, "
                    "builtin:dev or builtin:test"
                )
            return Path(self._files[name])
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.{'dev' if split == 'val' else split}: no such file: {path}")
        return path

    def read_examples(self, path: Path, split: str) -> list[Any]:
        from e2ekit.text.data import read_ner, read_squad, read_text_pairs

        labelled = split != "test"
        if self.type == "mrc":
            return read_squad(path, require_answers=labelled)
        if self.type == "ner":
            return read_ner(path, require_label=labelled)
        return read_text_pairs(
            path, pair=self.type == "pair", require_label=labelled, columns=self.cfg.data.columns
        )

    def label_names(self) -> list[str]:
        """Resolved once from task.label_file / task.labels / the train file, then kept in
        the config so eval, export and a resumed run use the same ids."""
        t = self.cfg.task
        if self.type == "mrc":
            return []
        if t.label_file:
            path = Path(t.label_file)
            if not path.is_file():
                raise ConfigError(f"task.label_file: no such file: {path}")
            t.labels = [
                ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()
            ]
            t.label_file = None
        if not t.labels:
            from e2ekit.text.data import build_label_map

            train = self.data_file("train")
            if train is None:
                raise ConfigError(
                    "task.labels is not set and there is no data.train to read them from"
                )
            examples = self.read_examples(train, "train")
            if self.type == "ner":
                names = build_label_map(tag for ex in examples for tag in ex.tags)
                names = ["O", *[n for n in names if n != "O"]]
            else:
                names = build_label_map(ex.label for ex in examples)
            t.labels = names
        return list(t.labels)

    def build_dataset(self, split: str) -> Dataset | None:
        from e2ekit.text.data import check_labels, encode_mrc, encode_ner, encode_text

        key = "val" if split == "dev" else split
        if key in self._datasets:
            return self._datasets[key]
        path = self.data_file(key)
        if path is None:
            return None
        examples = self.read_examples(path, key)
        if not examples:
            raise DataError(f"{path}: no examples")
        d, tok = self.cfg.data, self.tokenizer
        names = self.label_names()
        if self.type == "mrc":
            feats, stats = encode_mrc(
                examples, tok, d.max_seq_len, d.doc_stride, d.max_query_length, key == "train"
            )
        elif self.type == "ner":
            check_labels(examples, names, path)
            feats, stats = encode_ner(examples, tok, names, d.max_seq_len)
        else:
            check_labels(examples, names, path)
            feats, stats = encode_text(examples, tok, names, d.max_seq_len)
        log.info("%s", stats.summary(f"{key} ({path.name})"))
        ds = TextDataset(feats, examples, key)
        self._datasets[key] = ds
        return ds

    def sample_lengths(self, dataset: Dataset) -> Sequence[int] | None:
        if not isinstance(dataset, TextDataset) or not self.bucket:
            return None
        return [len(f["input_ids"]) for f in dataset.features]

    def collate_fn(self, split: str) -> Callable[[list[Any]], Any]:
        from e2ekit.text.data import pad_batch

        pad_id = int(self.tokenizer.pad_token_id or 0)
        key = "val" if split == "dev" else split

        def collate(samples: list[dict]) -> dict[str, Any]:
            batch = pad_batch(samples, pad_id)
            batch["split"] = key
            return batch

        return collate

    # -- model ----------------------------------------------------------------------------
    def num_labels(self) -> int:
        return 2 if self.type == "mrc" else len(self.label_names())

    def build_model(self) -> nn.Module:
        if self.cfg.model.extend_vocab:
            _ = self.tokenizer  # fills model.added_tokens: the embeddings' size depends on it
        return build_text_model(self.cfg.model.model_dump(), self.type, self.num_labels())

    def param_groups(self, model: nn.Module) -> list[dict] | None:
        o = self.cfg.optim
        if o.layerwise_decay == 1.0 and o.head_lr is None:
            return None
        n = model.num_layers  # type: ignore[attr-defined]
        embeddings: set[str] = set()
        if self.cfg.model.added_tokens:  # new rows start untrained: they learn at head_lr
            weight = model.encoder.get_input_embeddings().weight  # type: ignore[attr-defined, operator]
            embeddings = {k for k, p in model.named_parameters() if p is weight}

        def layer_of(name: str) -> int:
            if not name.startswith("encoder.") or name in embeddings:
                return n + 1  # head (and CRF, and extended word embeddings)
            if ".embeddings." in name:
                return 0
            hit = _LAYER.search(name)
            return int(hit.group(1)) + 1 if hit else n

        return layer_decay_groups(model, o, layer_of, n + 1, o.layerwise_decay, o.head_lr)

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self, model: nn.Module, loader: Iterable[Any], device: torch.device) -> dict:
        from e2ekit.text import metrics

        net: TextModel = getattr(model, "module", model)
        ds: TextDataset | None = None
        preds: dict[int, Any] = {}
        for batch in loader:
            ds = self._datasets[batch["split"]]
            inputs = [
                batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")
            ]
            out = net.scores(*inputs)
            index = batch["index"]
            if self.type in ("cls", "pair"):
                for i, p in zip(index, out.argmax(-1).tolist(), strict=True):
                    preds[i] = p
            elif self.type == "ner":
                for i, tags in zip(index, self.decode_tags(net, out, batch), strict=True):
                    preds[i] = tags
            else:
                start, end = out[0].float().cpu().numpy(), out[1].float().cpu().numpy()
                for row, i in enumerate(index):
                    n = len(ds.features[i]["input_ids"])
                    preds[i] = (start[row, :n], end[row, :n])
        if ds is None:
            raise DataError("the evaluation split is empty")
        return self.score(ds, preds, metrics)

    def decode_tags(self, net: TextModel, emissions: torch.Tensor, batch: dict) -> list[list[int]]:
        """Word-level tag ids from sub-token emissions (first sub-token of each word)."""
        first = torch.zeros(emissions.shape[:2], dtype=torch.bool)
        for row, wids in enumerate(batch["word_ids"]):
            prev = -1
            for j, w in enumerate(wids):
                if w >= 0 and w != prev:
                    first[row, j] = True
                prev = w
        idx, mask = first_subtoken_index(first.to(emissions.device))
        em = emissions.float().gather(1, idx[..., None].expand(-1, -1, emissions.shape[-1]))
        counts = mask.sum(1).tolist()
        if net.crf is not None:
            return net.crf.decode(em, mask)  # type: ignore[union-attr, operator]
        best = em.argmax(-1).tolist()
        return [b[:c] for b, c in zip(best, counts, strict=True)]

    def score(self, ds: TextDataset, preds: dict[int, Any], metrics: Any) -> dict:
        names = self.label_names()
        if self.type in ("cls", "pair"):
            order = sorted(preds)
            labels = [ds.features[i]["label"] for i in order]
            positive = names.index("1") if self.type == "pair" and "1" in names else None
            return metrics.classification_metrics(
                [preds[i] for i in order], labels, len(names), positive=positive
            )
        if self.type == "ner":
            true_tags, pred_tags = [], []
            for i in sorted(preds):
                gold = ds.examples[i].tags
                tags = [names[t] for t in preds[i]]
                true_tags.append(gold)
                pred_tags.append((tags + ["O"] * len(gold))[: len(gold)])  # truncated words: O
            return metrics.entity_metrics(true_tags, pred_tags, self.cfg.task.scheme)
        from e2ekit.text.runner import best_answers

        order = sorted(preds)
        best, _ = best_answers(
            ds.examples,
            [ds.features[i] for i in order],
            [preds[i][0] for i in order],
            [preds[i][1] for i in order],
            n_best=self.cfg.data.n_best,
            max_answer_length=self.cfg.data.max_answer_length,
        )
        refs = {ex.qid: [a["text"] for a in ex.answers] for ex in ds.examples}
        return metrics.squad_em_f1({q: a["text"] for q, a in best.items()}, refs)

    # -- deployment ---------------------------------------------------------------------------
    def _tokenizer_source(self) -> Path:
        """The tokenizer folder; with added tokens, a cached copy that includes them."""
        added = self.cfg.model.added_tokens
        if not added:
            return self._tokenizer_dir()
        return saved_tokenizer_dir(self._tokenizer_dir(), self.tokenizer, added)

    def export_spec(self, model: nn.Module) -> ExportSpec:
        net: TextModel = getattr(model, "module", model)
        tok = self.tokenizer
        length = self.cfg.export.sample_seq_len
        gen = torch.Generator().manual_seed(0)

        added = self.cfg.model.added_tokens
        high = len(tok) if added else min(tok.vocab_size, 20000)  # added ids are the last

        # ordinary word ids: past BERT's special and unused block when the vocab has one
        low = 1000 if high > 2000 else min(high - 1, 5)

        def sample(batch: int, n: int) -> dict[str, torch.Tensor]:
            ids = torch.randint(low, high, (batch, n), generator=gen)
            mask = torch.ones(batch, n, dtype=torch.long)
            mask[-1, n - n // 4 :] = 0  # one padded row proves the mask is honoured
            types = torch.zeros(batch, n, dtype=torch.long)
            types[:, n // 2 :] = 1 if self.type in ("pair", "mrc") else 0
            return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

        outputs = OUTPUTS[self.type]
        axes = {
            k: {0: "batch", 1: "sequence"}
            for k in ("input_ids", "attention_mask", "token_type_ids")
        }
        for name in outputs:
            axes[name] = (
                {0: "batch"} if self.type in ("cls", "pair") else {0: "batch", 1: "sequence"}
            )
        d = self.cfg.data
        deploy: dict[str, Any] = {
            "kit": "text",
            "task": self.type,
            "labels": self.label_names(),
            "scheme": self.cfg.task.scheme,
            "tokenizer": ".",
            # where `predict/serve --weights` (no export folder) loads the tokenizer from
            "tokenizer_source": str(self._tokenizer_source().resolve()),
            "max_seq_len": d.max_seq_len,
            "doc_stride": d.doc_stride,
            "max_query_length": d.max_query_length,
            "n_best": d.n_best,
            "max_answer_length": d.max_answer_length,
            "pad_token_id": int(tok.pad_token_id or 0),
        }
        if net.crf is not None:
            arrays = net.crf.transition_arrays()  # type: ignore[operator]
            deploy["crf"] = {k: v.tolist() for k, v in arrays.items()}
        return ExportSpec(
            module=TextInference(net).eval(),
            example_inputs=sample(2, length),
            parity_inputs=[sample(3, length * 2 + 3), sample(1, 5)],
            output_names=outputs,
            dynamic_axes=axes,
            deploy=deploy,
            torch_builder="e2ekit.text.task:build_inference_module",
            builder_config={
                "model": self.cfg.model.model_dump(),
                "task_type": self.type,
                "num_labels": self.num_labels(),
            },
            assets=lambda folder: tok.save_pretrained(str(folder)),
        )
