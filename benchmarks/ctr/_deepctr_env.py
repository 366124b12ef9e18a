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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _bench_common import ensure_peer_venv

DEFAULT_VENV = Path(__file__).resolve().parent.parent / ".venvs" / "deepctr"
# deepctr-torch 0.3.0 imports requests (its version check) without declaring it.
PACKAGES = ("torch==2.14.1", "deepctr-torch==0.3.0", "scikit-learn", "pandas", "requests")
PEER = "deepctr-torch 0.3.0"


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path = DEFAULT_VENV, log=print) -> Path:
    """The venv's interpreter; creates and fills the venv when it has no success marker."""
    probe = (
        "import torch, deepctr_torch, sklearn, pandas; "
        "print(torch.__version__, deepctr_torch.__version__)"
    )
    return ensure_peer_venv(venv, PACKAGES, probe, "about 2 minutes, 5.5 GB", log)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VENV
    print(ensure_venv(target, log=lambda m: print(m, file=sys.stderr)))
