"""Segmentation datasets: PaddleSeg file lists, PASCAL VOC and Cityscapes folders.

Every dataset checks at construction that all listed files exist (so a typo fails
in a second, not an hour into training) and returns samples
``{"image": tv_tensors.Image uint8 (3,H,W), "label": tv_tensors.Mask int64 (H,W)}``
to its transforms. Label values are remapped with one lookup table built once
(``label_map``, ``binary_255_to_1``, Cityscapes ids -> train ids), so
``__getitem__`` does no per-pixel Python work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.core.imageio import read_image, read_label
from e2ekit.core.textio import read_utf8
from e2ekit.seg.registry import DATASETS

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "VOC_CLASSES",
    "CityscapesDataset",
    "FileListDataset",
    "OriginalLabels",
    "SegDataset",
    "VOCSegDataset",
    "build_label_lut",
]

Sample = dict[str, torch.Tensor]
Transform = Callable[[dict[str, Any]], dict[str, Any]]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# The official Cityscapes labelIds -> trainIds table (cityscapesScripts' labels.py);
# every id not listed (void, rare and license-plate classes) becomes ignore_index.
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

_LUT_SIZE = 1 << 16  # covers uint8 and uint16 label PNGs


def _narrow(lut: np.ndarray) -> np.ndarray:
    """The table in the narrowest dtype holding every entry (uint8 when all fit)."""
    lo, hi = int(lut.min()), int(lut.max())
    for dtype in (np.uint8, np.uint16):
        if lo >= 0 and hi <= np.iinfo(dtype).max:
            return lut.astype(dtype)
    return lut.astype(np.int64)


def build_label_lut(
    mapping: Mapping[int, int], base: Mapping[int, int] | None = None, unmapped: int = 255
) -> np.ndarray:
    """A lookup table ``lut[raw] -> class id`` over raw values 0..65535 (int64).

    Without ``base`` raw values map to themselves; with it (e.g. Cityscapes ids ->
    train ids) raw values map through ``base`` and values it lacks to ``unmapped``.
    ``mapping`` then remaps the result, so a user's ``label_map`` always speaks in
    the dataset's class ids.
    """
    keys = [int(k) for k in (*mapping, *(base or {}))]
    if any(k < 0 for k in keys):
        raise ConfigError(f"data.label_map keys must be >= 0 (label PNGs hold 0..65535): {keys}")
    size = max([_LUT_SIZE, *(k + 1 for k in keys)])
    if base is None:
        lut = np.arange(size, dtype=np.int64)
    else:
        lut = np.full(size, unmapped, dtype=np.int64)
        lut[list(map(int, base))] = list(map(int, base.values()))
    out = lut.copy()
    for k, v in mapping.items():
        out[lut == int(k)] = int(v)
    return out


class SegDataset(Dataset):
    """Base class: a list of (image_path, label_path | None) with shared reading logic."""

    class_names: tuple[str, ...] | None = None

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path | None]],
        num_classes: int,
        transforms: Transform | None = None,
        ignore_index: int = 255,
        binary_255_to_1: bool = False,
        label_map: Mapping[int, int] | None = None,
        root: Path | None = None,
        base_map: Mapping[int, int] | None = None,
    ) -> None:
        if int(num_classes) < 1:
            raise ConfigError(f"data.num_classes must be >= 1, got {num_classes}")
        self.samples: list[tuple[Path, Path | None]] = list(samples)
        self.num_classes = int(num_classes)
        self.transforms = transforms
        self.ignore_index = int(ignore_index)
        self.binary_255_to_1 = bool(binary_255_to_1)
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self.root = root
        self._lut: np.ndarray | None
        self._lut8: np.ndarray | None
        self._make_lut(base_map)

    def _make_lut(self, base_map: Mapping[int, int] | None) -> None:
        """One table for the base map (e.g. Cityscapes ids), 255->1, then the user's map."""
        user = dict(self.label_map)
        if self.binary_255_to_1:
            user.setdefault(255, 1)
        self._outside = None if base_map is None else self.ignore_index
        if base_map is None and not user:
            self._lut = self._lut8 = None
            return
        lut = build_label_lut(user, base_map, unmapped=self.ignore_index)
        self._lut = _narrow(lut)
        self._lut8 = _narrow(lut[:256])  # uint8 labels index this: stays uint8 when it can

    @property
    def has_labels(self) -> bool:
        return all(lp is not None for _, lp in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def display_path(self, path: Path) -> str:
        """A path relative to the dataset root when possible, for short messages."""
        if self.root is not None:
            try:
                return str(Path(path).relative_to(self.root))
            except ValueError:
                pass
        return str(path)

    def map_label(self, raw: np.ndarray) -> np.ndarray:
        """Raw label values -> class ids (vectorised lookup; identity without a map)."""
        lut = self._lut
        if lut is None or self._lut8 is None:
            return raw
        if raw.dtype == np.uint8:
            return self._lut8[raw]
        if raw.dtype == np.uint16:
            return lut[raw]
        r = raw.astype(np.int64)  # 32-bit label PNG: values may fall outside the table
        inside = (r >= 0) & (r < len(lut))
        outside = r if self._outside is None else self._outside
        return np.where(inside, lut[np.clip(r, 0, len(lut) - 1)], outside)

    def load_label(self, i: int) -> np.ndarray | None:
        """The label of sample ``i`` after remapping, (H, W) uint8/uint16/int; None if absent."""
        label_path = self.samples[i][1]
        if label_path is None:
            return None
        return self.map_label(read_label(label_path))

    def __getitem__(self, i: int) -> Sample:
        image_path, label_path = self.samples[i]
        image = read_image(image_path)  # uint8 (3, H, W)
        h, w = image.shape[-2:]
        raw = self.load_label(i)
        if raw is None:  # test split without labels: every pixel ignored
            label = torch.full((h, w), self.ignore_index, dtype=torch.int64)
        else:
            if raw.shape != (h, w):
                raise DataError(
                    f"label {label_path} is {raw.shape[1]}x{raw.shape[0]} but image "
                    f"{image_path} is {w}x{h}; a label must match its image pixel for pixel"
                )
            label = torch.from_numpy(np.ascontiguousarray(raw)).to(torch.int64)
        if self.transforms is not None:
            return self.transforms(
                {"image": tv_tensors.Image(image), "label": tv_tensors.Mask(label)}
            )
        return {"image": image.float().div_(255.0), "label": label}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root}, samples={len(self)}, "
            f"num_classes={self.num_classes})"
        )


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False (not an OSError) for a name the OS refuses, such as one
    over 255 bytes from a corrupt list: it is then reported missing with its line."""
    try:
        return path.is_file()
    except OSError:
        return False


def _report_missing(missing: list[tuple[str, Path]], source: str) -> None:
    """One DataError naming the count and the first few missing files."""
    if not missing:
        return
    first = "; ".join(f"{where}: {path}" for where, path in missing[:3])
    more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
    raise DataError(
        f"{len(missing)} file(s) listed in {source} not found: {first}{more}; "
        "check data.root and the paths in the list"
    )


def _resolve_root(root: str | Path, num_classes: int) -> Path:
    """``builtin:shapes`` -> the cached synthetic dataset; anything else as a path."""
    text = str(root)
    if text.startswith("builtin:"):
        from e2ekit.seg.data.synthetic import builtin_root

        return builtin_root({"name": text.split(":", 1)[1], "num_classes": num_classes})
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root {path} is not a folder")
    return path


@DATASETS.register("file_list")
class FileListDataset(SegDataset):
    """PaddleSeg's file list: each line ``image_path label_path``, relative to ``root``.

    A line with only an image path is allowed (a test split without labels), as
    long as no other line has a label. Blank lines and ``#`` comments are skipped.
    ``root: builtin:shapes`` uses the built-in synthetic dataset.
    """

    def __init__(
        self,
        root: str | Path,
        list_file: str | Path,
        num_classes: int,
        transforms: Transform | None = None,
        ignore_index: int = 255,
        binary_255_to_1: bool = False,
        label_map: Mapping[int, int] | None = None,
        separator: str | None = None,
    ) -> None:
        root_path = _resolve_root(root, num_classes)
        lf = Path(list_file).expanduser()
        if not lf.is_absolute() and (root_path / lf).is_file():
            lf = root_path / lf
        if not lf.is_file():
            raise DataError(f"list file not found: {list_file} (looked in {root_path} and .)")
        samples: list[tuple[Path, Path | None]] = []
        missing: list[tuple[str, Path]] = []
        first_labelled: int | None = None
        first_unlabelled: int | None = None
        text = read_utf8(lf, DataError)
        for line_no, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            fields = (
                [f.strip() for f in stripped.split(separator)] if separator else stripped.split()
            )
            fields = [f for f in fields if f]
            if len(fields) > 2:
                raise DataError(
                    f"{lf}:{line_no}: expected 'image_path label_path', got {len(fields)} "
                    f"fields: {stripped!r} (a path with spaces needs data.separator)"
                )
            paths = [p if p.is_absolute() else root_path / p for p in map(Path, fields)]
            if len(paths) == 1:
                first_unlabelled = first_unlabelled or line_no
            else:
                first_labelled = first_labelled or line_no
            for p in paths:
                if not _is_file(p):
                    missing.append((f"{lf}:{line_no}", p))
            samples.append((paths[0], paths[1] if len(paths) == 2 else None))
        if first_labelled and first_unlabelled:
            raise DataError(
                f"{lf}:{first_unlabelled}: only an image path, but line {first_labelled} has "
                "a label path; give every line a label (or none, for a test split)"
            )
        _report_missing(missing, str(lf))
        if not samples:
            raise DataError(f"{lf}: the list has no samples")
        self.list_file = lf
        super().__init__(
            samples, num_classes, transforms, ignore_index, binary_255_to_1, label_map, root_path
        )


@DATASETS.register("voc")
class VOCSegDataset(SegDataset):
    """PASCAL VOC 2012 layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``.

    The ids come from ``ImageSets/Segmentation/<split>.txt``; VOC labels are palette
    PNGs whose indices are the class ids, with 255 marking object borders (ignored).
    """

    class_names = VOC_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        num_classes: int = 21,
        transforms: Transform | None = None,
        ignore_index: int = 255,
        binary_255_to_1: bool = False,
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        root_path = Path(root).expanduser()
        # accept the VOCdevkit folder too
        if not (root_path / "ImageSets").is_dir() and (root_path / "VOC2012").is_dir():
            root_path = root_path / "VOC2012"
        split_dir = root_path / "ImageSets" / "Segmentation"
        split_file = split_dir / f"{split}.txt"
        if not split_file.is_file():
            have = sorted(p.stem for p in split_dir.glob("*.txt")) if split_dir.is_dir() else []
            raise DataError(
                f"VOC split file not found: {split_file}; "
                f"available splits: {', '.join(have) or '(none: is data.root a VOC2012 folder?)'}"
            )
        samples: list[tuple[Path, Path | None]] = []
        missing: list[tuple[str, Path]] = []
        for line_no, line in enumerate(read_utf8(split_file, DataError).splitlines(), start=1):
            sid = line.strip().split()[0] if line.strip() else ""
            if not sid:
                continue
            pair = (
                root_path / "JPEGImages" / f"{sid}.jpg",
                root_path / "SegmentationClass" / f"{sid}.png",
            )
            missing += [(f"{split_file}:{line_no}", p) for p in pair if not _is_file(p)]
            samples.append(pair)
        _report_missing(missing, str(split_file))
        if not samples:
            raise DataError(f"{split_file}: the split lists no image ids")
        super().__init__(
            samples, num_classes, transforms, ignore_index, binary_255_to_1, label_map, root_path
        )


@DATASETS.register("cityscapes")
class CityscapesDataset(SegDataset):
    """Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``.

    Labels are ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` mapped to the 19
    train ids through the official table (other ids -> ignore_index), or
    ``*_gtFine_labelTrainIds.png`` used as is with ``label_type: labelTrainIds``.
    """

    class_names = CITYSCAPES_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        num_classes: int = 19,
        transforms: Transform | None = None,
        ignore_index: int = 255,
        binary_255_to_1: bool = False,
        label_map: Mapping[int, int] | None = None,
        label_type: str = "labelIds",
    ) -> None:
        if label_type not in ("labelIds", "labelTrainIds"):
            raise ConfigError(
                f"cityscapes label_type must be 'labelIds' or 'labelTrainIds', got '{label_type}'"
            )
        root_path = Path(root).expanduser()
        image_dir = root_path / "leftImg8bit" / split
        if not image_dir.is_dir():
            parent = root_path / "leftImg8bit"
            have = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
            raise DataError(
                f"Cityscapes image folder not found: {image_dir}; "
                f"available splits: {', '.join(have) or '(none)'} (data.root must be the "
                "folder holding leftImg8bit/ and gtFine/)"
            )
        samples: list[tuple[Path, Path | None]] = []
        missing: list[tuple[str, Path]] = []
        suffix = "_leftImg8bit.png"
        for image_path in sorted(image_dir.glob(f"*/*{suffix}")):
            stem = image_path.name[: -len(suffix)]
            label_path = (
                root_path
                / "gtFine"
                / split
                / image_path.parent.name
                / f"{stem}_gtFine_{label_type}.png"
            )
            if not label_path.is_file():
                missing.append((f"label of {image_path.name}", label_path))
            samples.append((image_path, label_path))
        _report_missing(missing, f"{root_path / 'gtFine' / split}")
        if not samples:
            raise DataError(f"no *{suffix} images under {image_dir}/<city>/")
        self.label_type = label_type
        base = CITYSCAPES_ID_TO_TRAIN_ID if label_type == "labelIds" else None
        super().__init__(
            samples, num_classes, transforms, ignore_index, binary_255_to_1, label_map,
            root_path, base_map=base,
        )  # fmt: skip


class OriginalLabels(Dataset):
    """An evaluation split whose samples also carry the label at the image's own size
    (``label_orig``) when the val transforms resized it, so mIoU is scored on the original
    pixels as PaddleSeg scores it: the logits are resized back, never the label."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getattr__(self, name: str) -> Any:  # the wrapped split's attributes (samples, ...)
        if name == "ds":
            raise AttributeError(name)
        return getattr(self.ds, name)

    def __getitem__(self, i: int) -> Sample:
        sample = self.ds[i]
        label = sample["label"]
        raw = self.ds.load_label(i)
        if raw is not None and tuple(raw.shape) != tuple(label.shape[-2:]):
            sample = dict(sample)
            sample["label_orig"] = torch.from_numpy(np.ascontiguousarray(raw)).to(torch.int64)
        return sample
