"""``seg convert`` (labelme, VIA, COCO, CVAT -> label PNGs) and ``seg split``: exact pixel
values at known points, class ids, ignore regions, list files, errors, and a short train."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "seg" / "tiny.yaml")
W, H = 64, 64


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
    return path


def _label(out: Path, stem: str) -> np.ndarray:
    with Image.open(out / "labels" / f"{stem}.png") as im:
        assert im.mode == "L"
        return np.array(im)


def _last(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _labelme(folder: Path, name: str, shapes: list[dict], embed: bool = False) -> Path:
    image = folder / f"{name}.png"
    _png(image, seed=len(name))
    doc = {
        "version": "5.2.1",
        "shapes": [
            {"label": s[0], "points": s[1], "shape_type": s[2], "flags": {}} for s in shapes
        ],
        "imagePath": f"{name}.png",
        "imageData": None,
        "imageHeight": H,
        "imageWidth": W,
    }
    if embed:  # the image only inside the json, as labelme saves by default
        doc["imageData"] = base64.b64encode(image.read_bytes()).decode()
        image.unlink()
    path = folder / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


TRIANGLE = ("cat", [[2, 2], [30, 2], [2, 30]], "polygon")
RECT = ("dog", [[40, 10], [56, 40]], "rectangle")


@pytest.fixture
def labelme_dir(tmp_path: Path) -> Path:
    src = tmp_path / "labelme"
    src.mkdir()
    _labelme(src, "a", [TRIANGLE, RECT])
    _labelme(src, "b", [RECT, ("__ignore__", [[0, 50], [10, 60]], "rectangle")], embed=True)
    _labelme(src, "c", [("dog", [[32, 32], [32, 44]], "circle"), TRIANGLE])
    return src


def test_labelme_pixels_ids_lists(cli, tmp_path: Path, labelme_dir: Path) -> None:
    names = tmp_path / "labels_in.txt"
    names.write_text("_background_\ndog\ncat\n")  # dog = 1, cat = 2
    out = tmp_path / "out"
    code, stdout, err = cli(
        "seg", "convert", "--from", "labelme", "--input", labelme_dir, "--out", out,
        "--label-list", names,
    )  # fmt: skip
    assert code == 0, err
    summary = _last(stdout)
    assert summary["images"] == 3 and summary["classes"] == ["_background_", "dog", "cat"]
    a = _label(out, "a")
    assert a.shape == (H, W) and a.dtype == np.uint8
    assert a[5, 5] == 2 and a[25, 25] == 0  # inside the triangle; beyond its hypotenuse
    assert a[20, 48] == 1 and a[45, 48] == 0 and a[20, 60] == 0  # rectangle, below, right
    assert set(np.unique(a)) == {0, 1, 2}
    b = _label(out, "b")
    assert b[55, 5] == 255 and b[20, 48] == 1 and b[5, 5] == 0  # ignore region
    c = _label(out, "c")
    assert c[38, 38] == 1 and c[32, 50] == 0  # in the circle (r = 12); outside it
    assert c[5, 5] == 2  # the triangle, drawn after the circle
    assert (out / "labels.txt").read_text() == "_background_\ndog\ncat\n"
    assert (out / "train.txt").read_text().splitlines() == [
        "images/a.png labels/a.png",
        "images/b.png labels/b.png",
        "images/c.png labels/c.png",
    ]
    # images are the source bytes, also the one embedded as imageData
    assert (out / "images" / "a.png").read_bytes() == (labelme_dir / "a.png").read_bytes()
    with Image.open(out / "images" / "b.png") as im:
        assert im.size == (W, H)


def test_labelme_later_shape_wins_and_classes_sorted(tmp_path: Path) -> None:
    from e2ekit.seg.data import convert

    src = tmp_path / "src"
    src.mkdir()
    _labelme(src, "a", [RECT, ("zebra", [[38, 8], [58, 20]], "rectangle")])
    summary = convert("labelme", src, tmp_path / "out")
    assert summary["classes"] == ["background", "dog", "zebra"]  # sorted, background first
    a = _label(tmp_path / "out", "a")
    assert a[15, 48] == 2 and a[30, 48] == 1  # zebra drawn over dog where they overlap


def _via(tmp_path: Path, regions: list[dict], image: bool = True) -> Path:
    if image:
        _png(tmp_path / "v.png")
    path = tmp_path / "via_region_data.json"
    entry = {"filename": "v.png", "size": 1, "regions": regions, "file_attributes": {}}
    path.write_text(json.dumps({"v.png1": entry}))
    return path


VIA_POLY = {
    "shape_attributes": {
        "name": "polygon",
        "all_points_x": [4, 24, 24, 4],
        "all_points_y": [4, 4, 24, 24],
    },
    "region_attributes": {"kind": "dog", "note": "x"},
}
VIA_CIRCLE = {
    "shape_attributes": {"name": "circle", "cx": 44, "cy": 44, "r": 10},
    "region_attributes": {"kind": "cat", "note": ""},
}


def test_via_polygon_circle_attribute(cli, tmp_path: Path) -> None:
    via = _via(tmp_path, [VIA_POLY, VIA_CIRCLE])
    out = tmp_path / "out"
    args = ["seg", "convert", "--from", "via", "--input", via, "--out", out]
    code, _, err = cli(*args)  # two attributes, neither named like a class
    assert code != 0 and "--attribute" in err and "regions[0]" in err
    code, stdout, err = cli(*args, "--attribute", "kind")
    assert code == 0, err
    assert _last(stdout)["classes"] == ["background", "cat", "dog"]
    v = _label(out, "v")
    assert v[10, 10] == 2 and v[30, 10] == 0  # polygon; below it
    assert v[44, 44] == 1 and v[44, 52] == 1 and v[44, 56] == 0 and v[30, 30] == 0


def test_via_single_class_default(tmp_path: Path) -> None:
    from e2ekit.seg.data import convert

    bare = {**VIA_POLY, "region_attributes": {}}
    via = _via(tmp_path, [bare])
    summary = convert("via", via, tmp_path / "out", default_class="leaf")
    assert summary["classes"] == ["background", "leaf"]
    assert _label(tmp_path / "out", "v")[10, 10] == 1


def test_coco_polygon_rle_crowd(cli, tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    _png(tmp_path / "images" / "k.png")
    big = np.zeros((H, W), np.uint8, order="F")
    big[:, :32] = 1  # the dog: left half, as a compressed RLE
    rle = mask_utils.encode(np.asfortranarray(big))
    rle["counts"] = rle["counts"].decode("ascii")
    coco = {
        "images": [{"id": 7, "file_name": "k.png", "width": W, "height": H}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            # the small cat first in the file, inside the dog: drawn last by area
            {"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0,
             "segmentation": [[8, 8, 20, 8, 20, 20, 8, 20]], "bbox": [8, 8, 12, 12]},
            {"id": 2, "image_id": 7, "category_id": 9, "iscrowd": 0, "segmentation": rle,
             "bbox": [0, 0, 32, 64]},
            {"id": 3, "image_id": 7, "category_id": 3, "iscrowd": 1,
             "segmentation": [[40, 40, 60, 40, 60, 60, 40, 60]], "bbox": [40, 40, 20, 20]},
        ],
    }  # fmt: skip
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(coco))
    out = tmp_path / "out"
    code, stdout, err = cli("seg", "convert", "--from", "coco", "--input", ann, "--out", out)
    assert code == 0, err
    assert _last(stdout)["classes"] == ["background", "cat", "dog"]  # category id order
    k = _label(out, "k")
    assert k[12, 12] == 1  # the cat is not hidden under the larger dog
    assert k[40, 10] == 2 and k[5, 31] == 2 and k[5, 32] == 0  # the RLE, to its pixel edge
    assert k[50, 50] == 255 and k[35, 50] == 0  # crowd -> ignore


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>cat</name></label><label><name>dog</name></label><label><name>bird</name></label>
  </labels></task></meta>
  <image id="0" name="q.png" width="64" height="64">
    <box label="dog" source="manual" occluded="0" xtl="10" ytl="10" xbr="30" ybr="30" z_order="1">
    </box>
    <polygon label="cat" source="manual" occluded="0" points="2.0,2.0;40.0,2.0;2.0,40.0"
      z_order="0"/>
    <polyline label="cat" points="0,0;5,5" z_order="0"/>
    <polygon label="bird" points="44,44;60,44;60,60;44,60" z_order="0"/>
    <mask label="bird" rle="5,3,4" left="50" top="2" width="4" height="3" z_order="2"/>
  </image>
</annotations>
"""


