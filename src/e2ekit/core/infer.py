"""Inference runtime shared by every kit: load an export folder and run it.

An export folder (written by :func:`e2ekit.core.export.export_onnx`) holds ``deploy.yaml``
(model I/O contract plus the kit's pre/post-processing settings), ``model.onnx`` and,
optionally, ``model.int8.onnx`` and ``weights.pt`` + a builder path for the PyTorch backend.
:class:`Predictor` hides which backend runs the model so serving code and benchmarks can switch
between onnxruntime, int8 and eager PyTorch with one argument, on the CPU or on CUDA.

This module deliberately does not import torch at import time: an onnxruntime-only deployment
should not have to pay for (or even install) PyTorch.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from e2ekit.core.builders import (
    UnsafeExportError,
    is_registered,
    refusal,
    resolve_torch_builder,
    trust_torch_builder,
)
from e2ekit.core.errors import E2EError

log = logging.getLogger("e2ekit")

DEPLOY_FILE = "deploy.yaml"
SAMPLE_INPUTS_FILE = "sample_inputs.npz"
WEIGHTS_FILE = "weights.pt"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "int8")
DEVICES = ("auto", "cpu", "cuda")
CUDA_PROVIDER = "CUDAExecutionProvider"
NO_ORT_CUDA = (
    f"onnxruntime has no {CUDA_PROVIDER} (pip install onnxruntime-gpu, which replaces onnxruntime)"
)
INT8_ON_CUDA = (
    "int8 exports run on the CPU only: onnxruntime's CUDA provider has no kernels for their "
    "int8 operators; use --precision fp32 on cuda, or --device cpu"
)
# deploy.yaml keys (dotted) naming a file or folder of the export, the kits' included: each
# must stay inside the folder, checked here once before any kit code opens one.
FILE_KEYS = ("model_file", "int8_model_file", "tokenizer", "sparse.dir")
# Where a checkpoint predictor (``--weights``, no export) finds files outside any folder; an
# export holds its own copies, so a loaded folder's value is dropped, never followed.
CHECKPOINT_ONLY_KEYS = ("tokenizer_source",)
# onnxruntime's errors for a file that is not a loadable ONNX model (others: cannot run it).
NOT_A_MODEL_ERRORS = ("InvalidProtobuf", "InvalidArgument", "InvalidGraph", "NoModel")


class ExportFolderError(FileNotFoundError):
    """An export folder is missing or incomplete (names the folder and the missing file)."""


class InvalidModelError(E2EError, ValueError):
    """onnxruntime cannot load a model file (corrupt, truncated, not ONNX): names the file."""


def _locate(path: str) -> Any:
    """The builder an export's own code names (``torch_builder``), resolved and registered
    so this process may load what it exports; deploy.yaml's name never comes here."""
    return trust_torch_builder(path)


def flatten_outputs(outputs: Any, output_names: Sequence[str]) -> list[Any]:
    """Order a model's outputs (tensor, tuple/list or dict) as ``output_names``.

    Shared by export and the torch backend so both agree on which value is which output;
    dict outputs are matched by key, never by insertion order.
    """
    names = list(output_names)
    if isinstance(outputs, Mapping):
        missing = [n for n in names if n not in outputs]
        extra = [k for k in outputs if k not in names]
        if missing or extra:
            raise ValueError(
                f"model returned dict keys {list(outputs)} but output_names is {names} "
                f"(missing: {missing}, unexpected: {extra})"
            )
        return [outputs[n] for n in names]
    if isinstance(outputs, (tuple, list)):
        if len(outputs) != len(names):
            raise ValueError(
                f"model returned {len(outputs)} outputs but output_names has {len(names)}: {names}"
            )
        return list(outputs)
    if len(names) != 1:
        raise ValueError(f"model returned a single tensor but output_names has {len(names)}")
    return [outputs]


