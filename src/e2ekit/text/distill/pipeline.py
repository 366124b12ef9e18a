"""``e2ekit text distill``: teacher -> augmented transfer set -> students -> exports + table.

1. the teacher (run folder, checkpoint or export) is exported if needed and loaded on
   onnxruntime;
2. the training rows are augmented (masking, neighbour replacement, n-gram sampling) and
   joined by any unlabelled in-domain text; the teacher labels every row (its logits);
3. each student (bow, cnn, bilstm: a word vocabulary of their own; tiny: the teacher's
   tokenizer and layers) learns from those soft labels and, with ``distill.baseline``, a
   copy of it from the labels alone;
4. every model is exported, measured as served (dev accuracy, size, batch-1 latency,
   batch-64 throughput) and written to ``distill.json`` and ``table.md``.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.core.fileio import atomic_open
from e2ekit.core.logs import log
from e2ekit.text.config import TextConfig
from e2ekit.text.distill.report import dev_accuracy, onnx_size, speed, write_table
from e2ekit.text.distill.teacher import Teacher, load_teacher
from e2ekit.text.distill.training import StudentFit, encode_items, fit_student

WORD_STUDENTS = ("bow", "cnn", "bilstm")
IGNORE = -100


def add_distill_flags(p: ArgumentParser) -> None:
    p.add_argument("--teacher", help="the fine-tuned teacher (wins over distill.teacher)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace what an earlier distill left in --out"
    )


def _out_dir(args: Namespace, name: str) -> Path:
    from e2ekit.core.engine.run import default_run_dir

    out = Path(args.out) if args.out else default_run_dir("text", f"{name}-distill")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder; give a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not getattr(args, "overwrite", False):
            raise ConfigError(
                f"--out {out} is not empty; give a new folder or pass --overwrite to replace it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _items(examples: list[Any]) -> list[Any]:
    return [(e.text_a, e.text_b) if e.text_b is not None else e.text_a for e in examples]


def _label_ids(examples: list[Any], names: list[str], source: str) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    out = np.full(len(examples), IGNORE, dtype=np.int64)
    for i, ex in enumerate(examples):
        if ex.label is None:
            continue
        if ex.label not in index:
            raise DataError(
                f"{source}: line {ex.line}: label '{ex.label}' is not one of the teacher's "
                f"labels {names}; distil on data labelled like the teacher's"
            )
        out[i] = index[ex.label]
    return out


def _texts(items: list[Any]) -> list[str]:
    return [t for it in items for t in (it if isinstance(it, tuple) else (it,))]


def _neighbours(cfg: TextConfig, teacher: Teacher, runner: Any, words: set[str]) -> Any:
    from e2ekit.text.distill.augment import Neighbours

    aug = cfg.distill.augment
    if aug.word_vectors:
        return Neighbours.from_word2vec_text(Path(aug.word_vectors), aug.neighbours, keep=words)
    table = _token_embeddings(teacher)
    if table is None:
        log.warning("distill: no token embeddings found in the teacher; words are not replaced")
        return None
    return Neighbours.from_token_embeddings(runner.tokenizer, table, aug.neighbours, keep=words)


def _token_embeddings(teacher: Teacher) -> np.ndarray | None:
    """The teacher's input token embeddings: from its model, else the export's largest
    2-D initializer with one row per token."""
    if teacher.model is not None:
        emb = teacher.model.encoder.get_input_embeddings()  # type: ignore[union-attr]
        return emb.weight.detach().float().numpy()
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(teacher.export_dir / "model.onnx"))
    from e2ekit.text.models import load_tokenizer

    rows = len(load_tokenizer(teacher.export_dir))
    for init in model.graph.initializer:
        if len(init.dims) == 2 and rows - 8 <= init.dims[0] <= rows + 8:
            return numpy_helper.to_array(init).astype(np.float32)
    return None


def _word_counts(items: list[Any]) -> set[str]:
    from e2ekit.text.distill.augment import split_words

    return {w for t in _texts(items) for w in split_words(t)}


def _write_transfer(path: Path, items: list[Any], labels: np.ndarray, logits: np.ndarray) -> None:
    with atomic_open(path) as fh:
        for it, y, z in zip(items, labels, logits, strict=True):
            row: dict[str, Any] = (
                {"text_a": it[0], "text_b": it[1]} if isinstance(it, tuple) else {"text_a": it}
            )
            if y >= 0:
                row["label"] = int(y)
            row["logits"] = [round(float(v), 5) for v in z]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def augment_settings(cfg: TextConfig) -> Any:
    """``distill.augment`` as the augmenter's settings (seeded by the run's seed)."""
    from e2ekit.text.distill.augment import AugmentSettings

    a = cfg.distill.augment
    return AugmentSettings(
        factor=a.factor,
        mask_prob=a.mask_prob,
        replace_prob=a.replace_prob,
        ngram_prob=a.ngram_prob,
        ngram_max=a.ngram_max,
        seed=cfg.seed,
    )


def student_fit(cfg: TextConfig, kind: str) -> StudentFit:
    """How ``kind`` is trained: Adam for word students, AdamW at ``tiny_lr`` for tiny."""
    d, s = cfg.distill, cfg.distill.student
    tiny = kind == "tiny"
    return StudentFit(
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.tiny_lr if tiny else s.lr,
        temperature=d.temperature,
        soft_weight=d.soft_weight,
        soft_loss=d.soft_loss,
        optimizer="adamw" if tiny else "adam",
        seed=cfg.seed,
    )


def cmd_distill(kit: Any, args: Namespace) -> dict[str, Any]:
    from e2ekit.core.engine.env import seed_everything
    from e2ekit.core.verbs import load_run_config
    from e2ekit.text.task import TextTask

    cfg, name = load_run_config(kit, args)
    d = cfg.distill
    task_type = cfg.task.type
    if task_type not in ("cls", "pair"):
        raise ConfigError(f"task.type={task_type}: distill trains cls and pair students")
    teacher_path = args.teacher or d.teacher
    if not teacher_path:
        raise ConfigError("distill needs a teacher: --teacher RUN_DIR or -o distill.teacher=...")
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    task = TextTask(cfg)
    train_file, dev_file = task.data_file("train"), task.data_file("val")
    if train_file is None or dev_file is None:
        raise ConfigError("distill needs data.train and data.dev (dev rows make the table)")
    train_ex = task.read_examples(train_file, "train")
    dev_ex = task.read_examples(dev_file, "val")
    out = _out_dir(args, name)
    try:
        return _distill_into(out, cfg, args, train_file, dev_file, train_ex, dev_ex, t_start)
    except BaseException:  # a failed or interrupted distill leaves no half-written folder
        shutil.rmtree(out, ignore_errors=True)
        raise


def _distill_into(
    out: Path,
    cfg: TextConfig,
    args: Namespace,
    train_file: Path,
    dev_file: Path,
    train_ex: list[Any],
    dev_ex: list[Any],
    t_start: float,
) -> dict[str, Any]:
    """Everything after the output folder exists: teacher, transfer set, students, table."""
    from e2ekit.text.distill.augment import augment, read_unlabeled

    d = cfg.distill
    task_type = cfg.task.type
    teacher_path = args.teacher or d.teacher
    teacher = load_teacher(
        teacher_path, out / "teacher", task_type, need_model="tiny" in d.students
    )
    names = list(teacher.deploy["labels"])
    runner_t = _runner(teacher.export_dir, cfg)

    items = _items(train_ex)
    labels = _label_ids(train_ex, names, str(train_file))
    aug = d.augment
    extra: list[Any] = []
    if aug.unlabeled:
        extra = read_unlabeled(Path(aug.unlabeled), pair=task_type == "pair")
    variants: list[Any] = []
    if aug.factor > 0:
        settings = augment_settings(cfg)
        vocab = _word_counts(items + extra)
        neighbours = _neighbours(cfg, teacher, runner_t, vocab) if aug.replace_prob > 0 else None
        variants = augment(items, settings, neighbours, mask_token="[UNK]")
    transfer = items + variants + extra
    t_labels = np.concatenate([labels, np.full(len(variants) + len(extra), IGNORE, np.int64)])
    log.info(
        "transfer set: %d rows (%d training, %d augmented, %d unlabelled)",
        len(transfer),
        len(items),
        len(variants),
        len(extra),
    )
    logits = _teacher_logits(runner_t, transfer, d.teacher_batch_size)
    _write_transfer(out / "transfer.jsonl", transfer, t_labels, logits)

    dev_items = _items(dev_ex)
    dev_labels = _label_ids(dev_ex, names, str(dev_file))
    has = dev_labels >= 0
    dev_items = [it for it, ok in zip(dev_items, has, strict=True) if ok]
    dev_labels = dev_labels[has]
    rows = [_measure("teacher", "-", teacher.export_dir, cfg, dev_items, dev_labels)]
    n_orig = len(items)
    word_tok = None
    word_feats: list[dict] = []
    for kind in d.students:
        modes = (["labels"] if d.baseline else []) + ["distilled"]
        for mode in modes:
            torch.manual_seed(cfg.seed)
            soft = mode == "distilled"
            n = len(transfer) if soft else n_orig
            folder = out / "students" / (kind if soft else f"{kind}_labels")
            if kind == "tiny":
                model, feats, export = _tiny(teacher, cfg, transfer[:n], runner_t)
                fit = student_fit(cfg, kind)
                pad = runner_t.pad_id
                call = _tiny_forward
            else:
                if word_tok is None:
                    word_tok, word_feats = _word_side(cfg, transfer)
                model = _word_student(cfg, kind, word_tok, len(names), task_type)
                feats = word_feats[:n]
                fit = student_fit(cfg, kind)
                pad = 0
                call = None
                export = _word_exporter(cfg, kind, mode, word_tok, names, task_type)
            stats = fit_student(
                model,
                feats,
                t_labels[:n],
                logits[:n] if soft else None,
                fit,
                pad_id=pad,
                desc=f"{kind} ({mode})",
                forward=call,
            )
            export(model, folder)
            row = _measure(kind, mode, folder, cfg, dev_items, dev_labels)
            row["train_seconds"] = stats["seconds"]
            rows.append(row)
            log.info("%s (%s): dev accuracy %.4f", kind, mode, row["accuracy"])
    base = rows[0]["latency_ms_b1"]
    for row in rows:
        row["speedup_b1"] = round(base / row["latency_ms_b1"], 1) if row["latency_ms_b1"] else None
    result = {
        "task": task_type,
        "labels": names,
        "train": str(train_file),
        "dev": str(dev_file),
        "dev_rows": len(dev_labels),
        "transfer_rows": {"training": n_orig, "augmented": len(variants), "unlabeled": len(extra)},
        "teacher": str(teacher_path),
        "settings": d.model_dump(),
        "models": rows,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    with atomic_open(out / "distill.json") as fh:
        fh.write(json.dumps(result, indent=2) + "\n")
    table = write_table(out, rows, f"Distillation on {dev_file} ({len(dev_labels)} dev rows)")
    summary: dict[str, Any] = {"out": str(out), "table": str(table)}
    summary["teacher_accuracy"] = round(rows[0]["accuracy"], 4)
    for row in rows[1:]:
        key = row["model"] + ("" if row["trained_on"] == "distilled" else "_labels")
        summary[f"{key}_accuracy"] = round(row["accuracy"], 4)
        if row["trained_on"] == "distilled":
            summary[f"{row['model']}_speedup_b1"] = row["speedup_b1"]
    return summary


def _runner(export_dir: Path, cfg: TextConfig) -> Any:
    from e2ekit.core.infer import Predictor
    from e2ekit.text.runner import TextRunner

    return TextRunner(Predictor(export_dir, num_threads=cfg.infer.num_threads))


def _teacher_logits(runner: Any, items: list[Any], batch: int) -> np.ndarray:
    """The teacher's logits of every transfer row, ``batch`` rows per model call.

    Rows go to the teacher shortest first (n-gram variants are short), so a batch pads to
    a length close to its own rows' and not to the longest row of a mixed chunk."""
    from e2ekit.core.progress import progress

    runner.batch_size = batch
    size = [len(it[0]) + len(it[1]) if isinstance(it, tuple) else len(it) for it in items]
    order = np.argsort(np.asarray(size, dtype=np.int64), kind="stable")
    chunk = batch * 16
    parts = []
    bar = progress(total=len(items), desc="teacher labels", unit="row")
    try:
        for s in range(0, len(items), chunk):
            rows = order[s : s + chunk]
            parts.append(runner.class_logits([items[i] for i in rows]))
            bar.update(len(rows))
    finally:
        bar.close()
    logits = np.concatenate(parts).astype(np.float32)
    out = np.empty_like(logits)
    out[order] = logits  # back to the transfer set's order
    return out


