"""``e2ekit <kit> <verb> [-c CONFIG] [-o KEY=VALUE ...] [--out DIR] [flags]``.

Dispatch is by hand so an unknown kit, verb or flag names itself and the closest
valid choice; ``E2EError`` and the other failures a user can fix (a file that cannot be
read or written, not UTF-8, not a model) become a one-line message and exit status 1, with
the traceback only under ``--debug`` (or ``E2EKIT_DEBUG=1``). Each kit lists its verbs and
their flags in ``Kit.verbs()``: this file names none of them.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import sys
import textwrap
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from e2ekit.core.errors import E2EError, closest, did_you_mean
from e2ekit.core.logs import jsonable, setup_console

if TYPE_CHECKING:
    from e2ekit.core.kit import Kit, Verb

COMMANDS = ("configs", "demo", "weights")
SHAPE = "[-c CONFIG] [-o KEY=VALUE ...] [--out DIR] [flags]"
DEBUG_FLAG = "--debug"
DEBUG_ENV = "E2EKIT_DEBUG"

USAGE = f"""usage: e2ekit [{DEBUG_FLAG}] <kit> <verb> {SHAPE}
       e2ekit configs [KIT]
       e2ekit demo
       e2ekit weights list | import FILE [--name ARCH]
       e2ekit --version

kits:  text  seg  det  ctr  (toy: the core's example kit)
verbs: train  eval  predict  export  serve  bench, and each kit's own
run `e2ekit <kit> -h` for a kit's verbs, `e2ekit <kit> <verb> -h` for a verb's flags
{DEBUG_FLAG} (or {DEBUG_ENV}=1): an error also prints its traceback"""


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


def parse_verb(kit: Kit[Any], verb: str, argv: list[str]) -> tuple[Verb, argparse.Namespace]:
    """The kit's ``verb`` and its parsed flags (``-h`` prints the help and exits)."""
    table = kit.verbs()
    spec = _lookup(kit, table, verb)
    p = _Parser(
        prog=f"e2ekit {kit.name} {verb}",
        description=spec.help,
        epilog=f"verbs of {kit.name}: {', '.join(table)}",
    )
    p.add_argument("-c", "--config", help="config file, or a shipped config name (default: quick)")
    p.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (YAML-typed value); repeatable",
    )
    p.add_argument("--out", help=spec.out_help)
    if spec.add_arguments is not None:
        spec.add_arguments(p)
    return spec, p.parse_args(argv)


def _lookup(kit: Kit[Any], table: dict[str, Verb], verb: str) -> Verb:
    if verb not in table:
        raise UsageError(
            f"e2ekit {kit.name} has no verb '{verb}'{did_you_mean(verb, table)}; "
            f"its verbs: {', '.join(table)}"
        )
    return table[verb]


def kit_help(kit: Kit[Any]) -> str:
    """``e2ekit <kit> -h``: the kit's verbs with one line each."""
    table = kit.verbs()
    width = max(map(len, table))
    rows = [f"  {name:<{width}}  {spec.help}" for name, spec in table.items()]
    return "\n".join(
        [
            f"usage: e2ekit {kit.name} <verb> {SHAPE}",
            "",
            f"{kit.name}: {kit.description}",
            "",
            "verbs:",
            *rows,
            "",
            f"run `e2ekit {kit.name} <verb> -h` for a verb's flags",
        ]
    )


def cmd_configs(argv: list[str]) -> int:
    from e2ekit.core.paths import config_description, configs_root, shipped_configs

    kit = argv[0] if argv else None
    found = shipped_configs(kit)
    if kit and not found:
        raise UsageError(f"no shipped configs for kit '{kit}' under {configs_root()}")
    names = {path: f"{kit_name}/{path.stem}" for kit_name, paths in found.items() for path in paths}
    width = max((len(n) for n in names.values()), default=0) + 2
    columns = max(60, shutil.get_terminal_size((100, 24)).columns)
    for path, name in names.items():  # whole first sentences, wrapped under their column
        text = textwrap.wrap(config_description(path), max(30, columns - width)) or [""]
        print(f"{name:<{width}}{text[0]}")
        for more in text[1:]:
            print(" " * width + more)
    print(f"{sum(len(v) for v in found.values())} configs under {configs_root()}")
    return 0