def export_file(export_dir: Path, name: object, key: str) -> Path:
    """``export_dir / name`` for a name deploy.yaml gives under ``key``, refused unless it
    resolves inside the folder (no absolute path, no ``..`` or link leading out of it)."""
    where = f"{export_dir / DEPLOY_FILE}: {key}"
    if not isinstance(name, str) or not name:
        raise UnsafeExportError(f"{where} must be a file name inside the folder, got {name!r}")
    root = export_dir.resolve()
    path = (root / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(root):
        raise UnsafeExportError(
            f"{where} {name!r} points outside the export folder; an export may only name "
            "its own files"
        )
    return export_dir / name


def _named_files(deploy: dict[str, Any]) -> list[tuple[str, object]]:
    """(dotted key, value) of every ``FILE_KEYS`` entry present in ``deploy``."""
    found = []
    for key in FILE_KEYS:
        node: Any = deploy
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found.append((key, node))
    return found


def load_deploy(export_dir: str | Path) -> dict[str, Any]:
    """Read and sanity-check ``deploy.yaml`` of an export folder (names its problem in one
    line: unreadable YAML, wrong version, a file named outside the folder)."""
    folder = Path(export_dir)
    if not folder.is_dir():
        raise ExportFolderError(f"export folder {str(folder)!r} does not exist")
    path = folder / DEPLOY_FILE
    if not path.is_file():
        raise ExportFolderError(f"export folder {str(folder)!r} has no {DEPLOY_FILE}")
    try:
        deploy = yaml.safe_load(path.read_bytes())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path} is not valid YAML ({first})") from None
    if not isinstance(deploy, dict) or "inputs" not in deploy or "outputs" not in deploy:
        raise ValueError(f"{path} is not a valid e2ekit deploy file (needs 'inputs'/'outputs')")
    version = deploy.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version!r}; this e2ekit reads version {FORMAT_VERSION}"
        )
    for key, name in _named_files(deploy):
        export_file(folder, name, key)
    return deploy


def load_sample_inputs(export_dir: str | Path) -> list[dict[str, np.ndarray]]:
    """Load the input cases saved at export time (keys ``case{i}.{input_name}``)."""
    path = Path(export_dir) / SAMPLE_INPUTS_FILE
    if not path.is_file():
        raise ExportFolderError(f"export folder {str(Path(export_dir))!r} has no {path.name}")
    cases: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            case, _, name = key.partition(".")
            cases.setdefault(int(case.removeprefix("case")), {})[name] = data[key]
    return [cases[i] for i in sorted(cases)]


def onnxruntime_has_cuda() -> bool:
    """Whether the installed onnxruntime was built with CUDA (the onnxruntime-gpu package)."""
    import onnxruntime as ort

    return CUDA_PROVIDER in ort.get_available_providers()


def torch_has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def has_torch_weights(export_dir: Path, deploy: dict[str, Any]) -> bool:
    """Whether the export can be rebuilt in PyTorch (``weights.pt`` and a registered builder;
    see :mod:`e2ekit.core.builders`)."""
    builder = (deploy.get("torch") or {}).get("builder")
    return is_registered(builder) and (export_dir / WEIGHTS_FILE).is_file()


def torch_builder_refusal(export_dir: Path, deploy: dict[str, Any]) -> str | None:
    """Why the folder's torch builder is not loaded (it is not registered); None when it is
    or when there is none."""
    builder = (deploy.get("torch") or {}).get("builder")
    if builder is None or is_registered(builder):
        return None
    return refusal(builder, str(export_dir / DEPLOY_FILE))


def cuda_unsupported(backend: str, precision: str) -> str | None:
    """Why ``backend`` at ``precision`` cannot run on CUDA on this machine; None when it can."""
    if not torch_has_cuda():
        return "this machine has no usable CUDA device"
    if backend == "onnxruntime" and precision == "int8":
        return INT8_ON_CUDA
    if backend == "onnxruntime" and not onnxruntime_has_cuda():
        return NO_ORT_CUDA
    return None


