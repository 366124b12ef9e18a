"""``e2ekit <kit> <verb> [-c CONFIG] [-o KEY=VALUE ...] [--out DIR] [flags]``.

Dispatch is by hand so an unknown kit, verb or flag names itself and the closest
valid choice; ``E2EError`` becomes a one-line message and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from e2ekit.core.errors import E2EError, closest, did_you_mean
from e2ekit.core.logs import jsonable, setup_console

VERBS = (
    "train",
    "eval",
    "predict",
    "export",
    "serve",
    "bench",
    "distill",
    "preview",
    "convert",
    "anchors",
)
COMMANDS = ("configs", "demo")

USAGE = """usage: e2ekit <kit> <verb> [-c CONFIG] [-o KEY=VALUE ...] [--out DIR] [flags]
       e2ekit configs [KIT]
       e2ekit demo

kits:  text  seg  det  ctr  (toy: the core's example kit)
verbs: train  eval  predict  export  serve  bench  (distill: text; preview, convert, anchors: det)
run `e2ekit <kit> <verb> -h` for a verb's flags"""


class UsageError(E2EError):
    """Bad command line: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that suggests the closest flag instead of a bare 'unrecognized'."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            flags = [o for a in self._actions for o in a.option_strings]
            bad = extra[0]
            hint = did_you_mean(bad.split("=")[0], flags) if bad.startswith("-") else ""
            what = "flag" if bad.startswith("-") else "argument"
            raise UsageError(f"{self.prog}: unknown {what} '{bad}'{hint}")
        return ns


def _common(p: argparse.ArgumentParser, out_help: str = "output folder") -> None:
    p.add_argument("-c", "--config", help="config file, or a shipped config name (default: quick)")
    p.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (YAML-typed value); repeatable",
    )
    p.add_argument("--out", help=out_help)


def verb_parser(kit: str, verb: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"e2ekit {kit} {verb}")
    _common(p, "also write the full JSON to this file" if verb == "bench" else "output folder")
    if verb == "train":
        p.add_argument(
            "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from last.pt"
        )
        p.add_argument("--weights", help="initialise from a checkpoint (fine-tuning)")
    elif verb == "eval":
        p.add_argument("--weights", help="checkpoint file or run folder")
        p.add_argument("--split", default="val", help="data split to evaluate (default: val)")
    elif verb == "export":
        p.add_argument("--weights", help="checkpoint file or run folder")
        p.add_argument(
            "--quantize",
            action="store_true",
            help="also write an int8 model (export.quantize_mode: dynamic|static)",
        )
    elif verb in ("predict", "serve"):
        p.add_argument("--weights", help="checkpoint (PyTorch, no export needed)")
        p.add_argument("--model", help="export folder (model.onnx + deploy.yaml)")
        p.add_argument("--backend", choices=("onnxruntime", "torch"), help="default: onnxruntime")
        p.add_argument("--precision", choices=("fp32", "int8"), help="int8 needs export --quantize")
        p.add_argument("--threads", type=int, help="inference threads")
        if verb == "predict":
            p.add_argument("--input", help="file, folder or list file to predict on")
        else:
            p.add_argument("--host", help="bind address (default 127.0.0.1)")
            p.add_argument("--port", type=int, help="port (default 8000)")
    elif verb == "bench":
        p.description = (
            "Speed of an export folder on this machine: items/s and ms per call (p50/p90) for "
            "onnxruntime fp32, int8 and torch, per batch size, on its saved sample inputs."
        )
        p.add_argument("--model", help="export folder (needs its sample_inputs.npz)")
        p.add_argument("--batch-sizes", default="1,8", help="comma-separated (default: 1,8)")
        p.add_argument(
            "--seconds", type=float, default=3.0, help="timed seconds per variant and batch size"
        )
        p.add_argument("--threads", type=int, help="inference threads (default: runtime's own)")
    return p


def _verb_table() -> dict[str, Callable[..., dict[str, Any]]]:
    from e2ekit.core import verbs
    from e2ekit.core.bench import cmd_bench

    return {
        "train": verbs.cmd_train,
        "eval": verbs.cmd_eval,
        "export": verbs.cmd_export,
        "predict": verbs.cmd_predict,
        "serve": verbs.cmd_serve,
        "bench": cmd_bench,
    }


def cmd_configs(argv: list[str]) -> int:
    from e2ekit.core.paths import config_description, configs_root, shipped_configs

    kit = argv[0] if argv else None
    found = shipped_configs(kit)
    if kit and not found:
        raise UsageError(f"no shipped configs for kit '{kit}' under {configs_root()}")
    for name, paths in found.items():
        for path in paths:
            print(f"{name}/{path.stem:<24} {config_description(path)}")
    print(f"{sum(len(v) for v in found.values())} configs under {configs_root()}")
    return 0


def run_kit_verb(kit_name: str, verb: str, argv: list[str]) -> int:
    from e2ekit.core.kit import get_kit

    if verb not in VERBS:
        raise UsageError(
            f"unknown verb '{verb}'{did_you_mean(verb, VERBS)}; verbs: {', '.join(VERBS)}"
        )
    kit = get_kit(kit_name)
    parser = verb_parser(kit_name, verb)
    add_arguments = getattr(kit, "add_arguments", None)
    if add_arguments is not None:  # kit-specific flags (ctr: train --stream)
        add_arguments(verb, parser)
    args = parser.parse_args(argv)
    extra = getattr(kit, "verbs", lambda: {})()
    table = {**_verb_table(), **extra}
    if verb not in table:
        raise UsageError(f"kit {kit_name} has no verb '{verb}'; it has: {', '.join(table)}")
    result = table[verb](kit, args)
    print(json.dumps(jsonable(result), ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_console(logging.INFO)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    try:
        head = argv[0]
        if head == "configs":
            return cmd_configs(argv[1:])
        if head == "demo":
            from e2ekit.core.demo import run_demo

            return run_demo(argv[1:])
        from e2ekit.core.kit import KITS

        if head not in KITS:
            hint = closest(head, [*KITS, *COMMANDS])
            raise UsageError(
                f"unknown kit or command '{head}'"
                + (f" (did you mean '{hint}'?)" if hint else "")
                + f"; kits: {', '.join(KITS)}; commands: {', '.join(COMMANDS)}"
            )
        if len(argv) < 2 or argv[1].startswith("-"):
            raise UsageError(f"missing verb: e2ekit {head} <verb>; verbs: {', '.join(VERBS)}")
        return run_kit_verb(head, argv[1], argv[2:])
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except E2EError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
