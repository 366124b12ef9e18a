"""The peer-worker side of ``_alternate.WorkerClient``: JSON commands in, JSON answers out.

Import it before the peer framework: it points fd 1 at stderr, so whatever the framework's
C++ code prints cannot corrupt the answer stream, which goes to a private copy of stdout.
Runs in the peer's venv, so it needs nothing beyond the standard library.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

ANSWERS = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)


def serve(worker: Any) -> None:
    """Answer ``{"cmd": NAME, ...}`` lines with ``worker.NAME(args)`` until ``quit`` or EOF;
    a failing command answers ``ok: false`` with the error and the worker lives on."""
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        if name == "quit":
            break
        try:
            reply = {"ok": True, **getattr(worker, name)(cmd)}
        except Exception as e:
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
        ANSWERS.write(json.dumps(reply) + "\n")