def plan_runtime(
    export_dir: Path, deploy: dict[str, Any], backend: str, precision: str, device: str
) -> tuple[str, str]:
    """The ``(backend, device)`` that will run: ``auto`` resolved to what this machine allows.

    ``cuda`` never silently runs on the CPU: an onnxruntime without its CUDA provider hands
    over to the export's torch weights on CUDA (logged), and anything else is an error that
    names the fix.
    """
    if device == "cpu":
        return backend, "cpu"
    why = cuda_unsupported(backend, precision)
    if device == "auto":
        return backend, "cpu" if why else "cuda"
    if why is None:
        return backend, "cuda"
    from e2ekit.core.engine.env import resolve_device

    resolve_device("cuda", "device")  # no CUDA device at all: its one-line error
    if why == NO_ORT_CUDA and has_torch_weights(export_dir, deploy):
        log.info("%s; running the export's torch weights on CUDA instead", why)
        return "torch", "cuda"
    if why == NO_ORT_CUDA:
        raise E2EError(
            f"device cuda: onnxruntime has no {CUDA_PROVIDER} and this export has no torch "
            "weights to run instead; pip install onnxruntime-gpu (it replaces onnxruntime), "
            "or use --device cpu"
        )
    raise E2EError(f"device cuda: {why}")


def make_session(
    model_path: str | Path, *, num_threads: int | None = None, device: str = "cpu"
) -> Any:
    """Create an onnxruntime session configured the way e2ekit serves models.

    ``inter_op_num_threads=1`` because the graphs are sequential; parallelism comes from
    intra-op threads (``None`` keeps onnxruntime's default, one per physical core). On
    ``cuda`` the CPU provider stays listed after CUDA's: it runs the operators CUDA lacks.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if num_threads is not None:
        opts.intra_op_num_threads = int(num_threads)
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if not onnxruntime_has_cuda():
            raise E2EError(f"device cuda: {NO_ORT_CUDA}, or use --device cpu")
        providers = [CUDA_PROVIDER, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
    except Exception as exc:
        if type(exc).__module__ != ort.capi.onnxruntime_pybind11_state.__name__:
            raise  # not onnxruntime refusing the file
        raise _load_failure(model_path, exc) from None
    if device == "cuda" and CUDA_PROVIDER not in session.get_providers():
        raise E2EError(
            f"device cuda: onnxruntime could not start its {CUDA_PROVIDER} (CUDA or cuDNN "
            "libraries missing? see onnxruntime's message above); use --device cpu"
        )
    return session


def _load_failure(model_path: str | Path, exc: Exception) -> InvalidModelError:
    """onnxruntime's load error as one line naming the file ("Load model from X failed:why")."""
    text = str(exc).strip()
    why = text.split("failed:", 1)[-1].strip().splitlines()[0] if text else type(exc).__name__
    if type(exc).__name__ in NOT_A_MODEL_ERRORS:
        return InvalidModelError(f"not a valid ONNX model: {model_path} ({why})")
    return InvalidModelError(f"onnxruntime cannot load {model_path}: {why}")