def _measure(
    model: str, mode: str, folder: Path, cfg: TextConfig, items: list[Any], labels: np.ndarray
) -> dict[str, Any]:
    runner = _runner(folder, cfg)
    return {
        "model": model,
        "trained_on": mode,
        "accuracy": dev_accuracy(runner, items, labels),
        **onnx_size(folder),
        **speed(runner, items, cfg.distill.bench_samples),
        "export": str(folder),
    }


# -- word-level students (bow, cnn, bilstm) ---------------------------------------------------
def _word_side(cfg: TextConfig, transfer: list[Any]) -> tuple[Any, list[dict]]:
    from e2ekit.text.distill.word_tokenizer import build_word_tokenizer

    s = cfg.distill.student
    tok = build_word_tokenizer(_texts(transfer), max_size=s.vocab_size, min_freq=s.min_freq)
    return tok, encode_items(tok, transfer, s.max_seq_len)


def _word_student(cfg: TextConfig, kind: str, tok: Any, num_labels: int, task_type: str) -> Any:
    from e2ekit.text.distill.students import StudentSpec, build_student, init_embeddings

    s = cfg.distill.student
    spec = StudentSpec(
        kind=kind,
        vocab_size=len(tok),
        num_labels=num_labels,
        pair=task_type == "pair",
        embed_dim=s.embed_dim,
        hidden=s.hidden,
        kernel_sizes=tuple(s.kernel_sizes),
        dropout=s.dropout,
        pad_id=0,
    )
    model = build_student(spec)
    vectors = cfg.distill.augment.word_vectors
    if vectors:
        from e2ekit.text.distill.augment import read_word_vectors

        words, table = read_word_vectors(Path(vectors), keep=set(tok.get_vocab()))
        try:
            init_embeddings(model, tok.get_vocab(), words, table)
        except ValueError as exc:
            raise ConfigError(
                f"distill.augment.word_vectors: {exc}; set "
                "distill.student.embed_dim to the file's width"
            ) from exc
    return model