def run_kit_verb(kit_name: str, verb: str, argv: list[str]) -> int:
    from e2ekit.core.kit import get_kit

    kit = get_kit(kit_name)
    try:
        spec, args = parse_verb(kit, verb, argv)
    except SystemExit as exc:  # -h/--help printed the verb's help
        return int(exc.code or 0)
    result = spec.handler(kit, args)
    print(json.dumps(jsonable(result), ensure_ascii=False))
    return 0


def run_kit(kit_name: str, argv: list[str]) -> int:
    """``e2ekit <kit> ...``: its help, a verb, or an error naming the kit's verbs."""
    from e2ekit.core.kit import get_kit

    if argv and not argv[0].startswith("-"):
        return run_kit_verb(kit_name, argv[0], argv[1:])
    kit = get_kit(kit_name)
    if argv and argv[0] in ("-h", "--help"):
        print(kit_help(kit))
        return 0
    raise UsageError(f"missing verb: e2ekit {kit_name} <verb>; its verbs: {', '.join(kit.verbs())}")


def expected_failure(exc: BaseException) -> str | None:
    """One line for a failure the user can fix, naming the file; None for anything else (a
    bug keeps its traceback). Export and onnxruntime errors are recognised without importing
    their modules: an error of a module that was never loaded cannot have been raised."""
    if isinstance(exc, OSError) and exc.filename is not None:
        target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{exc.filename}{target}: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{exc.strerror}; free some space, or write elsewhere with --out"
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8 "
            f"({DEBUG_FLAG} shows where it was read)"
        )
    export_errors = sys.modules.get("e2ekit.core.export.errors")
    if export_errors is not None and isinstance(exc, export_errors.ExportError):
        return f"export failed: {_first_line(exc)}"
    if type(exc).__module__ == "onnxruntime.capi.onnxruntime_pybind11_state":
        return f"onnxruntime: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` (anywhere; removed from argv) or ``E2EKIT_DEBUG`` set to anything but 0."""
    env = os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    return env or DEBUG_FLAG in argv, [a for a in argv if a != DEBUG_FLAG]


def main(argv: Sequence[str] | None = None) -> int:
    debug, argv = _debug_requested(list(sys.argv[1:] if argv is None else argv))
    setup_console(logging.INFO)
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `e2ekit configs | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    except Exception as exc:
        message = str(exc) if isinstance(exc, E2EError) else expected_failure(exc)
        if message is None:
            raise
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


# what a bug report needs besides e2ekit's own version: the libraries that shape results
VERSIONED = ("torch", "torchvision", "onnx", "onnxruntime", "transformers", "tokenizers", "numpy")


def versions() -> str:
    """``e2ekit X.Y.Z`` and, on the next line, Python and the key libraries' versions."""
    import platform
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    libs = "  ".join(f"{d} {version(d)}" for d in VERSIONED)
    return f"e2ekit {version('e2ekit')}\npython {platform.python_version()}  {libs}"


def _dispatch(argv: list[str]) -> int:
    """``e2ekit ARGV`` (without ``--debug``): the usage, a command or a kit's verb."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    head = argv[0]
    if head in ("--version", "-V"):
        print(versions())
        return 0
    if head == "configs":
        return cmd_configs(argv[1:])
    if head == "demo":
        from e2ekit.core.demo import run_demo

        return run_demo(argv[1:])
    if head == "weights":
        from e2ekit.core.weights_cli import run_weights

        return run_weights(argv[1:])
    from e2ekit.core.kit import KITS

    if head not in KITS:
        hint = closest(head, [*KITS, *COMMANDS])
        raise UsageError(
            f"unknown kit or command '{head}'"
            + (f" (did you mean '{hint}'?)" if hint else "")
            + f"; kits: {', '.join(KITS)}; commands: {', '.join(COMMANDS)}"
        )
    return run_kit(head, argv[1:])