class Backend(ABC):
    """One way of executing an exported model; subclass and register in ``BACKENDS``."""

    def __init__(
        self,
        export_dir: Path,
        deploy: dict[str, Any],
        *,
        num_threads: int | None,
        precision: str,
        device: str,
    ) -> None:
        self.export_dir = export_dir
        self.deploy = deploy
        self.num_threads = num_threads
        self.precision = precision
        self.device = device
        self.output_names: list[str] = [o["name"] for o in deploy["outputs"]]

    @property
    def provider(self) -> str | None:
        """The execution provider that runs the model, when the backend has several."""
        return None

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on validated, dtype-cast inputs; return outputs keyed by output name."""


class OnnxRuntimeBackend(Backend):
    """onnxruntime CPU (or CUDA) session on ``model.onnx`` or the int8 model."""

    def __init__(self, export_dir: Path, deploy: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(export_dir, deploy, **kwargs)
        if self.precision == "int8":
            model_file = deploy.get("int8_model_file")
            if not model_file:
                raise ExportFolderError(
                    f"export folder {str(export_dir)!r} has no int8 model recorded in "
                    f"{DEPLOY_FILE}; run e2ekit.core.export.quantize_int8 first"
                )
            path = export_file(export_dir, model_file, "int8_model_file")
        else:
            model_file = deploy.get("model_file", "model.onnx")
            path = export_file(export_dir, model_file, "model_file")
        if not path.is_file():
            raise ExportFolderError(f"export folder {str(export_dir)!r} has no {model_file}")
        self.model_path = path
        self.session = make_session(path, num_threads=self.num_threads, device=self.device)

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values, strict=True))


class TorchBackend(Backend):
    """Eager PyTorch: rebuild the module from the recorded builder and ``weights.pt``.

    Useful as a reference and for debugging; ``num_threads`` sets torch's process-wide
    intra-op thread count (``torch.set_num_threads``). When the export appended argmax
    outputs, ``deploy["torch"]`` records the module's own outputs (``module_outputs``) and
    the ``argmax`` mapping, so this backend returns the same outputs as the ONNX model.
    """

    def __init__(self, export_dir: Path, deploy: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(export_dir, deploy, **kwargs)
        import torch

        if self.precision != "fp32":
            raise ValueError(f"torch backend supports precision 'fp32' only, got {self.precision}")
        spec = deploy.get("torch")
        if not isinstance(spec, dict) or not spec.get("builder"):
            raise ExportFolderError(
                f"export folder {str(export_dir)!r} has no torch builder in {DEPLOY_FILE}; "
                "export with torch_builder=... to enable the torch backend"
            )
        # Refused before anything is imported: the folder may come from anyone.
        builder = resolve_torch_builder(spec["builder"], str(export_dir / DEPLOY_FILE))
        weights = export_dir / WEIGHTS_FILE
        if not weights.is_file():
            raise ExportFolderError(f"export folder {str(export_dir)!r} has no {WEIGHTS_FILE}")
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        if self.device == "cuda":
            from e2ekit.core.engine.env import resolve_device

            self.torch_device = resolve_device("cuda", "device")
        else:
            self.torch_device = torch.device("cpu")
        config = spec.get("config") or {}
        if not isinstance(config, dict):
            raise ValueError(f"{export_dir / DEPLOY_FILE}: torch.config must be a mapping")
        module = builder(**config)
        from e2ekit.core.engine.checkpoint import load_checkpoint
        from e2ekit.core.state_fit import load_state_strict

        load_state_strict(module, load_checkpoint(weights), str(weights))
        self.module = module.to(self.torch_device).eval()
        # Older deploy folders lack these keys: the module's outputs are the served outputs.
        self.argmax: dict[str, str] = dict(spec.get("argmax") or {})
        self.argmax_axis = int(spec.get("argmax_axis", 1))
        self.module_outputs: list[str] = list(spec.get("module_outputs") or self.output_names)
        produced = [self.argmax.get(n, n) for n in self.module_outputs]
        missing = [n for n in self.output_names if n not in produced]
        if missing:
            raise ValueError(
                f"{DEPLOY_FILE} torch section yields outputs {produced} but the model's "
                f"outputs are {self.output_names} (missing: {missing})"
            )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs go to the model's device; outputs come back as numpy arrays on the CPU."""
        import torch

        args = [
            torch.from_numpy(np.ascontiguousarray(v)).to(self.torch_device) for v in feeds.values()
        ]
        with torch.inference_mode():
            outputs = flatten_outputs(self.module(*args), self.module_outputs)
            named = {}
            for n, o in zip(self.module_outputs, outputs, strict=True):
                if n in self.argmax:
                    named[self.argmax[n]] = o.argmax(dim=self.argmax_axis)
                else:
                    named[n] = o
        return {n: named[n].detach().cpu().numpy() for n in self.output_names}


