"""The verbs every kit shares (train, eval, export, predict, serve), kit-agnostic."""

from __future__ import annotations

import json
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2ekit.core.config import Provenance, apply_overrides, load_config, validate
from e2ekit.core.engine import Trainer, eval_loader, run_evaluation
from e2ekit.core.engine.checkpoint import load_checkpoint, model_state
from e2ekit.core.engine.env import resolve_device, seed_everything
from e2ekit.core.errors import CheckpointError, ConfigError, E2EError
from e2ekit.core.kit import C, Kit
from e2ekit.core.logs import jsonable, log
from e2ekit.core.paths import resolve_config
from e2ekit.core.schema import RunConfig, Strict
from e2ekit.core.serve.settings import ServeSettings


def load_run_config(kit: Kit[C], args: Namespace) -> tuple[C, str]:
    """``-c`` (default: the kit's quick config) or, for --resume/--weights, the run's own."""
    source: Path | None = None
    if getattr(args, "resume", None):
        source = Path(args.resume) / "config.yaml"
        if not source.is_file():
            raise CheckpointError(f"--resume {args.resume}: no config.yaml there (not a run dir?)")
    elif args.config is None and getattr(args, "weights", None):
        w = Path(args.weights)
        run_dir = w if w.is_dir() else w.parent
        if (run_dir / "config.yaml").is_file():
            source = run_dir / "config.yaml"
    if source is None:
        source = resolve_config(kit.name, args.config)
    cfg = load_config(source, kit.schema, args.override)
    return cfg, source.stem if source.stem != "config" else source.parent.name


def _load_model(kit: Kit, cfg: RunConfig, weights: str | None) -> tuple[Any, torch.nn.Module]:
    if not weights:
        raise E2EError("--weights is required: a checkpoint (best.pt/last.pt) or a run folder")
    task = kit.make_task(cfg)
    seed_everything(cfg.seed)
    model = task.build_model()
    ckpt = load_checkpoint(weights)
    try:
        model.load_state_dict(model_state(ckpt))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"--weights {weights} does not fit this model config: {first}"
        ) from None
    return task, model.eval()


def cmd_train(kit: Kit, args: Namespace) -> dict[str, Any]:
    cfg, name = load_run_config(kit, args)
    out = args.resume or args.out
    trainer = Trainer(
        kit.make_task(cfg),
        out,
        config_name=name,
        resume=bool(args.resume),
        weights=args.weights,
        overwrite=bool(getattr(args, "overwrite", False)),
    )
    metrics = trainer.fit()
    if trainer.is_main:
        log.info("run folder: %s", trainer.out_dir)
    return metrics


def cmd_eval(kit: Kit, args: Namespace) -> dict[str, Any]:
    cfg, _ = load_run_config(kit, args)
    task, model = _load_model(kit, cfg, args.weights)
    device = resolve_device(cfg.device)
    loader = eval_loader(task, args.split)
    if loader is None:
        raise ConfigError(f"no '{args.split}' data configured for kit {kit.name}")
    t0 = time.perf_counter()
    metrics = run_evaluation(task, model.to(device), loader, device)
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 3)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2) + "\n")
    return metrics


def default_export_dir(kit: Kit, weights: str) -> Path:
    w = Path(weights)
    return (w if w.is_dir() else w.parent) / "export"


def cmd_export(kit: Kit, args: Namespace) -> dict[str, Any]:
    from e2ekit.core.export import quantize_int8

    cfg, _ = load_run_config(kit, args)
    task, model = _load_model(kit, cfg, args.weights)
    spec = task.export_spec(model)
    out = Path(args.out) if args.out else default_export_dir(kit, args.weights)
    report = spec.export(out, opset=cfg.export.opset, atol=cfg.export.atol)
    summary = {"export_dir": str(out), "max_abs_diff": report["onnx"]["max_abs_diff"]}
    if args.quantize or cfg.export.quantize:
        mode = cfg.export.quantize_mode
        calib = None
        if mode == "static":
            calib = task.calibration_inputs(cfg.export.calibration_samples)
            if calib is None:  # quantize_int8 then calibrates on sample_inputs.npz
                log.warning(
                    "static int8: kit %s gives no calibration data; calibrating on the "
                    "export's sample inputs, which may not look like real inputs",
                    kit.name,
                )
        int8 = quantize_int8(
            out,
            mode=mode,
            calibration_inputs=calib,
            op_types=cfg.export.quantize_op_types,
            keep_final_float=(
                spec.int8_keep_final_float
                if cfg.export.quantize_keep_final_float is None
                else cfg.export.quantize_keep_final_float
            ),
        )
        summary["int8_mode"] = mode
        summary["int8_max_abs_diff"] = int8["max_abs_diff"]
        fractions = [
            o["mismatch_fraction"] for o in int8["per_output"].values() if "mismatch_fraction" in o
        ]
        if fractions:
            summary["int8_mismatch_fraction"] = max(fractions)
        changed = [
            o["length_changed_cases"] for o in int8["per_output"].values() if "variable_length" in o
        ]
        if changed:  # e.g. boxes after NMS: element diffs do not apply, judge int8 by AP
            summary["int8_cases_length_changed"] = f"{max(changed)}/{int8['cases']}"
        summary["int8_size_ratio"] = int8["size_ratio"]
    return summary


