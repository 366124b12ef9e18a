"""The two ways an Encoder runs its model: an onnxruntime session or the PyTorch module.

Both take a batch's int64 feeds and return its pooled float32 vectors on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.text.encoding.pooling import pool_numpy, pool_torch

__all__ = ["CPU_DISABLED_OPTIMIZERS", "OrtRunner", "TorchRunner", "ort_session"]

# onnxruntime's CPU SkipLayerNormalization kernel measured slower than the LayerNormalization
# + Add it replaces (MiniLM-L6, batch 16 x 64 tokens, 2 threads, onnxruntime 1.31 on an
# AVX-512/AMX Xeon: int8 660 vs 450 sentences/s, fp32 208 vs 186), so the CPU session keeps
# them apart; CUDA sessions fuse as usual.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def ort_session(model_path: Path, *, threads: int | None = None, device: str = "cpu") -> Any:
    """A session set up like :func:`e2ekit.core.infer.make_session` (level-ALL graph
    optimisation, sequential, one inter-op thread, ``threads`` intra-op threads), minus the
    fusions listed in :data:`CPU_DISABLED_OPTIMIZERS` on the CPU."""
    import onnxruntime as ort

    from e2ekit.core.errors import E2EError
    from e2ekit.core.infer import CUDA_PROVIDER, NO_ORT_CUDA, onnxruntime_has_cuda

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    if device == "cuda":
        if not onnxruntime_has_cuda():
            raise E2EError(f"device cuda: {NO_ORT_CUDA}, or use device='cpu'")
        return ort.InferenceSession(
            str(model_path), sess_options=opts, providers=[CUDA_PROVIDER, "CPUExecutionProvider"]
        )
    return ort.InferenceSession(
        str(model_path),
        sess_options=opts,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS),
    )


class OrtRunner:
    """An onnxruntime session on the exported graph (see :func:`ort_session`)."""

    def __init__(self, model_path: Path, *, threads: int | None, device: str) -> None:
        self.session: Any = ort_session(model_path, threads=threads, device=device)
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def run(self, feeds: dict[str, np.ndarray], pooling: str) -> np.ndarray:
        hidden = self.session.run(None, feeds)[0]
        return pool_numpy(hidden, feeds["attention_mask"], pooling)

    def close(self) -> None:
        self.session = None


class TorchRunner:
    """The folder's encoder in eager PyTorch (SDPA attention) on the CPU or a CUDA device.

    ``threads`` sets torch's process-wide intra-op thread count. Runs under the caller's
    autocast context, so ``with torch.autocast("cuda", torch.bfloat16)`` gives bf16.
    """

    def __init__(self, folder: Path, layer: int, *, threads: int | None, device: str) -> None:
        import torch

        from e2ekit.text.encoding.hidden import load_hidden_states

        if threads is not None:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.module: Any = load_hidden_states(folder, layer, attn_implementation="sdpa").to(
            self.device
        )
        self.input_names = list(self.module.input_names)

    @property
    def provider(self) -> str:
        return f"torch:{self.device}"

    def run(self, feeds: dict[str, np.ndarray], pooling: str) -> np.ndarray:
        import torch

        args = [torch.from_numpy(feeds[n]).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            hidden = self.module(*args)
            pooled = pool_torch(hidden, args[self.input_names.index("attention_mask")], pooling)
        return pooled.cpu().numpy()

    def close(self) -> None:
        self.module = None
