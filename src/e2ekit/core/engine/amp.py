"""Mixed precision: fp16 + dynamic loss scaling on CUDA, bf16 autocast where the CPU has it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger("e2ekit")


def cpu_has_bf16() -> bool:
    """True when the CPU runs bf16 natively (AVX512-BF16 or AMX); emulation is slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None:
            with contextlib.suppress(Exception):
                if fn():
                    return True
    return False


def cuda_has_bf16(device: torch.device) -> bool:
    """True on GPUs with bf16 units (Ampere and later): bf16 needs no loss scaling."""
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            return torch.cuda.get_device_capability(device)[0] >= 8
    return False


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on this device, or None for full fp32."""
    if mode == "off":
        return None
    if mode == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_has_bf16(device) else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    if mode == "fp16":
        if device.type != "cuda":
            log.warning("train.amp=fp16 needs CUDA; using bf16 autocast on CPU instead")
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu" and not cpu_has_bf16():
        log.warning("this CPU has no native bf16; train.amp=bf16 is emulated and may be slower")
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def make_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Dynamic loss scaling only matters for fp16; elsewhere the scaler is a disabled no-op."""
    enabled = dtype == torch.float16 and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)
