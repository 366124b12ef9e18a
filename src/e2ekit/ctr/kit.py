"""ctr kit wiring: its own train/eval/export verbs (streamed data, fused tables), predict to
``predictions.tsv``, and ``POST /predict`` over raw Criteo rows."""

from __future__ import annotations

import os
from argparse import ArgumentParser, Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from e2ekit.core.engine.checkpoint import load_checkpoint, model_state
from e2ekit.core.errors import ConfigError, E2EError
from e2ekit.core.fileio import atomic_open
from e2ekit.core.kit import Kit, Verb
from e2ekit.core.logs import jsonable, log
from e2ekit.core.progress import progress
from e2ekit.core.serve import BadRequest, Endpoint
from e2ekit.core.state_fit import load_state_strict
from e2ekit.core.verbs import default_export_dir, folder_out, load_run_config
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.deploy import cmd_deploy, deploy_flags
from e2ekit.ctr.task import CtrTask

MAX_LINE_CHARS = 10_000
DEMO_ROWS = [
    "\t".join(["5", "", "3", "1", "120", "", "2", "0", "7", "", "1", "", "4"])
    + "\t"
    + "\t".join(f"{(i * 2654435761) % 2**32:08x}" for i in range(26)),
    "\t".join(["", "1", "", "", "9", "44", "", "3", "", "1", "", "0", ""])
    + "\t"
    + "\t".join("" if i % 5 == 0 else f"{(i * 40503 + 7) % 2**32:08x}" for i in range(26)),
]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not ignored

    rows: list[str] = Field(
        ...,
        description="Criteo rows as TSV text: I1..I13, C1..C26 (39 fields; a leading label "
        "column is accepted and ignored)",
    )


def runner_options(predictor: Any) -> dict[str, Any]:
    """The store (``infer.kv``) and version watch (``serve.watch_s``) the predictor was
    opened with; the schema's defaults for one built without settings."""
    from e2ekit.ctr.config import CtrInfer, CtrServe

    settings = getattr(predictor, "settings", None)
    infer = getattr(settings, "infer", None)
    serve = getattr(settings, "serve", None)
    return {
        "kv": infer.kv if isinstance(infer, CtrInfer) else CtrInfer().kv,
        "watch_s": serve.watch_s if isinstance(serve, CtrServe) else CtrServe().watch_s,
    }


def _load(kit: Kit, args: Namespace) -> tuple[CtrConfig, dict[str, Any], Any, Any]:
    """Config, checkpoint, model and stepper of ``--weights``."""
    from e2ekit.ctr.engine.stepper import Stepper, build_model

    if not args.weights:
        raise E2EError("--weights is required: a checkpoint (best.pt/last.pt) or a run folder")
    cfg, _ = load_run_config(kit, args)
    path = Path(args.weights)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
    ckpt = load_checkpoint(path)
    model = build_model(cfg)
    load_state_strict(model, model_state(ckpt), f"--weights {args.weights}")
    stepper = Stepper(model, cfg)
    if "stepper" in ckpt:
        stepper.load_state_dict(ckpt["stepper"])
    return cfg, ckpt, model, stepper


def cmd_train(kit: Kit, args: Namespace) -> dict[str, Any]:
    from e2ekit.core.engine.run import RunOptions
    from e2ekit.ctr.engine.fit import CtrTrainer

    cfg, name = load_run_config(kit, args)
    options = RunOptions(
        config_name=name,
        resume=bool(args.resume),
        weights=args.weights,
        overwrite=bool(getattr(args, "overwrite", False)),
    )
    trainer = CtrTrainer(cfg, args.resume or args.out, options)
    if getattr(args, "stream", None):
        from e2ekit.ctr.engine.stream import fit_stream

        result = fit_stream(trainer, args.stream)
    else:
        result = trainer.fit()
    if trainer.is_main:
        log.info("run folder: %s", trainer.out_dir)
    return result