class ModulePredictor:
    """A PyTorch module with the Predictor interface, for ``predict --weights`` without export."""

    def __init__(self, spec: Any, device: torch.device) -> None:
        self.module = spec.module.to(device).eval()
        self.device = device
        self.input_names = list(spec.example_inputs)
        self.module_outputs = list(spec.output_names)
        self.argmax = dict(spec.argmax or {})
        self.output_names = [self.argmax.get(n, n) for n in self.module_outputs]
        self.deploy = dict(spec.deploy)
        self.backend_name = "torch-checkpoint"

    @torch.inference_mode()
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"missing model input(s) {missing}; expected {self.input_names}")
        args = [torch.as_tensor(np.asarray(inputs[n])).to(self.device) for n in self.input_names]
        out = self.module(*args)
        if isinstance(out, dict):
            out = [out[n] for n in self.output_names]
        elif isinstance(out, torch.Tensor):
            out = [out]
        result = {}
        for src, name, t in zip(self.module_outputs, self.output_names, out, strict=True):
            # an argmax output exists only in the ONNX graph: apply it here as export does
            t = t.argmax(dim=1) if src in self.argmax else t.detach().float()
            result[name] = t.cpu().numpy()
        return result

    __call__ = run


def make_predictor(kit: Kit, args: Namespace) -> Any:
    """An exported model (``--model DIR``) on onnxruntime/torch, or a checkpoint (``--weights``)."""
    if getattr(args, "model", None):
        from e2ekit.core.infer import Predictor

        backend = args.backend or "onnxruntime"
        precision = getattr(args, "precision", None) or "fp32"
        try:
            return Predictor(
                args.model, backend=backend, num_threads=args.threads, precision=precision
            )
        except FileNotFoundError as exc:
            raise E2EError(str(exc)) from None
    cfg, _ = load_run_config(kit, args)
    task, model = _load_model(kit, cfg, args.weights)
    return ModulePredictor(task.export_spec(model), resolve_device(cfg.device))


def cmd_predict(kit: Kit, args: Namespace) -> dict[str, Any]:
    if not args.input:
        raise E2EError("--input is required: a file, a folder or a list file")
    if args.input != "-" and not Path(args.input).exists():  # '-': stdin (text kit)
        raise E2EError(f"--input {args.input}: no such file or folder")
    predictor = make_predictor(kit, args)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"e2ekit-{kit.name}-pred-"))
    t0 = time.perf_counter()
    summary = kit.predict(predictor, Path(args.input), out, vars(args))
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


class ServeOnly(Strict):
    """``serve`` takes only ``-o serve.<key>=value`` overrides."""

    serve: ServeSettings = ServeSettings()


def cmd_serve(kit: Kit, args: Namespace) -> dict[str, Any]:
    from e2ekit.core.serve import create_app, run_server

    if not args.model:
        raise E2EError("--model is required: an export folder (from `export`)")
    predictor = make_predictor(kit, args)
    tree = apply_overrides({"serve": {}}, Provenance(), list(args.override or []))
    for key in ("host", "port"):
        if getattr(args, key, None) is not None:
            tree["serve"][key] = getattr(args, key)
    settings = validate(tree, ServeOnly).serve
    info = {
        "kit": kit.name,
        "model": str(Path(args.model).resolve()),
        "backend": predictor.backend_name,
    }
    app = create_app(kit.endpoints(predictor), settings, model_info=info)
    run_server(app, settings)
    return {"served": info["model"]}
