"""The verbs every kit shares (train, eval, export, predict, serve), kit-agnostic."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import create_model

from e2ekit.core.config import (
    Provenance,
    apply_overrides,
    load_config,
    load_yaml_tree,
    parse_override,
    validate,
)
from e2ekit.core.engine import Trainer, eval_loader, run_evaluation
from e2ekit.core.engine.checkpoint import load_checkpoint, model_state
from e2ekit.core.engine.env import resolve_device, seed_everything
from e2ekit.core.errors import CheckpointError, ConfigError, E2EError, did_you_mean
from e2ekit.core.fileio import staged_outputs
from e2ekit.core.kit import C, Kit
from e2ekit.core.logs import jsonable, log
from e2ekit.core.paths import resolve_config
from e2ekit.core.schema import InferConfig, RunConfig, Strict
from e2ekit.core.serve.settings import ServeSettings
from e2ekit.core.state_fit import load_state_strict


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
    cfg = load_config(source, kit.schema, args.override, kit=kit.name)
    return cfg, source.stem if source.stem != "config" else source.parent.name


def _load_model(kit: Kit, cfg: RunConfig, weights: str | None) -> tuple[Any, torch.nn.Module]:
    if not weights:
        raise E2EError("--weights is required: a checkpoint (best.pt/last.pt) or a run folder")
    task = kit.make_task(cfg)
    seed_everything(cfg.seed)
    model = task.build_model()
    load_state_strict(model, model_state(load_checkpoint(weights)), f"--weights {weights}")
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
    device = resolve_device(cfg.device)  # before loading anything: a missing GPU fails fast
    task, model = _load_model(kit, cfg, args.weights)
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
        pictures = task.eval_pictures(out)
        if pictures:
            log.info("eval pictures: %s", ", ".join(str(p) for p in pictures))
    return metrics


def default_export_dir(kit: Kit, weights: str) -> Path:
    w = Path(weights)
    return (w if w.is_dir() else w.parent) / "export"


def folder_out(out: Path) -> Path:
    """``out`` if it can become an output folder; refused up front when a file holds it."""
    if out.exists() and not out.is_dir():
        raise E2EError(f"--out {out}: exists and is not a folder; give a folder path")
    return out


def cmd_export(kit: Kit, args: Namespace) -> dict[str, Any]:
    from e2ekit.core.export import quantize_int8

    cfg, _ = load_run_config(kit, args)
    task, model = _load_model(kit, cfg, args.weights)
    spec = task.export_spec(model)
    out = folder_out(Path(args.out) if args.out else default_export_dir(kit, args.weights))
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
    """A PyTorch module with the Predictor interface, for ``predict --weights`` without export.

    Runs on ``device``: inputs go there, outputs come back as numpy arrays on the CPU.
    ``num_threads`` sets torch's (process-wide) thread count, as the export's torch backend does.
    """

    def __init__(self, spec: Any, device: torch.device, num_threads: int | None = None) -> None:
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.module = spec.module.to(device).eval()
        self.device = device
        self.num_threads = num_threads
        self.input_names = list(spec.example_inputs)
        self.module_outputs = list(spec.output_names)
        self.argmax = dict(spec.argmax or {})
        self.output_names = [self.argmax.get(n, n) for n in self.module_outputs]
        self.deploy = dict(spec.deploy)
        self.backend_name = "torch-checkpoint"
        self.settings: ExportRunConfig | None = None  # the running sections, when known

    @property
    def runtime(self) -> dict[str, Any]:
        """What runs the model, as ``Predictor.runtime`` says it for an export."""
        return {
            "backend": self.backend_name,
            "device": self.device.type,
            "precision": "fp32",
            "threads": self.num_threads,
        }

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


class ExportRunConfig(Strict):
    """The config sections that apply to a running model: how it runs (``infer``) and, for
    ``serve``, how it is served. An export (``--model DIR``) reads nothing else."""

    infer: InferConfig = InferConfig()
    serve: ServeSettings = ServeSettings()


@functools.cache
def export_run_schema(schema: type[RunConfig]) -> type[ExportRunConfig]:
    """``ExportRunConfig`` with a kit schema's own ``infer`` and ``serve`` sections: keys a
    kit adds there (ctr's store and version watch) are accepted for that kit's exports only."""
    infer = schema.model_fields["infer"].annotation
    serve = schema.model_fields["serve"].annotation
    if infer is InferConfig and serve is ServeSettings:
        return ExportRunConfig
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{schema.__name__}ExportRun",
        __base__=ExportRunConfig,
        infer=(infer, infer()),  # type: ignore[misc,operator]
        serve=(serve, serve()),  # type: ignore[misc,operator]
    )


# The runtime flags predict, serve and bench share: flag name -> (section, key).
RUNTIME_FLAGS = {
    "backend": ("infer", "backend"),
    "precision": ("infer", "precision"),
    "threads": ("infer", "num_threads"),
    "device": ("infer", "device"),
    "host": ("serve", "host"),
    "port": ("serve", "port"),
}


def _with_flags(tree: dict[str, Any], prov: Provenance, args: Namespace) -> dict[str, Any]:
    """Flags given on the command line win over ``-o`` and the config file."""
    for flag, (section, key) in RUNTIME_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            tree.setdefault(section, {})[key] = value
            prov[f"{section}.{key}"] = f"--{flag} {value}"
    return tree


def load_export_config(
    kit: Kit, args: Namespace, sections: tuple[str, ...] = ("infer",)
) -> ExportRunConfig:
    """Settings for running an export: flags, then ``-o``, then ``-c``'s ``sections``, then
    defaults. ``-c`` may be any config (a run's config.yaml too): only ``sections`` of it
    apply; a ``-o`` key outside them is an error naming it, since nothing would read it."""
    tree: dict[str, Any] = {}
    prov = Provenance()
    if args.config:
        path = resolve_config(kit.name, args.config)
        file_tree, prov = load_yaml_tree(path, kit=kit.name)
        tree = {k: v for k, v in file_tree.items() if k in sections}
        prov[""] = str(path.resolve())
    overrides = list(args.override or [])
    for text in overrides:
        parts, _ = parse_override(text)
        if parts[0] not in sections:
            keys = " and ".join(f"{s}.*" for s in sections)
            raise ConfigError(
                f"-o {text}: unknown key '{'.'.join(parts)}' for a running export (--model): "
                f"only {keys} keys apply{did_you_mean(parts[0], sections)}"
            )
    tree = _with_flags(apply_overrides(tree, prov, overrides), prov, args)
    return validate(tree, export_run_schema(kit.schema), prov)


def check_device(settings: InferConfig, args: Namespace) -> None:
    """``cuda`` on a machine without one: a one-line error naming where cuda was asked for."""
    if settings.device == "cuda":
        resolve_device("cuda", "--device" if getattr(args, "device", None) else "infer.device")


def refuse_other_kit(kit: Kit, deploy: dict[str, Any], verb: str) -> None:
    """An export of another kit fails up front, naming the command that runs it (its
    deploy.yaml lacks this kit's keys, so running it here would fail deep inside)."""
    other = deploy.get("kit")
    if other is not None and other != kit.name:
        raise E2EError(f"this export is a {other} model; use `e2ekit {other} {verb}`")


def export_predictor(
    kit: Kit,
    model: str | Path,
    settings: InferConfig,
    args: Namespace,
    verb: str,
    config: ExportRunConfig | None = None,
) -> Any:
    """The export in ``model`` run as ``settings`` say (see ``Predictor`` for cuda's fallbacks).

    ``config`` (all the running sections) rides along as ``predictor.settings``, where a
    kit's predict and endpoints read the keys only that kit has."""
    from e2ekit.core.infer import Predictor, load_deploy

    check_device(settings, args)
    try:
        refuse_other_kit(kit, load_deploy(model), verb)
        predictor = Predictor(
            model,
            backend=settings.backend,
            num_threads=settings.num_threads,
            precision=settings.precision,
            device=settings.device,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise E2EError(str(exc)) from None
    predictor.settings = config  # type: ignore[attr-defined]
    return predictor


def _asked_for(args: Namespace, flag: str) -> Any:
    """A runtime setting given by flag or ``-o`` (not the run's config.yaml, which has all)."""
    if getattr(args, flag, None) is not None:
        return getattr(args, flag)
    section, key = RUNTIME_FLAGS[flag]
    found = None
    for text in args.override or []:
        parts, value = parse_override(text)
        if parts == [section, key]:
            found = value
    return found


def checkpoint_predictor(kit: Kit, args: Namespace) -> ModulePredictor:
    """``--weights``: the checkpoint in PyTorch, on the run's (or ``-c``'s) ``infer`` settings."""
    cfg, _ = load_run_config(kit, args)
    prov = Provenance()
    tree = _with_flags({"infer": cfg.infer.model_dump()}, prov, args)
    config = validate(tree, export_run_schema(kit.schema), prov)
    settings = config.infer
    if _asked_for(args, "backend") == "onnxruntime":
        raise E2EError(
            "--weights runs the checkpoint in PyTorch; for onnxruntime, export it and "
            "predict with --model EXPORT_DIR"
        )
    if settings.precision == "int8":
        raise E2EError(
            "--weights runs the checkpoint in fp32; int8 needs an int8 export: export "
            "--quantize, then predict --model EXPORT_DIR --precision int8 (or --precision fp32)"
        )
    key = "--device" if getattr(args, "device", None) else "infer.device"
    device = resolve_device(settings.device, key)
    task, model = _load_model(kit, cfg, args.weights)
    predictor = ModulePredictor(task.export_spec(model), device, settings.num_threads)
    predictor.settings = config
    return predictor


def make_predictor(kit: Kit, args: Namespace) -> Any:
    """An exported model (``--model DIR``) on onnxruntime/torch, or a checkpoint (``--weights``),
    on the device and settings that flags, ``-o infer.*`` and ``-c`` choose."""
    if getattr(args, "model", None):
        config = load_export_config(kit, args)
        return export_predictor(kit, args.model, config.infer, args, "predict", config)
    return checkpoint_predictor(kit, args)


def runtime_info(predictor: Any) -> dict[str, Any]:
    """Which backend and device run ``predictor`` (empty for a predictor that does not say)."""
    return dict(getattr(predictor, "runtime", None) or {})


def cmd_predict(kit: Kit, args: Namespace) -> dict[str, Any]:
    if not args.input:
        raise E2EError("--input is required: a file, a folder or a list file")
    if args.input != "-" and not Path(args.input).exists():  # '-': stdin (text kit)
        raise E2EError(f"--input {args.input}: no such file or folder")
    out = folder_out(Path(args.out)) if args.out else None
    predictor = make_predictor(kit, args)
    made_temp = out is None
    if out is None:
        out = Path(tempfile.mkdtemp(prefix=f"e2ekit-{kit.name}-pred-"))
    t0 = time.perf_counter()
    # Outputs are staged and appear only when the whole input went through: a bad image or
    # row half-way leaves no half folder of predictions behind.
    try:
        with staged_outputs(out) as staged:
            summary = kit.predict(predictor, Path(args.input), staged, vars(args))
    except BaseException:
        if made_temp:
            shutil.rmtree(out, ignore_errors=True)
        raise
    summary = _renamed(summary, str(staged), str(out))
    summary.update(runtime_info(predictor))
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def _renamed(obj: Any, old: str, new: str) -> Any:
    """``obj`` with every string path under ``old`` rewritten to ``new`` (staged -> final)."""
    if isinstance(obj, str):
        return new + obj[len(old) :] if obj.startswith(old) else obj
    if isinstance(obj, dict):
        return {k: _renamed(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_renamed(v, old, new) for v in obj]
    return obj


def cmd_serve(kit: Kit, args: Namespace) -> dict[str, Any]:
    from e2ekit.core.serve import create_app, run_server

    if not args.model:
        raise E2EError("--model is required: an export folder (from `export`)")
    config = load_export_config(kit, args, sections=("infer", "serve"))
    predictor = export_predictor(kit, args.model, config.infer, args, "serve", config)
    info = {"kit": kit.name, "model": str(Path(args.model).resolve()), **runtime_info(predictor)}
    app = create_app(kit.endpoints(predictor), config.serve, model_info=info)
    run_server(app, config.serve)
    return {"served": info["model"]}
