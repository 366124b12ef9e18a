"""The workloads of ``bench_train_gpu.py``: each kit's model at a real training size, its
shipped config made equal for both loops, and a fixed in-memory dataset in its sample format.

``--small`` sizes run on a CPU in seconds; the full ones are what the GPU run measures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from e2ekit.core.config import load_config
from e2ekit.core.engine.task import Task
from e2ekit.core.kit import get_kit

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ("seg", "det", "text")
SEED = 0
DATASET_SIZE = 64  # distinct samples per workload, cycled through by both loops


@dataclass(frozen=True)
class Workload:
    """One model at one input size: the shipped config it starts from and its data."""

    kit: str
    model: str
    config: str  # shipped config, relative to configs/<kit>/
    overrides: list[str]
    batch: int
    input: str
    sample: Callable[[torch.Generator], dict[str, Any]]


def seg_workload(small: bool) -> Workload:
    size, classes = (128, 4) if small else (512, 21)
    backbone = "resnet18" if small else "resnet50"

    def sample(g: torch.Generator) -> dict[str, Any]:
        return {
            "image": torch.randn(3, size, size, generator=g),
            "label": torch.randint(0, classes, (size, size), generator=g),
        }

    return Workload(
        "seg",
        f"deeplabv3p_{backbone}",
        "deeplabv3p_resnet50.yaml",
        [f"model.backbone.type={backbone}", f"data.num_classes={classes}", "data.class_names=null"],
        4 if small else 8,
        f"{size}x{size}",
        sample,
    )


def det_workload(small: bool) -> Workload:
    size, classes = (160, 4) if small else (416, 80)
    model = "yolov3_tiny" if small else "yolov3_darknet53"

    def sample(g: torch.Generator) -> dict[str, Any]:
        n = int(torch.randint(1, 9, (), generator=g))
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = (torch.rand(n, 2, generator=g) * 0.25 + 0.05) * size
        return {
            "image": torch.randn(3, size, size, generator=g),
            "boxes": torch.cat([xy, (xy + wh).clamp(max=size)], dim=1),
            "labels": torch.randint(0, classes, (n,), generator=g),
        }

    return Workload(
        "det",
        model,
        "yolov3_darknet53.yaml",
        [f"model.type={model}", f"data.num_classes={classes}"],
        4 if small else 16,
        f"{size}x{size}",
        sample,
    )


def text_workload(small: bool, bert_dir: Path) -> Workload:
    hidden, layers, heads, seq = (128, 2, 2, 64) if small else (768, 12, 12, 128)
    vocab = 30522

    def sample(g: torch.Generator) -> dict[str, Any]:
        ids = torch.randint(1000, vocab, (seq - 2,), generator=g).tolist()
        return {
            "input_ids": [101, *ids, 102],
            "token_type_ids": [0] * seq,
            "label": int(torch.randint(0, 2, (), generator=g)),
        }

    scratch = (
        f"{{hidden_size: {hidden}, num_hidden_layers: {layers}, num_attention_heads: {heads}, "
        f"intermediate_size: {4 * hidden}}}"
    )
    return Workload(
        "text",
        f"bert_{layers}l_{hidden}h",
        "quick.yaml",
        [
            f"model.pretrained={bert_dir}",
            f"model.from_scratch={scratch}",
            "task.labels=[negative, positive]",
            f"data.max_seq_len={seq}",
            "data.bucket=0",
        ],
        8 if small else 32,
        f"seq {seq}",
        sample,
    )


def write_bert_dir(folder: Path) -> Path:
    """BERT-base's config.json and a 30522-entry vocab.txt (the model is randomly
    initialised: ``model.from_scratch``; nothing is downloaded)."""
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = special + [f"[unused{i}]" for i in range(30522 - len(special))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertConfig().save_pretrained(str(folder))
    return folder


class FixedSamples(Dataset):
    """``n`` random samples drawn once: both loops read the same in-memory data."""

    def __init__(self, make: Callable[[torch.Generator], dict[str, Any]], n: int) -> None:
        g = torch.Generator().manual_seed(SEED)
        self.samples = [make(g) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(self.samples[i])  # a shallow copy: collate functions may rewrap fields


def make_task(w: Workload, cfg: Any, data: Dataset) -> Task:
    """The kit's own Task, reading ``data`` instead of files (no val split)."""
    base = type(get_kit(w.kit).make_task(cfg))

    class FixedDataTask(base):  # type: ignore[misc, valid-type]
        def build_dataset(self, split: str) -> Dataset | None:
            return data if split == "train" else None

    return FixedDataTask(cfg)


def build_config(w: Workload, device: str, amp: str, total_steps: int) -> Any:
    """The shipped config, made equal for both loops: AdamW at a constant LR, no EMA,
    clipping or accumulation, no evaluation or checkpoint inside the timed steps."""
    kit = get_kit(w.kit)
    common = [
        f"seed={SEED}",
        f"device={device}",
        f"train.amp={amp}",
        f"train.batch_size={w.batch}",
        f"train.max_steps={total_steps}",
        "train.epochs=null",
        f"train.eval_interval={10**9}",
        "train.save_interval=0",
        "train.log_interval=10",
        "train.num_workers=0",
        "train.grad_accum=1",
        "train.clip_grad_norm=null",
        "train.ema.enabled=false",
        "train.channels_last=false",
        "train.tensorboard=false",
        "train.progress=false",
        "optim.type=adamw",
        "optim.lr=0.0001",
        "optim.weight_decay=0.01",
        "sched.type=constant",
        "sched.warmup_steps=0",
        "sched.warmup_ratio=0.0",
    ]
    path = ROOT / "configs" / w.kit / w.config
    return load_config(path, kit.schema, [*w.overrides, *common])