def test_cvat_polygon_box_z_order(cli, tmp_path: Path) -> None:
    _png(tmp_path / "images" / "q.png")
    xml = tmp_path / "annotations.xml"
    xml.write_text(CVAT)
    out = tmp_path / "out"
    code, stdout, err = cli("seg", "convert", "--from", "cvat", "--input", xml, "--out", out)
    assert code == 0, err
    assert _last(stdout)["classes"] == ["background", "cat", "dog", "bird"]  # meta order
    q = _label(out, "q")
    assert q[20, 20] == 2  # box (z_order 1) over the polygon listed after it
    assert q[5, 5] == 1 and q[35, 35] == 0  # polygon; beyond its hypotenuse
    assert q[50, 50] == 3 and q[62, 62] == 0
    assert q[3, 51:54].tolist() == [3, 3, 3] and q[3, 50] == 0 and q[2, 51] == 0  # mask RLE


@pytest.mark.parametrize(
    ("shape", "needle"),
    [
        (("cat", [[1, 1], [9, 9]], "polygon"), "a.json shapes[0]: a polygon needs at least 3"),
        (("cat", [[1, 1], [9, 9]], "cuboid"), "a.json shapes[0]: unknown shape type 'cuboid'"),
        (("cta", [[1, 1], [9, 9], [1, 9]], "polygon"), "label 'cta' is not in"),
    ],
)
def test_errors_name_file_and_shape(cli, tmp_path: Path, shape: tuple, needle: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _labelme(src, "a", [shape])
    names = tmp_path / "names.txt"
    names.write_text("cat\n")
    out = tmp_path / "out"
    code, _, err = cli(
        "seg", "convert", "--from", "labelme", "--input", src, "--out", out, "--label-list", names
    )
    assert code == 1 and needle in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing half-written


def test_missing_image_says_images_flag(cli, tmp_path: Path) -> None:
    via = _via(tmp_path, [VIA_POLY], image=False)
    code, _, err = cli(
        "seg", "convert", "--from", "via", "--input", via, "--out", tmp_path / "o",
        "--attribute", "kind",
    )  # fmt: skip
    assert code == 1 and "image 'v.png' not found" in err and "--images" in err


def _seg_folder(root: Path, n: int) -> Path:
    for i in range(n):
        _png(root / "images" / f"im{i:02d}.png", seed=i)
        (root / "labels").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "labels" / f"im{i:02d}.png")
    return root


