"""Det data converters: labelme -> COCO and VOC -> COCO round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from e2ekit.core.errors import DataError
from e2ekit.det.data import labelme_to_coco, read_coco, read_voc, validate, voc_to_coco

from .test_data import BCCD, VOC_ITEMS, _voc


def _labelme(folder: Path, stem: str, shapes: list[dict], size: tuple[int, int] = (60, 40)):
    (folder / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(folder / "img" / f"{stem}.png")
    doc = {
        "version": "5.2.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": f"img/{stem}.png",
        "imageData": None,
        "imageWidth": size[0],
        "imageHeight": size[1],
    }
    (folder / f"{stem}.json").write_text(json.dumps(doc))


def _shape(label: str, points: list[list[float]], kind: str = "rectangle") -> dict:
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


def _labelme_set(folder: Path) -> None:
    _labelme(
        folder,
        "b",
        [
            _shape("dog", [[30, 25], [5, 4]]),  # corners in any order
            _shape("cat", [[10, 10], [20, 5], [25, 30], [12, 22]], "polygon"),
            _shape("cat", [[3, 3]], "point"),  # no area: skipped
        ],
    )
    _labelme(folder, "a", [_shape("cat", [[40, 20], [45, 20]], "circle")])
    _labelme(folder, "c", [])


def test_labelme_to_coco_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "labelme"
    _labelme_set(src)
    out = labelme_to_coco(src, src / "coco.json")  # output inside the input folder
    ds = read_coco(out, src)
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [1, 2]
    assert [r.file.name for r in ds.records] == ["a.png", "b.png", "c.png"]  # sorted, ids 1..
    assert [r.image_id for r in ds.records] == [1, 2, 3]
    a, b, c = ds.records
    np.testing.assert_allclose(a.boxes, [[35, 15, 45, 25]])  # circle: centre +- radius
    np.testing.assert_allclose(b.boxes, [[5, 4, 30, 25], [10, 5, 25, 30]])
    assert b.labels.tolist() == [1, 0] and c.num_boxes == 0
    assert (b.width, b.height) == (60, 40) and b.file == src / "img" / "b.png"
    assert validate(ds)[1].ok
    first = out.read_bytes()
    labelme_to_coco(src, src / "coco.json")  # re-run: coco.json is not read as labelme
    assert out.read_bytes() == first  # deterministic
    assert sorted(p.name for p in src.iterdir()) == ["a.json", "b.json", "c.json", "coco.json",
                                                     "img"]  # fmt: skip


def test_labelme_class_names_and_file_list(tmp_path: Path) -> None:
    _labelme_set(tmp_path)
    files = [tmp_path / "b.json", tmp_path / "a.json"]
    out = labelme_to_coco(files, tmp_path / "out" / "x.json", class_names=["dog", "cat", "bird"])
    ds = read_coco(out, tmp_path)
    assert ds.class_names == ["dog", "cat", "bird"] and ds.records[1].labels.tolist() == [0, 1]
    with pytest.raises(DataError, match=r"a\.json shapes\[0\]: label 'cat' is not in"):
        labelme_to_coco(files, tmp_path / "y.json", class_names=["dog"])
    assert not (tmp_path / "y.json").exists()


def test_labelme_malformed_names_file_and_shape(tmp_path: Path) -> None:
    _labelme(tmp_path, "a", [_shape("cat", [[1, 2]])])
    with pytest.raises(DataError, match=r"a\.json shapes\[0\]: a rectangle needs"):
        labelme_to_coco(tmp_path, tmp_path / "o.json")
    (tmp_path / "a.json").write_text('{"shapes": []}')
    with pytest.raises(DataError, match=r"a\.json: 'imagePath' missing"):
        labelme_to_coco(tmp_path, tmp_path / "o.json")


def _same(voc_ds, coco_ds) -> None:
    assert coco_ds.class_names == voc_ds.class_names
    for r1, r2 in zip(voc_ds.records, coco_ds.records, strict=True):
        assert r1.file == r2.file and (r1.width, r1.height) == (r2.width, r2.height)
        np.testing.assert_array_equal(r1.boxes, r2.boxes)
        np.testing.assert_array_equal(r1.labels, r2.labels)
        np.testing.assert_array_equal(r1.difficult, r2.difficult)


def test_voc_to_coco_round_trip(tmp_path: Path) -> None:
    root = _voc(tmp_path / "voc", VOC_ITEMS)
    out = voc_to_coco(root, "train.txt", "labels.txt", tmp_path / "ann" / "train.json")
    _same(read_voc(root, "train.txt", "labels.txt"), read_coco(out, root))
    gt = json.loads(out.read_text())
    assert gt["images"][0]["file_name"] == "JPEGImages/x1.jpg"
    assert [a.get("difficult", 0) for a in gt["annotations"]] == [0, 1, 0]
    assert [p.name for p in out.parent.iterdir()] == ["train.json"]  # no temp file left


@pytest.mark.skipif(not BCCD.is_dir(), reason="shared sample data not present")
def test_voc_to_coco_round_trip_on_bccd(tmp_path: Path) -> None:
    names = ["RBC", "WBC", "Platelets"]
    out = voc_to_coco(BCCD, "ImageSets/Main/test.txt", names, tmp_path / "test.json")
    _same(read_voc(BCCD, "ImageSets/Main/test.txt", names), read_coco(out, BCCD))