BACKENDS: dict[str, type[Backend]] = {"onnxruntime": OnnxRuntimeBackend, "torch": TorchBackend}


class Predictor:
    """Run an exported model from its folder, independent of the kit that trained it.

    ``run`` takes numpy arrays keyed by input name (already preprocessed as described by
    ``deploy``) and returns numpy arrays keyed by output name. ``device``: ``cpu``, ``cuda``
    or ``auto`` (see :func:`plan_runtime`); ``backend_name`` and ``device`` then say what
    actually runs, and ``runtime`` describes it for summaries and ``/health``.
    """

    def __init__(
        self,
        export_dir: str | Path,
        backend: str = "onnxruntime",
        num_threads: int | None = None,
        precision: str = "fp32",
        device: str = "cpu",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; choose one of {list(DEVICES)}")
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        self.export_dir = Path(export_dir)
        deploy = load_deploy(self.export_dir)
        self._deploy = {k: v for k, v in deploy.items() if k not in CHECKPOINT_ONLY_KEYS}
        self._inputs: list[dict[str, Any]] = list(self._deploy["inputs"])
        backend, self.device = plan_runtime(
            self.export_dir, self._deploy, backend, precision, device
        )
        self.backend_name = backend
        self.precision = precision
        self.num_threads = num_threads
        self.backend: Backend = BACKENDS[backend](
            self.export_dir,
            self._deploy,
            num_threads=num_threads,
            precision=precision,
            device=self.device,
        )

    @property
    def runtime(self) -> dict[str, Any]:
        """What runs the model: backend, device, precision, threads (and the ORT provider)."""
        info: dict[str, Any] = {
            "backend": self.backend_name,
            "device": self.device,
            "precision": self.precision,
            "threads": self.num_threads,
        }
        if self.backend.provider is not None:
            info["provider"] = self.backend.provider
        return info

    @property
    def deploy(self) -> dict[str, Any]:
        """The parsed ``deploy.yaml`` (I/O contract plus the kit's pre/post-processing)."""
        return self._deploy

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self._deploy["outputs"]]

    def _prepare(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Check names, ranks and static dims, cast to exported dtypes; fail with clear errors."""
        expected = self.input_names
        missing = [n for n in expected if n not in inputs]
        if missing:
            raise KeyError(f"missing model input(s) {missing}; the model expects {expected}")
        unknown = [n for n in inputs if n not in expected]
        if unknown:
            raise KeyError(f"unknown model input(s) {unknown}; the model expects {expected}")
        feeds: dict[str, np.ndarray] = {}
        for spec in self._inputs:
            name = spec["name"]
            arr = np.asarray(inputs[name])
            dtype = np.dtype(spec["dtype"])
            if arr.dtype != dtype:
                if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                    raise TypeError(
                        f"input {name!r} has dtype {arr.dtype}, which cannot be safely cast to "
                        f"the exported dtype {dtype}"
                    )
                arr = arr.astype(dtype)
            shape = spec.get("shape")
            if shape is not None:
                if arr.ndim != len(shape):
                    raise ValueError(
                        f"input {name!r} has shape {list(arr.shape)} but the model expects "
                        f"rank {len(shape)} {shape}"
                    )
                for axis, (got, want) in enumerate(zip(arr.shape, shape, strict=True)):
                    if isinstance(want, int) and got != want:
                        raise ValueError(
                            f"input {name!r} has size {got} on axis {axis}; the model expects "
                            f"{want} (shape {shape})"
                        )
            feeds[name] = arr
        return feeds

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate and cast ``inputs``, run the backend, return outputs by name."""
        return self.backend.run(self._prepare(inputs))

    __call__ = run

    def __repr__(self) -> str:
        return (
            f"Predictor({str(self.export_dir)!r}, backend={self.backend_name!r}, "
            f"device={self.device!r}, precision={self.precision!r}, "
            f"num_threads={self.num_threads})"
        )
