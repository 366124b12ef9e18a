"""Det pipelines: :class:`Compose`, the dataset wrapper that feeds mix transforms, and the
builder of a transform list from a config (PaddleDetection's two spellings)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset

from e2ekit.core.errors import ConfigError, did_you_mean
from e2ekit.core.registry import Registry
from e2ekit.core.transform_order import check_uint8_order
from e2ekit.det.data.transforms._base import Sample, randint
from e2ekit.det.data.transforms._color import Normalize
from e2ekit.det.data.transforms._mix import MixTransform
from e2ekit.det.registry import TRANSFORMS


class Compose:
    """Apply transforms in order; uint8-only ones (distort, expand, mix) precede Normalize.

    ``compose(sample, sample_fn)``: ``sample_fn()`` returns another raw sample for mix
    transforms; each extra sample goes through the transforms before the mix transform
    (other mix transforms skipped) first.
    """

    def __init__(self, transforms: Sequence[Callable[..., Sample]]) -> None:
        check_uint8_order(transforms, Normalize, "uint8_only")
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, sample_fn: Callable[[], Sample] | None = None) -> Sample:
        for i, t in enumerate(self.transforms):
            if isinstance(t, MixTransform):
                fn = None if sample_fn is None else _Preprocessed(sample_fn, self.transforms[:i])
                sample = t(sample, fn)
            else:
                sample = t(sample)
        return sample

    @property
    def mix_transforms(self) -> list[MixTransform]:
        return [t for t in self.transforms if isinstance(t, MixTransform)]

    def set_mix_enabled(self, enabled: bool) -> None:
        """Switch Mosaic/Mixup on or off (e.g. off for the last epochs)."""
        for t in self.mix_transforms:
            t.enabled = bool(enabled)

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = "".join(f"\n  {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])" if inner else "Compose([])"


class _Preprocessed:
    """``sample_fn`` followed by the non-mix transforms that precede a mix transform."""

    def __init__(self, sample_fn: Callable[[], Sample], transforms: list[Callable]) -> None:
        self.sample_fn = sample_fn
        self.transforms = [t for t in transforms if not isinstance(t, MixTransform)]

    def __call__(self) -> Sample:
        sample = self.sample_fn()
        for t in self.transforms:
            sample = t(sample)
        return sample


class TransformDataset(Dataset):
    """``dataset[i]`` (a raw sample dict) through ``transforms``, with mix transforms fed
    random other samples of ``dataset`` (indices from torch's RNG)."""

    def __init__(self, dataset: Any, transforms: Compose | Sequence[Any] | None) -> None:
        self.dataset = dataset
        self.transforms = (
            transforms if isinstance(transforms, Compose) else build_transforms(transforms)
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def random_sample(self) -> Sample:
        return self.dataset[randint(0, len(self.dataset) - 1)]

    def __getitem__(self, index: int) -> Sample:
        return self.transforms(self.dataset[index], sample_fn=self.random_sample)


def normalize_spec(spec: Any) -> Any:
    """PaddleDetection's ``{Name: {kwargs}}`` -> ``{type: Name, **kwargs}``."""
    if isinstance(spec, dict) and "type" not in spec and len(spec) == 1:
        ((name, kwargs),) = spec.items()
        if kwargs is None:
            kwargs = {}
        if isinstance(name, str) and isinstance(kwargs, dict):
            return {"type": name, **kwargs}
    return spec


def build_list(
    specs: Any, registry: Registry[Any], what: str, wrap: Callable[[Any], Any] | None = None
) -> list[Callable[..., Any]]:
    """Build each entry of a ``{type: ...}`` list with ``registry``; errors name the entry
    (``transforms[2]: ...``). With ``wrap``, a per-sample transform listed among batch
    transforms is built from :data:`TRANSFORMS` and wrapped."""
    if specs is None:
        return []
    if isinstance(specs, (dict, str)) or not isinstance(specs, Sequence):
        raise ConfigError(f"{what} must be a list of {{type: ...}} entries, got {specs!r}")
    built = []
    for i, spec in enumerate(specs):
        if callable(spec):
            built.append(spec)
            continue
        spec = normalize_spec(spec)
        if not isinstance(spec, (dict, str)):
            raise ConfigError(f"{what}[{i}] must be a {{type: ...}} mapping, got {spec!r}")
        name = spec if isinstance(spec, str) else spec.get("type")
        try:
            if wrap is not None and isinstance(name, str) and name not in registry:
                if name in TRANSFORMS:  # a per-sample transform inside batch_transforms
                    built.append(wrap(TRANSFORMS.build(spec)))
                    continue
                if ":" not in name and "." not in name:
                    choices = [*registry.names(), *TRANSFORMS.names()]
                    raise ConfigError(
                        f"unknown {registry.kind} '{name}'{did_you_mean(name, choices)}; "
                        f"registered: {', '.join(sorted(choices))}"
                    )
            built.append(registry.build(spec))
        except ConfigError as exc:
            raise ConfigError(f"{what}[{i}]: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{what}[{i}] {spec!r}: {exc}") from None
    return built


def build_transforms(specs: Sequence[Any] | None) -> Compose:
    """A :class:`Compose` from ``[{"type": name, **kwargs}, ...]`` or PaddleDetection's
    ``[{name: {kwargs}}, ...]``; built callables may be mixed in; ``None`` is empty."""
    return Compose(build_list(specs, TRANSFORMS, "transforms"))
