"""The peers' venvs for the quality benchmark: each peer in its own venv under
``benchmarks/.venvs/`` (never a project dependency), sharing the project venv's torch.

A venv gets a ``.pth`` line pointing at the project venv's site-packages, so torch 2.14.1
and torchvision 0.29.1 are imported from there and never downloaded again; the peer
package and its own requirements install into the venv itself, whose site-packages come
first on ``sys.path``, so the peer's versions win where they differ. A constraint file pins
torch/torchvision to the shared build so pip never replaces them.
``python _peer_env.py NAME`` creates one (``smp``, ``hf``, ``ultralytics``).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

VENVS = Path(__file__).resolve().parent.parent / ".venvs"
MARKER = ".e2ekit-bench-ok"
SHARED_PTH = "e2ekit_shared_torch.pth"
CONSTRAINTS = ("torch==2.14.1", "torchvision==0.29.1")

# name -> (venv folder, packages, probe printing the versions that matter)
PEERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "smp": (
        "quality-smp",
        ("segmentation-models-pytorch==0.6.0",),
        "import torch, segmentation_models_pytorch as smp; print(torch.__file__, smp.__version__)",
    ),
    "hf": (
        "quality-hf",
        ("accelerate",),
        "import torch, transformers, accelerate; "
        "print(torch.__file__, transformers.__version__, accelerate.__version__)",
    ),
    "ultralytics": (
        "quality-ultralytics",
        ("ultralytics==8.4.*",),
        "import os; os.environ['YOLO_OFFLINE']='1'; import torch, ultralytics; "
        "print(torch.__file__, ultralytics.__version__)",
    ),
}


def _site_packages(prefix: Path) -> Path:
    rel = sysconfig.get_path("purelib", vars={"base": "X", "platbase": "X"})
    return prefix / Path(rel).relative_to("X")


def ensure_venv(name: str, log=print) -> Path:
    """The peer venv's interpreter; creates and fills it when it has no matching marker."""
    folder, packages, probe = PEERS[name]
    venv = VENVS / folder
    py = venv / "bin" / "python"
    wanted = "\n".join(packages) + "\n"
    marker = venv / MARKER
    if py.is_file() and marker.is_file() and marker.read_text() == wanted:
        return py
    base = Path(sys.base_prefix) / "bin" / "python3"
    if not py.is_file():
        log(f"creating {venv} from {base}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    shared = _site_packages(Path(sys.prefix))
    if not (shared / "torch").is_dir():
        raise SystemExit(f"no torch in {shared}: run this with the project venv's python")
    # Appended after the venv's own site-packages: the peer's packages win, torch is shared.
    (_site_packages(venv) / SHARED_PTH).write_text(f"{shared}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(CONSTRAINTS) + "\n")
        constraints = fh.name
    log(f"installing {' '.join(packages)} into {venv} (torch shared with {shared})")
    cmd = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    try:
        subprocess.run([*cmd, "-c", constraints, *packages], check=True, stdout=sys.stderr)
    finally:
        Path(constraints).unlink(missing_ok=True)
    subprocess.run([str(py), "-c", probe], check=True, stdout=sys.stderr)
    marker.write_text(wanted)
    return py


if __name__ == "__main__":
    for peer in sys.argv[1:] or list(PEERS):
        print(ensure_venv(peer, log=lambda m: print(m, file=sys.stderr)))
