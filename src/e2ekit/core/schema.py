"""Typed config sections shared by every kit; a kit's config subclasses ``RunConfig``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from e2ekit.core.serve.settings import ServeSettings


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class OptimConfig(Strict):
    type: str = Field("adamw", description="adamw, adam, sgd, or a dotted path to a builder")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    no_decay_norm_bias: bool = Field(
        True, description="exclude biases and norm weights from weight decay"
    )


class SchedConfig(Strict):
    type: Literal["constant", "linear", "cosine", "poly"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="warmup as a share of all steps")
    warmup_start_factor: float = Field(0.0, ge=0, le=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    power: float = Field(0.9, gt=0, description="exponent of the poly schedule")


class EmaConfig(Strict):
    enabled: bool = False
    decay: float = Field(0.999, gt=0, lt=1)
    warmup_steps: int = Field(0, ge=0, description="ramp decay up from 0 over these steps")


class EarlyStopConfig(Strict):
    patience: int = Field(0, ge=0, description="evaluations without improvement; 0 = off")
    min_delta: float = Field(0.0, ge=0)


class HookSpec(Strict):
    """A user hook: ``type`` is a registered hook or a dotted path; the rest are kwargs."""

    model_config = ConfigDict(extra="allow")
    type: str


class TrainConfig(Strict):
    epochs: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; wins over epochs")
    batch_size: int = Field(32, ge=1, description="per process")
    eval_batch_size: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    shuffle: bool = True
    drop_last: bool = True
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    amp: Literal["off", "auto", "fp16", "bf16"] = Field(
        "off",
        description="auto: bf16 on GPUs and CPUs with bf16 units, fp16 on older GPUs, else off",
    )
    eval_interval: int = Field(0, ge=0, description="steps between evaluations; 0 = each epoch")
    log_interval: int = Field(10, ge=1)
    save_interval: int = Field(0, ge=0, description="steps between last.pt saves; 0 = at evals")
    metric: str | None = Field(None, description="metric that selects best.pt")
    metric_mode: Literal["max", "min"] = "max"
    early_stop: EarlyStopConfig = EarlyStopConfig()
    ema: EmaConfig = EmaConfig()
    hooks: list[HookSpec] = []
    channels_last: bool = Field(False, description="NHWC memory format (faster convs on CPU)")
    tensorboard: bool = True
    progress: bool = True
    time_budget: float | None = Field(
        None,
        description="wall-clock budget of the whole run, from the start of its set-up (data "
        "and model building; not the Python start-up): seconds, or a duration such as 90s, "
        "10m, 1.5h, 1h30m (stored as seconds). The first epoch or 5% of the budget measures "
        "the step and evaluation times, then the step count is fitted so training, the "
        "evaluations and the final evaluation and save end within it (re-estimated at 50% and "
        "80%; a hard stop ends the run early if steps slow down, still evaluated and saved). "
        "The LR schedule (warm-up, decay) is re-timed to the fitted end. It replaces "
        "epochs/max_steps, as ultralytics' time= replaces epochs; "
        "early_stop may end the run sooner; eval_interval, save_interval and grad_accum are "
        "counted in the fit. --resume continues the same budget: the time used up to last.pt "
        "is kept in it (a budget given only on resume counts from the resume)",
    )

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        if value is None:
            return None
        from e2ekit.core.engine.budget import parse_duration

        return parse_duration(value)

    @model_validator(mode="after")
    def _length(self) -> TrainConfig:
        if self.epochs is None and self.max_steps is None and self.time_budget is None:
            self.epochs = 1
        return self


class ExportConfig(Strict):
    opset: int = Field(17, ge=11)
    quantize: bool = Field(False, description="also write an int8 model (model.int8.onnx)")
    quantize_mode: Literal["dynamic", "static"] = Field(
        "dynamic",
        description="dynamic: int8 MatMul/Gemm, no data needed; static: calibrated QDQ int8 "
        "(convolutions too; calibrated on the task's data, else sample_inputs.npz)",
    )
    calibration_samples: int = Field(
        32, ge=1, description="inputs used to calibrate (and check) static quantization"
    )
    quantize_keep_final_float: bool | None = Field(
        None,
        description="keep the last weighted layers (those producing the outputs) in float, "
        "e.g. a YOLO head whose one conv mixes box offsets and logits; null: the model's choice",
    )
    quantize_op_types: list[str] | None = Field(
        None,
        min_length=1,
        description="ONNX op types to quantize (default: MatMul/Gemm dynamic, Conv/MatMul/Gemm "
        "static); add the ops between convolutions (e.g. LeakyRelu, Add, Concat) so int8 "
        "kernels chain without float round trips",
    )
    atol: float = Field(1e-4, gt=0, description="max abs diff allowed vs PyTorch")


class InferConfig(Strict):
    """How predict, serve and bench run a model; their flags (--backend, --precision,
    --threads, --device) win over these keys."""

    backend: Literal["onnxruntime", "torch"] = Field(
        "onnxruntime",
        description="runtime of an export (--model); torch rebuilds the model from weights.pt. "
        "A checkpoint (--weights) always runs in torch",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "cpu",
        description="cpu by default, so a server never takes a GPU it was not given; cuda: "
        "onnxruntime-gpu's CUDA provider, else the export's torch weights on CUDA; auto: cuda "
        "when the backend can use it here, else cpu",
    )
    num_threads: int | None = Field(
        None, ge=1, description="onnxruntime intra-op / torch threads; null: the runtime's own"
    )
    precision: Literal["fp32", "int8"] = Field(
        "fp32", description="int8 runs model.int8.onnx (export --quantize) on the CPU"
    )


class RunConfig(Strict):
    """Sections every kit has; kits narrow ``model`` and ``data`` with their own schemas.

    A shared key that a kit cannot honour is listed in the kit schema's ``unsupported``
    (dotted key -> why): setting it to anything but its default is a config error that
    says why, so no accepted key is ever silently ignored.
    """

    unsupported: ClassVar[dict[str, str]] = {}

    seed: int = 42
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    sched: SchedConfig = SchedConfig()
    export: ExportConfig = ExportConfig()
    infer: InferConfig = InferConfig()
    serve: ServeSettings = ServeSettings()

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> RunConfig:
        for key, why in self.unsupported.items():
            if _value_at(self, key) != default_at(type(self), key):
                raise ValueError(f"{key}: not supported by this kit: {why}")
        return self


def _value_at(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def default_at(schema: type[BaseModel], dotted: str) -> Any:
    """The schema's default for a dotted key (its section's default, walked down)."""
    first, _, rest = dotted.partition(".")
    value = schema.model_fields[first].get_default(call_default_factory=True)
    return _value_at(value, rest) if rest else value
