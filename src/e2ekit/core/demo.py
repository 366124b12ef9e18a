"""``e2ekit demo``: every available kit from data to an answered HTTP request.

For each kit: train its quick config on built-in data, evaluate the best
checkpoint, export to ONNX (parity-checked), predict with the export on
onnxruntime, serve it and send one request; then print a summary table.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from e2ekit.core.cli import parse_verb
from e2ekit.core.errors import E2EError
from e2ekit.core.kit import PUBLIC_KITS, Kit, available_kits, get_kit
from e2ekit.core.logs import log


def _run(kit: Kit[Any], verb: str, *argv: str | Path) -> dict[str, Any]:
    """``e2ekit <kit> <verb> ARGV`` in-process: the kit's own handler and flag defaults."""
    spec, args = parse_verb(kit, verb, [str(a) for a in argv])
    return spec.handler(kit, args)


def _serve_once(kit: Any, export_dir: Path) -> dict[str, Any]:
    """Serve the export on a free port, POST one request, shut down gracefully."""
    from e2ekit.core.infer import Predictor
    from e2ekit.core.serve import ServeClient, build_server, create_app
    from e2ekit.core.serve.settings import ServeSettings

    predictor = Predictor(export_dir)
    settings = ServeSettings(port=0)
    app = create_app(kit.endpoints(predictor), settings, model_info={"kit": kit.name})
    server = build_server(app, settings, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise E2EError("demo server did not start within 30 s")
        time.sleep(0.05)
    try:
        client = ServeClient(server.url)
        t0 = time.perf_counter()
        answer = client.predict(kit.demo_request(predictor.deploy))
        latency_ms = (time.perf_counter() - t0) * 1000
        health = client.health()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return {"status": health.get("status"), "latency_ms": round(latency_ms, 1), "answer": answer}


def demo_kit(name: str, root: Path) -> dict[str, Any]:
    from e2ekit.core.paths import resolve_config
    from e2ekit.core.verbs import load_run_config

    kit = get_kit(name)
    run_dir = root / name
    t0 = time.perf_counter()
    cfg_path = str(resolve_config(name, kit.demo_config))
    log.info("[%s] train %s", name, cfg_path)
    # the demo is meant to be run again: it replaces its own earlier run
    train = _run(kit, "train", "-c", cfg_path, "--out", run_dir, "--overwrite")
    weights = run_dir / "best.pt"
    evaluation = _run(kit, "eval", "--weights", weights)
    export_dir = run_dir / "export"
    export = _run(kit, "export", "--weights", weights, "--out", export_dir)
    _, args = parse_verb(kit, "eval", ["--weights", str(weights)])
    cfg, _ = load_run_config(kit, args)
    input_path = kit.demo_input(cfg, run_dir)
    pred = _run(
        kit, "predict", "--model", export_dir, "--input", input_path, "--out", run_dir / "predict"
    )
    served = _serve_once(kit, export_dir)
    metric = train.get("best_metric", "")
    return {
        "kit": name,
        "metric": metric,
        "train": train.get(metric),
        "eval": evaluation.get(metric),
        "onnx_diff": export["max_abs_diff"],
        "int8_diff": export.get("int8_max_abs_diff"),
        "predicted": pred.get("rows", pred.get("images", pred.get("items", ""))),
        "http": served["status"],
        "http_ms": served["latency_ms"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value else f"{value:.4f}"
    return "-" if value is None else str(value)


def run_demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="e2ekit demo")
    parser.add_argument("--out", default="runs/demo", help="where the demo runs go")
    public = [k for k in available_kits() if k in PUBLIC_KITS]
    parser.add_argument(
        "--kits", default=",".join(public or available_kits()), help="comma-separated kits"
    )
    args = parser.parse_args(argv)
    root = Path(args.out)
    rows = [demo_kit(name, root) for name in args.kits.split(",") if name]
    print()
    print(_table(rows))
    print(json.dumps({"demo": "ok", "kits": [r["kit"] for r in rows], "out": str(root)}))
    return 0