def cmd_eval(kit: Kit, args: Namespace) -> dict[str, Any]:
    import json

    from e2ekit.core.engine.env import resolve_device
    from e2ekit.ctr.data.splits import make_stream, split_paths
    from e2ekit.ctr.engine.stepper import evaluate

    cfg, _, model, _ = _load(kit, args)
    device = resolve_device(cfg.device)
    split = args.split
    paths = split_paths(cfg, split) if split in ("train", "val", "test") else None
    if paths is None:
        if split in ("train", "val", "test"):
            raise ConfigError(f"no data.{split} configured; set it with -o data.{split}=PATH")
        raise ConfigError(f"--split {split}: use train, val or test")
    stream = make_stream(cfg, paths, train=False)
    metrics = evaluate(model.to(device), stream, desc=f"eval {split}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2) + "\n")
    metrics.pop("calibration_bins", None)
    return metrics


def cmd_export(kit: Kit, args: Namespace) -> dict[str, Any]:
    from e2ekit.core.export import quantize_int8
    from e2ekit.ctr.export import calibration_inputs, export_model

    if args.out:
        folder_out(Path(args.out))  # before the checkpoint loads: a clash is known up front
    cfg, ckpt, model, stepper = _load(kit, args)
    out = Path(args.out) if args.out else default_export_dir(kit, args.weights)
    trained = (ckpt.get("stream") or {}).get("trained") or []
    version = f"step-{ckpt.get('step', 0)}" + (
        f"-{trained[-1].replace('/', '-')}" if trained else ""
    )
    rows = stepper.rows.touched_rows() if "stepper" in ckpt else None
    report = export_model(model, cfg, out, rows=rows, version=version)
    summary: dict[str, Any] = {
        "export_dir": str(out),
        "max_abs_diff": report["onnx"]["max_abs_diff"],
        "sparse_rows": int(rows.numel())
        if rows is not None
        else int(model.tables.embedding.weight.shape[0]),
        "model_version": version,
    }
    if args.quantize or cfg.export.quantize:
        ec = cfg.export
        calib = None
        if ec.quantize_mode == "static":
            calib = calibration_inputs(model, cfg, ec.calibration_samples) or None
        int8 = quantize_int8(
            out,
            mode=ec.quantize_mode,
            calibration_inputs=calib,
            op_types=ec.quantize_op_types,
            keep_final_float=bool(ec.quantize_keep_final_float),
        )
        summary.update(int8_mode=ec.quantize_mode, int8_max_abs_diff=int8["max_abs_diff"])
    return summary


def _train_flags(p: ArgumentParser) -> None:
    p.add_argument(
        "--stream",
        metavar="DIR",
        help="train on DIR/YYYYMMDD/HH/ partitions as their donefile appears",
    )


class CtrKit(Kit[CtrConfig]):
    name = "ctr"
    schema = CtrConfig
    description = "click-through-rate models on hashed Criteo features: sync, async, streaming"

    def make_task(self, cfg: CtrConfig) -> CtrTask:
        return CtrTask(cfg)

    def verbs(self) -> dict[str, Verb]:
        """The shared verbs; train, eval and export run ctr's own engine (streamed data,
        fused sparse tables, a sparse store beside the ONNX graph)."""
        shared = super().verbs()
        return {
            **shared,
            "train": shared["train"].extend(cmd_train, _train_flags),
            "eval": shared["eval"].extend(cmd_eval),
            "export": shared["export"].extend(cmd_export),
            "deploy": Verb(
                cmd_deploy,
                "Dockerfile + Kubernetes manifests: Ray training job, Redis, autoscaled server",
                deploy_flags,
                out_help="the folder to write (required; refused when not empty)",
            ),
        }

    def predict(
        self, predictor: Any, input_path: Path, out_dir: Path, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        from e2ekit.ctr.runner import CtrRunner

        runner = CtrRunner(predictor, kv=runner_options(predictor)["kv"])
        try:
            return self._predict(runner, input_path, out_dir)
        finally:
            runner.close()

    def _predict(self, runner: Any, input_path: Path, out_dir: Path) -> dict[str, Any]:
        from e2ekit.ctr.metrics import CtrMetrics

        reader = runner.open_reader(input_path)
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics = CtrMetrics()
        rows = 0
        bar = progress(desc="predict", unit="row", unit_scale=True)
        try:
            with atomic_open(out_dir / "predictions.tsv") as fh:
                fh.write("prob\tlabel\n")
                for batch in reader:
                    probs = runner.score(batch["dense"], batch["sparse"])
                    labels = batch["label"]
                    fh.writelines(f"{p:.6f}\t{y}\n" for p, y in zip(probs, labels, strict=True))
                    metrics.update(labels, probs)
                    rows += len(probs)
                    bar.update(len(probs))
        finally:
            bar.close()
        if rows == 0:
            raise E2EError(f"--input {input_path}: no valid rows to predict")
        result = metrics.compute()
        summary = {
            "rows": rows,
            "output": str(out_dir / "predictions.tsv"),
            "mean_prob": result["ctr_predicted"],
            "auc": result["auc"],
            "logloss": result["logloss"],
            "model_version": runner.version,
        }
        if reader.stats.bad_rows:
            summary["bad_rows"] = reader.stats.bad_rows
            log.warning("%s", reader.stats.summary())
        return summary

    def endpoints(self, predictor: Any) -> list[Endpoint]:
        from e2ekit.ctr.runner import CtrRunner

        runner = CtrRunner(predictor, **runner_options(predictor))

        def to_items(req: PredictRequest) -> list[tuple[np.ndarray, np.ndarray]]:
            if not req.rows:
                raise BadRequest("'rows' must be a non-empty list of Criteo TSV rows", 422)
            for i, line in enumerate(req.rows):
                if len(line) > MAX_LINE_CHARS:
                    raise BadRequest(
                        f"rows[{i}] has {len(line)} characters; at most {MAX_LINE_CHARS}", 413
                    )
            feats = runner.parse(req.rows)  # ValueError -> 422 naming the row
            return list(zip(feats["dense"], feats["sparse"], strict=True))

        def run_batch(items: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[float, Any]]:
            dense = np.stack([d for d, _ in items])
            sparse = np.stack([s for _, s in items])
            probs, version = runner.score_versioned(dense, sparse)  # one table/model pair
            return [(float(p), version) for p in probs]

        def to_response(req: PredictRequest, results: list[tuple[float, Any]]) -> dict[str, Any]:
            # a request split over batches around a swap: the newer version, its last batch's
            return {"probs": [p for p, _ in results], "model_version": results[-1][1]}

        def info() -> dict[str, Any]:
            return {"model_version": runner.version}

        return [Endpoint("/predict", PredictRequest, to_items, run_batch, to_response, info=info)]

    def demo_input(self, cfg: CtrConfig, folder: Path) -> Path:
        from e2ekit.ctr.data.splits import split_paths

        source = split_paths(cfg, "val")
        if source is None or not os.path.isfile(source):
            raise ConfigError("the ctr demo predicts on data.val; set it to a file")
        out = folder / "predict_input.tsv"
        with open(source, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i >= 2000:
                    break
                dst.write(line)
        return out

    def demo_request(self, deploy: dict[str, Any]) -> dict[str, Any]:
        return {"rows": list(DEMO_ROWS)}


KIT = CtrKit()
