"""Create the DeepCTR-Torch 0.3.0 venv that the CTR benchmark measures as a peer.

Never a project dependency: the peer lives in its own venv (default
``benchmarks/.venvs/deepctr``), created on first use from this interpreter's base Python
with a plain ``pip install`` (this machine's pip config supplies the local wheel cache and
package indexes). torch is pinned to 2.14.1, the same build as the project venv, so both
sides run the same kernels (see shared/ENV_NOTES.md: about 100 s and 5.5 GB for torch,
deepctr-torch itself installs in seconds). ``python _deepctr_env.py [VENV]`` creates it
and prints the interpreter path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEFAULT_VENV = Path(__file__).resolve().parent.parent / ".venvs" / "deepctr"
# deepctr-torch 0.3.0 imports requests (its version check) without declaring it.
PACKAGES = ("torch==2.14.1", "deepctr-torch==0.3.0", "scikit-learn", "pandas", "requests")
MARKER = ".e2ekit-bench-ok"
PEER = "deepctr-torch 0.3.0"


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path = DEFAULT_VENV, log=print) -> Path:
    """The venv's interpreter; creates and fills the venv when it has no success marker."""
    py = python_of(venv)
    if (venv / MARKER).is_file() and py.is_file():
        return py
    base = Path(sys.base_prefix) / "bin" / "python3"
    if not py.is_file():
        log(f"creating {venv} from {base}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    log(f"installing {' '.join(PACKAGES)} into {venv} (about 2 minutes, 5.5 GB)")
    cmd = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*cmd, *PACKAGES], check=True, stdout=sys.stderr)
    probe = (
        "import torch, deepctr_torch, sklearn, pandas; "
        "print(torch.__version__, deepctr_torch.__version__)"
    )
    subprocess.run([str(py), "-c", probe], check=True, stdout=sys.stderr)
    (venv / MARKER).write_text("ok\n")
    return py


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VENV
    print(ensure_venv(target, log=lambda m: print(m, file=sys.stderr)))