def _word_exporter(
    cfg: TextConfig, kind: str, mode: str, tok: Any, names: list[str], task_type: str
) -> Any:
    from e2ekit.core.export import export_onnx

    s = cfg.distill.student

    def sample(batch: int, n: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(batch * 1000 + n)
        ids = torch.randint(5, max(len(tok), 6), (batch, n), generator=gen)
        mask = torch.ones(batch, n, dtype=torch.long)
        mask[-1, n - n // 4 :] = 0
        ids[mask == 0] = 0
        types = torch.zeros(batch, n, dtype=torch.long)
        if task_type == "pair":
            types[:, n // 2 :] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def export(model: Any, folder: Path) -> None:
        axes = {
            k: {0: "batch", 1: "sequence"}
            for k in ("input_ids", "attention_mask", "token_type_ids")
        }
        axes["logits"] = {0: "batch"}
        deploy = {
            "kit": "text",
            "task": task_type,
            "labels": names,
            "tokenizer": ".",
            "max_seq_len": s.max_seq_len,
            "pad_token_id": 0,
            "student": {"kind": kind, "trained_on": mode, "vocab_size": len(tok)},
        }
        with warnings.catch_warnings():  # parity below runs other batch sizes and lengths
            warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch")
            export_onnx(
                model.eval(),
                sample(2, 12),
                folder,
                output_names=["logits"],
                dynamic_axes=axes,
                deploy=deploy,
                opset=cfg.export.opset,
                parity_inputs=[sample(3, 29), sample(1, 4)],
                atol=cfg.export.atol,
                assets=lambda d: tok.save_pretrained(str(d)),
            )

    return export


# -- the tiny transformer student -------------------------------------------------------------
def _tiny(
    teacher: Teacher, cfg: TextConfig, items: list[Any], runner_t: Any
) -> tuple[Any, list[dict], Any]:
    from e2ekit.text.distill.tiny import tiny_from_teacher
    from e2ekit.text.task import TextTask

    assert teacher.model is not None and teacher.cfg is not None  # load_teacher made sure
    model, tiny_cfg = tiny_from_teacher(teacher.model, teacher.cfg, cfg.distill.student.tiny_layers)
    feats = encode_items(runner_t.tokenizer, items, int(teacher.deploy["max_seq_len"]))

    def export(net: Any, folder: Path) -> None:
        spec = TextTask(tiny_cfg).export_spec(net.eval())
        spec.export(folder, opset=cfg.export.opset, atol=cfg.export.atol)

    return model, feats, export


def _tiny_forward(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.scores(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
