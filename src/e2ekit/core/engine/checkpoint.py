"""Checkpoints: atomic writes, safe loads (``weights_only=True``), full RNG capture.

A checkpoint holds only tensors and plain Python containers, so it loads without
unpickling arbitrary objects; anything else is refused with a clear error.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2ekit.core.errors import CheckpointError

FORMAT = "e2ekit-checkpoint-v1"


TMP_MARK = ".tmp-"  # ``.<name>.tmp-<pid>``: what a kill during a save leaves behind


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temp file, fsync, then rename: a kill mid-save never leaves a torn file.

    A failed write (a full disk) removes its temp file and says so in one line."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        why = write_failure(exc)
        if why:
            raise CheckpointError(f"{why}: {path}") from None
        raise


def write_failure(exc: BaseException | None) -> str:
    """What a failed write met ('' if none of these): torch's zip writer hides the OSError of
    a full disk behind its own RuntimeError ("unexpected pos ..."), with the OSError as context."""
    for _ in range(8):  # the exception, its cause or context, theirs, ...
        if exc is None:
            break
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "no space left on device"
        if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
            return "file too large (a file-size limit)"
        if isinstance(exc, RuntimeError) and "No space left" in str(exc):
            return "no space left on device"
        exc = exc.__cause__ or exc.__context__
    return ""


def remove_stale_temps(folder: Path) -> list[Path]:
    """Temp files of saves that a kill cut short (any process's): never resumable data."""
    stale = [p for p in folder.glob(f".*.pt{TMP_MARK}*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; pickled code objects are refused.

    Failures are one line naming the file and never suggest ``weights_only=False``: a file
    that is not a PyTorch checkpoint at all (random bytes, text, a truncated save) says so,
    and one holding arbitrary objects names the first such object.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: no best.pt or last.pt in this folder")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    import re
    import zipfile

    def is_torch_file() -> bool:
        """A ``torch.save`` file: a zip holding ``data.pkl``, or the legacy format, which
        starts with torch's pickled magic number."""
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("/data.pkl") for name in archive.namelist())
        magic = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
        with path.open("rb") as fh:
            return fh.read(len(magic)) == magic

    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except Exception as exc:  # torch.load of arbitrary bytes fails in many ways (EOF, KeyError)
        if isinstance(exc, pickle.UnpicklingError) and is_torch_file():
            # torch's message advises loading unsafely: name only the refused object.
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f"it names {found.group(1)}" if found else "an object of unknown type"
            raise CheckpointError(
                f"{path}: refused to load: it contains pickled objects other than tensors and "
                f"plain containers, which could run code ({what}). Re-save only state_dicts."
            ) from None
        detail = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        if isinstance(exc, pickle.UnpicklingError):
            why = ""  # torch's wrapper text says nothing about this file
        else:
            why = f": {type(exc).__name__}" + (f": {detail}" if detail else "")
        raise CheckpointError(
            f"{path} is not an e2ekit checkpoint (not a readable PyTorch file{why})"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path} is not an e2ekit checkpoint (it holds a {type(ckpt).__name__}, not a dict)"
        )
    return ckpt


def model_state(ckpt: dict, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The weights to use for inference: EMA weights when trained with EMA, else the raw ones."""
    if prefer_ema and ckpt.get("ema"):
        return ckpt["ema"]["module"]
    if "model" in ckpt:
        return ckpt["model"]
    if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt  # a bare state_dict
    raise CheckpointError("checkpoint has no 'model' weights")


def capture_rng() -> dict[str, Any]:
    """Every RNG the training loop can touch, as tensors and plain lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`; RNG states are CPU byte tensors wherever the
    checkpoint was mapped to (a resume on CUDA may load it onto the GPU)."""
    state = _tensors_to(state, lambda t: t.cpu())
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    nps = state["numpy"]
    np.random.set_state((nps[0], nps[1].numpy(), *nps[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensors_to(obj: Any, fn: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _tensors_to(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_tensors_to(v, fn) for v in obj]
    return obj


def rng_to_plain(state: dict[str, Any]) -> dict[str, Any]:
    """Tensors -> (dtype, bytes), so RNG states can cross ``all_gather_object`` safely."""
    return _tensors_to(state, lambda t: ("__tensor__", str(t.dtype), t.cpu().numpy().tobytes()))


def rng_from_plain(state: Any) -> Any:
    if isinstance(state, tuple) and len(state) == 3 and state[0] == "__tensor__":
        dtype = getattr(torch, state[1].removeprefix("torch."))
        return torch.frombuffer(bytearray(state[2]), dtype=dtype).clone()
    if isinstance(state, dict):
        return {k: rng_from_plain(v) for k, v in state.items()}
    if isinstance(state, list):
        return [rng_from_plain(v) for v in state]
    return state
