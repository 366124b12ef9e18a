"""Seg data: file readers, dataset layouts, label validation and the synthetic set."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.core.imageio import (
    colorize,
    decode_image_bytes,
    encode_png,
    get_palette,
    overlay,
    read_image,
    read_label,
)
from e2ekit.seg.data import synthetic
from e2ekit.seg.data.datasets import (
    CITYSCAPES_ID_TO_TRAIN_ID,
    CityscapesDataset,
    FileListDataset,
    VOCSegDataset,
)
from e2ekit.seg.data.synthetic import builtin_root, make_synthetic
from e2ekit.seg.data.validate import validate_labels
from e2ekit.seg.registry import DATASETS

SHARED_SEG = Path(__file__).resolve().parents[3] / "shared" / "data" / "seg"


def _image(h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(array))
    return path


def _pairs(root: Path, labels: list[np.ndarray], list_name: str = "list.txt") -> Path:
    """Write images/i.png + labels/i.png for each label and a PaddleSeg list file."""
    lines = []
    for i, lab in enumerate(labels):
        _write(root / "images" / f"{i}.png", _image(*lab.shape, seed=i))
        _write(root / "labels" / f"{i}.png", lab)
        lines.append(f"images/{i}.png labels/{i}.png")
    (root / list_name).write_text("\n".join(lines) + "\n")
    return root / list_name


# ---------------------------------------------------------------- imageio


def test_read_image_rgb_gray_bmp_and_bytes(tmp_path: Path) -> None:
    rgb = _image()
    img = read_image(_write(tmp_path / "a.png", rgb))
    assert img.dtype == torch.uint8 and img.shape == (3, 6, 8)
    assert torch.equal(img.permute(1, 2, 0), torch.from_numpy(rgb))
    gray = rgb[..., 0]
    g = read_image(_write(tmp_path / "g.png", gray))
    assert g.shape == (3, 6, 8) and torch.equal(g[1], torch.from_numpy(gray))
    Image.fromarray(rgb).save(tmp_path / "b.bmp")  # torchvision lacks BMP: Pillow fallback
    assert torch.equal(read_image(tmp_path / "b.bmp").permute(1, 2, 0), torch.from_numpy(rgb))
    assert torch.equal(decode_image_bytes(encode_png(rgb)).permute(1, 2, 0), torch.from_numpy(rgb))


def test_read_image_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"image file not found: .*nope\.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot decode image .*bad\.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(DataError, match="cannot decode image"):
        decode_image_bytes(b"garbage")


def test_palette_label_reads_indices(tmp_path: Path) -> None:
    ids = np.array([[0, 3, 3], [15, 255, 0]], np.uint8)
    im = Image.fromarray(ids, mode="P")
    im.putpalette([(i * 7) % 256 for i in range(768)])  # colours unrelated to the ids
    im.save(tmp_path / "p.png")
    got = read_label(tmp_path / "p.png")
    assert got.dtype == np.uint8 and np.array_equal(got, ids)
    deep = np.array([[0, 300], [1000, 65535]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    assert np.array_equal(read_label(tmp_path / "d.png"), deep)


def test_rgb_label_rejected(tmp_path: Path) -> None:
    _write(tmp_path / "rgb.png", _image())
    with pytest.raises(DataError, match=r"rgb\.png is a RGB image.*single-channel.*palette"):
        read_label(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"label file not found: .*x\.png"):
        read_label(tmp_path / "x.png")


def test_palette_colorize_overlay() -> None:
    pal = get_palette(256)
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0] and pal[3].tolist() == [128, 128, 0]
    assert len({tuple(c) for c in pal.tolist()}) == 256
    lab = np.array([[0, 1], [2, 255]])
    col = colorize(lab)
    assert col.shape == (2, 2, 3) and col[0, 1].tolist() == [128, 0, 0]
    img = np.full((2, 2, 3), 100, np.uint8)
    out = overlay(torch.from_numpy(img).permute(2, 0, 1), lab, alpha=0.5)
    assert out[0, 1].tolist() == [114, 50, 50]  # (100 + 128) / 2, 100 / 2
    assert out[1, 1].tolist() == [100, 100, 100]  # ignored pixel left as is


# ---------------------------------------------------------------- file list


def test_file_list_reads_samples(tmp_path: Path) -> None:
    labs = [np.array([[0, 1, 2], [2, 1, 0]], np.uint8), np.full((2, 3), 1, np.uint8)]
    lf = _pairs(tmp_path, labs)
    ds = DATASETS.build(
        {"type": "file_list", "root": tmp_path, "list_file": lf.name}, num_classes=3
    )
    assert isinstance(ds, FileListDataset) and len(ds) == 2
    assert ds.samples[1] == (tmp_path / "images/1.png", tmp_path / "labels/1.png")
    s = ds[0]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 2, 3)
    expect = torch.from_numpy(_image(2, 3, seed=0)).permute(2, 0, 1).float() / 255
    assert torch.allclose(s["image"], expect)
    assert s["label"].dtype == torch.int64 and s["label"].tolist() == labs[0].tolist()


def test_file_list_applies_transforms_to_tv_tensors(tmp_path: Path) -> None:
    lf = _pairs(tmp_path, [np.array([[0, 1], [1, 0]], np.uint8)])
    seen = {}

    def transform(sample: dict) -> dict:
        seen.update(sample)
        return {"image": sample["image"].float(), "label": sample["label"] + 10}

    ds = FileListDataset(tmp_path, lf, 2, transforms=transform)
    out = ds[0]
    assert isinstance(seen["image"], tv_tensors.Image) and seen["image"].dtype == torch.uint8
    assert isinstance(seen["label"], tv_tensors.Mask) and seen["label"].dtype == torch.int64
    assert out["label"].tolist() == [[10, 11], [11, 10]]


def test_file_list_malformed_line(tmp_path: Path) -> None:
    _pairs(tmp_path, [np.zeros((2, 2), np.uint8)])
    (tmp_path / "list.txt").write_text("images/0.png labels/0.png\nimages/0.png labels/0.png x\n")
    with pytest.raises(DataError, match=r"list\.txt:2: expected 'image_path label_path', got 3"):
        FileListDataset(tmp_path, "list.txt", 2)


def test_file_list_missing_files_reported_with_line(tmp_path: Path) -> None:
    _pairs(tmp_path, [np.zeros((2, 2), np.uint8)])
    text = "images/0.png labels/0.png\n\nimages/9.png labels/0.png\nimages/0.png labels/8.png\n"
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(DataError) as err:
        FileListDataset(tmp_path, "list.txt", 2)
    msg = str(err.value)
    assert msg.startswith("2 file(s) listed in") and "\n" not in msg
    assert "list.txt:3: " in msg and "images/9.png" in msg
    assert "list.txt:4: " in msg and "labels/8.png" in msg
    with pytest.raises(DataError, match=r"list file not found: nolist\.txt"):
        FileListDataset(tmp_path, "nolist.txt", 2)


def test_file_list_unlabelled_and_mixed(tmp_path: Path) -> None:
    _pairs(tmp_path, [np.zeros((2, 3), np.uint8), np.zeros((2, 3), np.uint8)])
    (tmp_path / "test.txt").write_text("images/0.png\nimages/1.png\n")
    ds = FileListDataset(tmp_path, "test.txt", 2, ignore_index=250)
    assert ds.samples[0][1] is None and not ds.has_labels
    assert ds[1]["label"].tolist() == [[250] * 3] * 2
    (tmp_path / "mixed.txt").write_text("images/0.png labels/0.png\nimages/1.png\n")
    with pytest.raises(DataError, match=r"mixed\.txt:2: only an image path"):
        FileListDataset(tmp_path, "mixed.txt", 2)


def test_label_size_mismatch(tmp_path: Path) -> None:
    _write(tmp_path / "images/0.png", _image(4, 4))
    _write(tmp_path / "labels/0.png", np.zeros((4, 5), np.uint8))
    (tmp_path / "l.txt").write_text("images/0.png labels/0.png\n")
    with pytest.raises(DataError, match=r"label .*0\.png is 5x4 but image .*0\.png is 4x4"):
        FileListDataset(tmp_path, "l.txt", 2)[0]


def test_binary_255_to_1_and_label_map(tmp_path: Path) -> None:
    lf = _pairs(tmp_path, [np.array([[0, 255], [255, 7]], np.uint8)])
    assert FileListDataset(tmp_path, lf, 2, binary_255_to_1=True)[0]["label"].tolist() == [
        [0, 1],
        [1, 7],
    ]
    mapped = FileListDataset(tmp_path, lf, 3, label_map={7: 2, 255: 0})[0]["label"]
    assert mapped.tolist() == [[0, 0], [0, 2]]


# ---------------------------------------------------------------- voc / cityscapes


def test_voc_layout(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    ids = np.array([[0, 15, 15], [255, 0, 20]], np.uint8)
    for sid in ("2007_000032", "2007_000033"):
        Image.fromarray(_image(2, 3)).save(root / "JPEGImages" / f"{sid}.jpg")
        im = Image.fromarray(ids, mode="P")
        im.putpalette(get_palette(256).ravel().tolist())
        im.save(root / "SegmentationClass" / f"{sid}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000033\n")
    ds = VOCSegDataset(tmp_path / "VOCdevkit", split="train")
    assert len(ds) == 2 and ds.num_classes == 21 and ds.class_names[15] == "person"
    s = ds[1]
    assert s["image"].shape == (3, 2, 3) and s["label"].tolist() == ids.tolist()
    with pytest.raises(DataError, match=r"val\.txt.*available splits: train"):
        VOCSegDataset(root, split="val")
    (root / "ImageSets/Segmentation/bad.txt").write_text("2007_000032\n2007_999999\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: .*2007_999999\.jpg"):
        VOCSegDataset(root, split="bad")


def _cityscapes(root: Path, raw: np.ndarray) -> None:
    for city, frame in (("aachen", "000000_000019"), ("bremen", "000001_000019")):
        stem = f"{city}_{frame}"
        _write(root / "leftImg8bit/train" / city / f"{stem}_leftImg8bit.png", _image(*raw.shape))
        _write(root / "gtFine/train" / city / f"{stem}_gtFine_labelIds.png", raw)
        _write(root / "gtFine/train" / city / f"{stem}_gtFine_labelTrainIds.png", raw % 19)


def test_cityscapes_maps_ids_to_train_ids(tmp_path: Path) -> None:
    raw = np.array([[7, 8, 26, 0], [33, 1, 24, 34], [11, 21, 23, 255]], np.uint8)
    _cityscapes(tmp_path, raw)
    ds = CityscapesDataset(tmp_path, split="train")
    assert len(ds) == 2 and ds.samples[0][0].name == "aachen_000000_000019_leftImg8bit.png"
    expect = [[0, 1, 13, 255], [18, 255, 11, 255], [2, 8, 10, 255]]
    assert ds[0]["label"].tolist() == expect
    assert len(CITYSCAPES_ID_TO_TRAIN_ID) == 19
    assert sorted(CITYSCAPES_ID_TO_TRAIN_ID.values()) == list(range(19))
    stats = validate_labels(ds, 19, progress=False)
    assert stats["class_pixels"][0] == 2 and stats["ignore_pixels"] == 8
    train_ids = CityscapesDataset(tmp_path, label_type="labelTrainIds")
    assert train_ids[1]["label"].tolist() == (raw % 19).tolist()
    ignore_0 = CityscapesDataset(tmp_path, ignore_index=0, num_classes=19)
    assert ignore_0[0]["label"][0].tolist() == [0, 1, 13, 0]
    with pytest.raises(DataError, match="available splits: train"):
        CityscapesDataset(tmp_path, split="val")


# ---------------------------------------------------------------- validation


def test_validate_out_of_range_names_file_value_and_fix(tmp_path: Path) -> None:
    labs = [np.array([[0, 1], [2, 2]], np.uint8)] + [np.array([[0, 7], [1, 2]], np.uint8)] * 5
    lf = _pairs(tmp_path, labs)
    ds = FileListDataset(tmp_path, lf, 3)
    with pytest.raises(DataError) as err:
        validate_labels(ds, 3, progress=False)
    msg = str(err.value)
    assert msg == (
        "label 7 with num_classes 3 in labels/1.png (and 4 more files): "
        "set data.num_classes >= 8 or fix the labels (or remap them to 255 with data.label_map)"
    )
    ok = validate_labels(FileListDataset(tmp_path, lf, 8), 8, progress=False)
    assert ok["class_pixels"][7] == 5


def test_validate_binary_mask_hint(tmp_path: Path) -> None:
    labs = [np.array([[0, 255], [255, 255]], np.uint8), np.full((2, 2), 255, np.uint8)]
    lf = _pairs(tmp_path, labs)
    with pytest.raises(DataError) as err:
        validate_labels(FileListDataset(tmp_path, lf, 2), 2, progress=False)
    msg = str(err.value)
    assert "labels/0.png (and 1 more files)" in msg and "binary_255_to_1: true" in msg
    # with another ignore_index the 255s are out of range: same hint
    with pytest.raises(DataError, match=r"label 255 with num_classes 2 .*binary_255_to_1: true"):
        validate_labels(FileListDataset(tmp_path, lf, 2, ignore_index=254), 2, 254, progress=False)
    stats = validate_labels(
        FileListDataset(tmp_path, lf, 2, binary_255_to_1=True), 2, progress=False
    )
    assert stats["class_pixels"] == [1, 7] and stats["ignore_pixels"] == 0
    # the flag on the validator alone works on counts too
    stats = validate_labels(
        FileListDataset(tmp_path, lf, 2), 2, binary_255_to_1=True, progress=False
    )
    assert stats["class_pixels"] == [1, 7]


def test_validate_valid_set_counts(tmp_path: Path) -> None:
    labs = [
        np.array([[0, 1, 1], [3, 255, 0]], np.uint8),
        np.array([[0, 0, 1], [1, 1, 255]], np.uint8),
        np.array([[0, 0, 0], [0, 0, 0]], np.uint8),
    ]
    lf = _pairs(tmp_path, labs)
    stats = validate_labels(FileListDataset(tmp_path, lf, 4), 4, progress=False)
    assert stats["num_files"] == 3 and stats["num_pixels"] == 18
    assert stats["class_pixels"] == [10, 5, 0, 1] and stats["ignore_pixels"] == 2
    assert stats["ignore_share"] == pytest.approx(2 / 18)
    assert stats["class_share"] == pytest.approx([10 / 16, 5 / 16, 0, 1 / 16])
    assert stats["absent_classes"] == [2]
    assert (
        validate_labels(FileListDataset(tmp_path, lf, 4), 4, max_files=2, progress=False)[
            "num_files"
        ]
        == 2
    )


def test_validate_rgb_label(tmp_path: Path) -> None:
    _write(tmp_path / "images/0.png", _image(2, 2))
    _write(tmp_path / "labels/0.png", _image(2, 2))
    (tmp_path / "l.txt").write_text("images/0.png labels/0.png\n")
    with pytest.raises(DataError, match=r"labels/0\.png is a RGB image"):
        validate_labels(FileListDataset(tmp_path, "l.txt", 2), 2, progress=False)


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_complete(tmp_path: Path) -> None:
    a = make_synthetic(tmp_path / "a", num_train=8, num_val=3, size=(48, 64), num_classes=5, seed=3)
    b = make_synthetic(tmp_path / "b", num_train=8, num_val=3, size=(48, 64), num_classes=5, seed=3)
    c = make_synthetic(tmp_path / "c", num_train=8, num_val=3, size=(48, 64), num_classes=5, seed=4)
    files = sorted(p.relative_to(a["root"]) for p in a["root"].rglob("*.*"))
    assert len(files) == 2 * 11 + 3
    for rel in files:
        assert (a["root"] / rel).read_bytes() == (b["root"] / rel).read_bytes()
    assert (a["images"] / "train_00000.png").read_bytes() != (
        c["images"] / "train_00000.png"
    ).read_bytes()
    ds = FileListDataset(a["root"], a["train"], 5)
    assert len(ds) == 8 and len(FileListDataset(a["root"], "val.txt", 5)) == 3
    assert ds[0]["image"].shape == (3, 48, 64)
    stats = validate_labels(ds, 5, progress=False)
    assert stats["absent_classes"] == [] and stats["ignore_pixels"] == 0
    assert 0.3 < stats["class_share"][0] < 0.97  # background dominates but shapes are there
    img = read_image(a["images"] / "train_00001.png").float()
    assert img.std() > 20  # textured and coloured, not blank
    with pytest.raises(ConfigError, match=r"num_classes 2\.\.7"):
        make_synthetic(tmp_path / "d", num_classes=9)


def test_builtin_root_reuses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2EKIT_DATA", str(tmp_path / "cache"))
    params = {"num_train": 4, "num_val": 2, "size": 32}
    first = builtin_root(params)
    assert first.parent == tmp_path / "cache" and first.name.startswith("shapes-")
    marker = first / "train.txt"
    stamp = marker.stat().st_mtime_ns
    again = builtin_root({"num_train": 4, "num_val": 2, "size": [32, 32]})
    assert again == first and marker.stat().st_mtime_ns == stamp
    assert builtin_root({**params, "seed": 1}) != first
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [first.name, builtin_root({**params, "seed": 1}).name]
    )  # no temporary folders left behind
    with pytest.raises(ConfigError, match="no parameter colour"):
        builtin_root({"colour": 1})
    monkeypatch.setitem(synthetic.DEFAULTS, "num_train", 3)  # keep the default set small here
    monkeypatch.setitem(synthetic.DEFAULTS, "num_val", 2)
    ds = FileListDataset("builtin:shapes", "val.txt", 4)
    assert len(ds) == 2 and ds.root.parent == tmp_path / "cache"
    assert ds.root == builtin_root({"num_train": 3, "num_val": 2, "num_classes": 4})


# ---------------------------------------------------------------- shared real data


@pytest.mark.skipif(not (SHARED_SEG / "membrane").is_dir(), reason="shared/data/seg absent")
def test_shared_membrane_binary_masks(tmp_path: Path) -> None:
    root = SHARED_SEG / "membrane" / "train"
    names = sorted(p.name for p in (root / "image").glob("*.png"))
    lf = tmp_path / "train.txt"
    lf.write_text("".join(f"image/{n} label/{n}\n" for n in names))
    with pytest.raises(DataError, match="binary_255_to_1: true"):
        validate_labels(FileListDataset(root, lf, 2), 2, progress=False)
    ds = FileListDataset(root, lf, 2, binary_255_to_1=True)
    stats = validate_labels(ds, 2, progress=False)
    assert stats["num_files"] == len(names) and stats["num_pixels"] == len(names) * 512 * 512
    assert stats["ignore_pixels"] == 0 and min(stats["class_pixels"]) > 0
    s = ds[0]
    assert s["image"].shape == (3, 512, 512) and set(s["label"].unique().tolist()) == {0, 1}


@pytest.mark.skipif(not (SHARED_SEG / "camvid_mini").is_dir(), reason="shared/data/seg absent")
def test_shared_camvid_mini(tmp_path: Path) -> None:
    root = SHARED_SEG / "camvid_mini"
    names = sorted(p.name for p in (root / "images_prepped_train").glob("*.png"))
    lf = tmp_path / "train.txt"
    lf.write_text(
        "".join(f"images_prepped_train/{n} annotations_prepped_train/{n}\n" for n in names)
    )
    ds = FileListDataset(root, lf, 12)
    stats = validate_labels(ds, 12, progress=False)
    assert stats["num_files"] == len(names) == 5 and stats["ignore_pixels"] == 0
    assert sum(stats["class_pixels"]) == 5 * 360 * 480 and stats["class_pixels"][11] > 0
    s = ds[0]
    assert s["image"].shape == (3, 360, 480) and s["label"].shape == (360, 480)
    assert int(s["label"].max()) <= 11
    with pytest.raises(DataError, match=r"label 11 with num_classes 11 .*>= 12"):
        validate_labels(FileListDataset(root, lf, 11), 11, progress=False)


def test_encode_png_roundtrip_uint16_and_chw() -> None:
    deep = np.array([[0, 1000], [65535, 7]], np.uint16)
    assert np.array_equal(np.array(Image.open(io.BytesIO(encode_png(deep)))), deep)
    chw = torch.from_numpy(_image(4, 5)).permute(2, 0, 1)
    assert torch.equal(decode_image_bytes(encode_png(chw)), chw)


def test_map_label_wide_dtypes(tmp_path: Path) -> None:
    lf = _pairs(tmp_path, [np.zeros((2, 2), np.uint8)])
    ds = FileListDataset(tmp_path, lf, 3, label_map={300: 2, 255: 0})
    wide = np.array([[300, 255], [1, 70000]], np.int32)  # a 32-bit label PNG
    assert ds.map_label(wide).tolist() == [[2, 0], [1, 70000]]
    assert ds.map_label(wide.astype(np.uint16)).tolist() == [[2, 0], [1, 70000 % 65536]]
    assert ds.map_label(np.array([255, 3], np.uint8)).dtype == np.uint8
    plain = FileListDataset(tmp_path, lf, 3)
    raw = np.array([1, 2], np.uint8)
    assert plain.map_label(raw) is raw  # no table, no copy


# ---------------------------------------------------------------- hostile list files


def test_file_list_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    _pairs(tmp_path, [np.zeros((2, 2), np.uint8)])
    (tmp_path / "list.txt").write_bytes(b"images/0.png labels/0.png\nimages/caf\xe9.png x\n")
    with pytest.raises(DataError, match=r"list\.txt:2: not UTF-8"):
        FileListDataset(tmp_path, "list.txt", 2)
    (tmp_path / "list.txt").write_bytes("images/0.png labels/0.png\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"list\.txt:1: not UTF-8"):
        FileListDataset(tmp_path, "list.txt", 2)


def test_file_list_path_too_long_for_the_os_is_reported_missing(tmp_path: Path) -> None:
    _pairs(tmp_path, [np.zeros((2, 2), np.uint8)])
    (tmp_path / "list.txt").write_text(
        "images/0.png labels/0.png\nimages/0.png " + "x" * 300 + "\n"
    )
    with pytest.raises(DataError, match=r"1 file\(s\) listed in .*list\.txt:2: .*xxxx"):
        FileListDataset(tmp_path, "list.txt", 2)


def test_voc_split_not_utf8_or_too_long_names_file_and_line(tmp_path: Path) -> None:
    split = tmp_path / "ImageSets" / "Segmentation" / "train.txt"
    split.parent.mkdir(parents=True)
    split.write_bytes(b"2007_000032\n2007_\xff\n")
    with pytest.raises(DataError, match=r"train\.txt:2: not UTF-8"):
        VOCSegDataset(tmp_path, split="train")
    split.write_text("y" * 300 + "\n")
    with pytest.raises(DataError, match=r"2 file\(s\) listed in .*train\.txt:1: .*yyyy"):
        VOCSegDataset(tmp_path, split="train")


def test_relative_list_is_found_under_data_root_or_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-o data.root=d -o data.train_list=d/train.txt` from the folder above d works, as does
    `data.train_list=train.txt` (under the root); a list in neither place names both."""
    from e2ekit.core.config import load_config
    from e2ekit.seg.config import SegConfig
    from e2ekit.seg.task import SegTask

    from ..conftest import ROOT

    _pairs(tmp_path / "d", [np.zeros((4, 4), np.uint8)], "train.txt")
    monkeypatch.chdir(tmp_path)
    for listed in ("d/train.txt", "train.txt"):
        cfg = load_config(
            ROOT / "configs" / "seg" / "tiny.yaml",
            SegConfig,
            ["data.root=d", f"data.train_list={listed}", "data.num_classes=2"],
        )
        assert len(SegTask(cfg).build_dataset("train")) == 1
    cfg = load_config(
        ROOT / "configs" / "seg" / "tiny.yaml",
        SegConfig,
        ["data.root=d", "data.train_list=nowhere.txt", "data.num_classes=2"],
    )
    with pytest.raises(DataError, match=r"list file not found: nowhere\.txt \(looked in"):
        SegTask(cfg).build_dataset("train")