def test_split_counts_determinism_pairing(cli, tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "d", 10)
    code, stdout, err = cli("seg", "split", "--input", root, "--val", "0.2", "--test", "0.1")
    assert code == 0, err
    summary = _last(stdout)
    assert (summary["train"], summary["val"], summary["test"]) == (7, 2, 1)
    lists = {s: (root / f"{s}.txt").read_text() for s in ("train", "val", "test")}
    lines = [ln for text in lists.values() for ln in text.splitlines()]
    assert sorted(lines) == [f"images/im{i:02d}.png labels/im{i:02d}.png" for i in range(10)]
    code, _, err = cli("seg", "split", "--input", root, "--seed", "5")  # a split exists
    assert code == 1 and "holds a split already; pass --overwrite" in err
    again = ("--val", "0.2", "--test", "0.1", "--overwrite")
    assert cli("seg", "split", "--input", root, *again)[0] == 0
    assert {s: (root / f"{s}.txt").read_text() for s in lists} == lists  # same seed, same lists
    assert cli("seg", "split", "--input", root, *again, "--seed", "5")[0] == 0
    assert {s: (root / f"{s}.txt").read_text() for s in lists} != lists

    (root / "labels" / "im03.png").unlink()
    (root / "labels" / "im07.png").unlink()
    _png(root / "labels" / "stray.png")
    code, _, err = cli("seg", "split", "--input", root)
    assert code == 1
    assert "2 image(s) without label(s): im03.png, im07.png" in err
    assert "1 label(s) without image(s): stray.png" in err


def test_convert_split_train(cli, tmp_path: Path, labelme_dir: Path) -> None:
    out = tmp_path / "data"
    assert cli("seg", "convert", "--from", "labelme", "--input", labelme_dir, "--out", out)[0] == 0
    code, stdout, err = cli("seg", "split", "--input", out, "--val", "0.3")
    assert code == 0 and (_last(stdout)["train"], _last(stdout)["val"]) == (2, 1), err
    run = tmp_path / "run"
    code, _, err = cli(
        "seg", "train", "-c", TINY, "--out", run,
        "-o", f"data.root={out}", "-o", "data.num_classes=3",
        "-o", "train.max_steps=2", "-o", "train.batch_size=2",
    )  # fmt: skip
    assert code == 0, err
    assert (run / "last.pt").is_file() and (run / "metrics.json").is_file()


def test_label_png_is_plain_bytes(tmp_path: Path, labelme_dir: Path) -> None:
    """The label PNG holds ids, not a palette index remapped on reading."""
    from e2ekit.core.imageio import read_label
    from e2ekit.seg.data import convert

    convert("labelme", labelme_dir, tmp_path / "o")
    arr = read_label(tmp_path / "o" / "labels" / "a.png")
    ref = np.array(Image.open(io.BytesIO((tmp_path / "o" / "labels" / "a.png").read_bytes())))
    assert (arr == ref).all() and arr.max() <= 2
