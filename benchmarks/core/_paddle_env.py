"""Create the PaddlePaddle 3.3.1 CPU venv (PaddleSeg 2.8, PaddleDetection 2.6) benchmarks measure.

Never a project dependency: the peer lives in its own venv (default
``benchmarks/.venvs/paddle``), created on first use from this interpreter's base Python,
with the constraints that make paddle 3.3.1 install here (see shared/ENV_NOTES.md).
``python _paddle_env.py [VENV]`` creates it and prints the interpreter path.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_VENV = Path(__file__).resolve().parent.parent / ".venvs" / "paddle"
PACKAGES = ("paddlepaddle==3.3.1", "paddleseg==2.8.0", "paddledet==2.6.0", "scikit-learn")
# paddleseg 2.8 / paddledet 2.6 pull aistudio-sdk/datasets/huggingface_hub; newer ones need numpy 2.
CONSTRAINTS = (
    "numpy==1.23.5",
    "huggingface_hub<1",
    "aistudio-sdk<0.3",
    "datasets<4",
    "pyarrow<20",
)
MARKER = ".e2ekit-bench-ok"


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path = DEFAULT_VENV, log=print) -> Path:
    """The venv's interpreter; creates and fills the venv when it has no success marker."""
    py = python_of(venv)
    wanted = "\n".join(PACKAGES) + "\n"
    if py.is_file() and (venv / MARKER).is_file() and (venv / MARKER).read_text() == wanted:
        return py  # the marker lists what was installed: a new peer tops the venv up
    base = Path(sys.base_prefix) / "bin" / "python3"
    if not py.is_file():
        log(f"creating {venv} from {base}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(CONSTRAINTS) + "\n")
        constraints = fh.name
    log(f"installing {' '.join(PACKAGES)} into {venv} (a few minutes, about 2 GB)")
    cmd = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*cmd, "-c", constraints, *PACKAGES], check=True, stdout=sys.stderr)
    Path(constraints).unlink(missing_ok=True)
    probe = "import paddle, paddleseg, ppdet; print(paddle.__version__, paddleseg.__version__)"
    subprocess.run([str(py), "-c", probe], check=True, stdout=sys.stderr)
    (venv / MARKER).write_text(wanted)
    return py


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VENV
    print(ensure_venv(target, log=lambda m: print(m, file=sys.stderr)))
