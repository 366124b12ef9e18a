"""Det data: COCO and VOC readers, records and box validation (incl. the real BCCD sample)."""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from e2ekit.core.errors import DataError
from e2ekit.det.data import DetDataset, DetRecord, read_coco, read_voc, validate
from e2ekit.det.data.validate import DROP_HINT

from ..conftest import SHARED_DATA

BCCD = SHARED_DATA / "det" / "bccd_voc" / "BCCD"


def _image(path: Path, w: int = 40, h: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 120, 30)).save(path)
    return path


def _coco_dict() -> dict[str, Any]:
    """Two 40x30 images (the second without boxes), three categories with gapped ids."""
    return {
        "images": [
            {"id": 5, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 9, "file_name": "b.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 40, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 2, "bbox": [20, 10, 8, 8], "iscrowd": 1},
            {"id": 3, "image_id": 5, "category_id": 7, "bbox": [0, 0, 40, 30]},
        ],
        "categories": [
            {"id": 7, "name": "dog"},
            {"id": 40, "name": "cat"},
            {"id": 2, "name": "bird"},
        ],
    }


def _write_coco(tmp_path: Path, data: Any, images: bool = True) -> tuple[Path, Path]:
    image_dir = tmp_path / "images"
    if images:
        for name in ("a.png", "b.png"):
            _image(image_dir / name)
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(data, indent=1) if not isinstance(data, str) else data)
    return ann, image_dir


# --------------------------------------------------------------------------- COCO


def test_read_coco_maps_gapped_category_ids_to_contiguous_classes(tmp_path: Path) -> None:
    ann, image_dir = _write_coco(tmp_path, _coco_dict())
    ds = read_coco(ann, image_dir)
    assert ds.class_names == ["bird", "dog", "cat"]  # sorted by id 2, 7, 40
    assert ds.category_ids == [2, 7, 40]
    assert len(ds) == 2 and ds.num_boxes == 3
    a, b = ds.records
    assert (a.image_id, a.file, a.width, a.height) == (5, image_dir / "a.png", 40, 30)
    np.testing.assert_allclose(a.boxes, [[1, 2, 11, 7], [20, 10, 28, 18], [0, 0, 40, 30]])
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    assert a.labels.tolist() == [2, 0, 1]
    assert a.iscrowd.tolist() == [False, True, False]
    assert b.num_boxes == 0 and b.boxes.shape == (0, 4)  # kept as a negative image
    assert ds.class_counts() == [1, 1, 1]
    assert a.where(1) == f"{ann} annotations[1]"


def test_to_coco_round_trips_through_read_coco(tmp_path: Path) -> None:
    ann, image_dir = _write_coco(tmp_path, _coco_dict())
    ds = read_coco(ann, image_dir)
    gt = ds.to_coco(image_root=image_dir)
    assert [c["id"] for c in gt["categories"]] == [2, 7, 40]
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3]  # never 0 (pycocotools)
    first = gt["annotations"][0]
    assert first["bbox"] == [1, 2, 10, 5] and first["area"] == 50 and first["category_id"] == 40
    assert gt["images"][0]["file_name"] == "a.png"
    again = tmp_path / "again.json"
    again.write_text(json.dumps(gt))
    back = read_coco(again, image_dir)
    assert back.class_names == ds.class_names and back.category_ids == ds.category_ids
    for r1, r2 in zip(ds.records, back.records, strict=True):
        np.testing.assert_array_equal(r1.boxes, r2.boxes)
        np.testing.assert_array_equal(r1.labels, r2.labels)
        np.testing.assert_array_equal(r1.iscrowd, r2.iscrowd)


def test_read_coco_takes_a_missing_size_from_the_image(tmp_path: Path) -> None:
    data = _coco_dict()
    del data["images"][0]["width"]
    ann, image_dir = _write_coco(tmp_path, data)
    _image(image_dir / "a.png", 64, 48)
    assert (read_coco(ann, image_dir).records[0].width, 48) == (64, 48)


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    ann, image_dir = _write_coco(tmp_path, '{\n "images": [\n  {"id": 1,,}\n ]\n}')
    with pytest.raises(DataError, match=r"train\.json:3:\d+: not valid JSON"):
        read_coco(ann, image_dir)
    with pytest.raises(DataError, match="annotation file not found"):
        read_coco(tmp_path / "nope.json", image_dir)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda d: d["annotations"][1].pop("bbox"), r"annotations\[1\]: 'bbox' missing"),
        (lambda d: d["annotations"][2].update(bbox=[1, 2, 3]), r"annotations\[2\]: 'bbox' must"),
        (lambda d: d["annotations"][0].update(image_id=77), r"annotations\[0\]: image_id 77"),
        (lambda d: d["images"][1].pop("file_name"), r"images\[1\]: 'file_name' missing"),
        (lambda d: d["images"][1].update(id=5), r"images\[1\]: duplicate image id 5"),
        (lambda d: d["categories"][0].pop("name"), r"categories\[0\]: 'name' missing"),
        (lambda d: d.pop("categories"), r"no 'categories' list"),
        (lambda d: d["annotations"][0].update(category_id="cat"), r"'category_id' must be"),
    ],
)
def test_malformed_coco_names_the_record(tmp_path: Path, edit: Any, pattern: str) -> None:
    data = _coco_dict()
    edit(data)
    ann, image_dir = _write_coco(tmp_path, data)
    with pytest.raises(DataError, match=pattern) as info:
        read_coco(ann, image_dir)
    assert str(ann) in str(info.value)


def test_unknown_category_is_read_then_reported_by_validate(tmp_path: Path) -> None:
    data = _coco_dict()
    data["annotations"][1]["category_id"] = 99
    ann, image_dir = _write_coco(tmp_path, data)
    ds = read_coco(ann, image_dir)
    assert ds.records[0].labels.tolist()[1] == -1
    assert ds.unknown_categories == {"category_id 99": 1}
    with pytest.raises(DataError) as info:
        validate(ds)
    msg = str(info.value)
    assert "1 box(es) with a label/category not in the class list" in msg
    assert "category_id 99" in msg and f"{ann} annotations[1]" in msg and DROP_HINT in msg
    clean, report = validate(ds, drop_invalid=True)
    assert clean.num_boxes == 2 and report.counts["unknown_label"] == 1
    assert report.dropped_boxes == 1 and clean.unknown_categories == {}


# --------------------------------------------------------------------------- validate


def _one_image_ds(tmp_path: Path, boxes: list[list[float]], labels: list[int] | None = None):
    file = _image(tmp_path / "img.png", 40, 30)
    n = len(boxes)
    rec = DetRecord(
        image_id=1,
        file=file,
        width=40,
        height=30,
        boxes=np.array(boxes, np.float32),
        labels=np.array(labels if labels is not None else [0] * n),
        iscrowd=np.zeros(n, bool),
        ref_kind="annotations",
        source="ann.json",
    )
    return DetDataset([rec], ["thing", "other"], source="ann.json")


def test_validate_accepts_clean_data_unchanged(tmp_path: Path) -> None:
    ds = _one_image_ds(tmp_path, [[0, 0, 40, 30], [3, 4, 10, 12]])
    clean, report = validate(ds)
    assert report.ok and report.num_invalid == 0 and report.counts["clipped"] == 0
    np.testing.assert_array_equal(clean.records[0].boxes, ds.records[0].boxes)
    assert "no problems" in report.text()


def test_validate_clips_within_tolerance_silently_and_counts_beyond(tmp_path: Path) -> None:
    ds = _one_image_ds(tmp_path, [[-0.5, 0, 40.8, 30.5], [30, 20, 50, 35]])
    clean, report = validate(ds)
    assert report.ok and report.counts["clipped"] == 1
    np.testing.assert_allclose(clean.records[0].boxes, [[0, 0, 40, 30], [30, 20, 40, 30]])
    assert "ann.json annotations[1]: box [30, 20, 50, 35] thing" in report.first["clipped"]
    assert ds.records[0].boxes[1, 2] == 50  # the input is not modified


@pytest.mark.parametrize(
    ("box", "label", "problem", "words"),
    [
        ([5, 5, 5, 9], 0, "empty_box", "zero/negative-size"),
        ([8, 5, 4, 9], 0, "empty_box", "zero/negative-size"),
        ([45, 5, 60, 9], 0, "outside", "entirely outside"),
        ([-20, -9, -1, -2], 0, "outside", "entirely outside"),
        ([1, 1, 5, 5], 2, "unknown_label", "not in the class list"),
        ([1, np.nan, 5, 5], 0, "non_finite", "NaN or infinite"),
    ],
)
def test_invalid_box_is_a_data_error_naming_record(
    tmp_path: Path, box: list[float], label: int, problem: str, words: str
) -> None:
    ds = _one_image_ds(tmp_path, [[0, 0, 10, 10], box], [0, label])
    with pytest.raises(DataError, match=words) as info:
        validate(ds)
    assert "ann.json annotations[1]" in str(info.value) and DROP_HINT in str(info.value)
    clean, report = validate(ds, drop_invalid=True)
    assert report.counts[problem] == 1 and report.num_invalid == 1
    assert clean.num_boxes == 1 and clean.records[0].ref_ids.tolist() == [0]


def test_missing_image_file(tmp_path: Path) -> None:
    ann, image_dir = _write_coco(tmp_path, _coco_dict())
    (image_dir / "b.png").unlink()
    ds = read_coco(ann, image_dir)
    with pytest.raises(DataError, match=r"1 missing image file\(s\).*b\.png"):
        validate(ds)
    clean, report = validate(ds, drop_invalid=True)
    assert len(clean) == 1 and report.dropped_images == 1
    assert len(validate(ds, check_files=False)[0]) == 2


def test_drop_invalid_counts_every_problem_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    boxes = [[0, 0, 10, 10], [5, 5, 5, 9], [6, 6, 6, 6], [50, 1, 60, 5], [1, 1, 4, 4]]
    boxes.append([35, 1, 48, 5])
    ds = _one_image_ds(tmp_path, boxes, [0, 0, 1, 0, 7, 1])
    with caplog.at_level(logging.WARNING, logger="e2ekit"):
        clean, report = validate(ds, drop_invalid=True)
    assert report.counts["empty_box"] == 2 and report.counts["outside"] == 1
    assert report.counts["unknown_label"] == 1 and report.counts["clipped"] == 1
    assert report.dropped_boxes == 4 and report.dropped_images == 0
    assert report.first["empty_box"].startswith("ann.json annotations[1]: box [5, 5, 5, 9]")
    np.testing.assert_allclose(clean.records[0].boxes, [[0, 0, 10, 10], [35, 1, 40, 5]])
    assert clean.records[0].labels.tolist() == [0, 1]
    assert "dropped 0 image(s) and 4 box(es)" in caplog.text
    assert report.to_dict()["counts"]["empty_box"] == 2


# --------------------------------------------------------------------------- VOC

_XML = """<annotation>
  <filename>{name}.jpg</filename>
  {size}
  {objects}
</annotation>"""

_OBJ = """<object><name>{cls}</name><difficult>{diff}</difficult>
  <bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>
</object>"""


def _voc(root: Path, items: dict[str, list[tuple[str, list[int], int]]], size: bool = True):
    """A tiny VOC set: JPEGImages/, Annotations/, train.txt (2-column), labels.txt."""
    lines = []
    for name, objs in items.items():
        _image(root / "JPEGImages" / f"{name}.jpg", 50, 40)
        size_xml = "<size><width>50</width><height>40</height><depth>3</depth></size>"
        objects = "".join(_OBJ.format(cls=c, b=b, diff=d) for c, b, d in objs)
        xml = root / "Annotations" / f"{name}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(_XML.format(name=name, size=size_xml if size else "", objects=objects))
        lines.append(f"JPEGImages/{name}.jpg Annotations/{name}.xml\n")
    (root / "train.txt").write_text("".join(lines))
    (root / "labels.txt").write_text("cat\ndog\n")
    return root


VOC_ITEMS = {
    "x1": [("dog", [1, 2, 30, 20], 0), ("cat", [10, 5, 50, 40], 1)],
    "x2": [],
    "x3": [("cat", [3, 3, 8, 9], 0)],
}


def test_read_voc_keeps_raw_coordinates_and_difficult(tmp_path: Path) -> None:
    root = _voc(tmp_path, VOC_ITEMS)
    ds = read_voc(root, "train.txt", "labels.txt")
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [1, 2]
    assert [r.image_id for r in ds.records] == [1, 2, 3]
    x1 = ds.records[0]
    assert (x1.width, x1.height, x1.file) == (50, 40, root / "JPEGImages" / "x1.jpg")
    np.testing.assert_array_equal(x1.boxes, [[1, 2, 30, 20], [10, 5, 50, 40]])
    assert x1.labels.tolist() == [1, 0] and x1.difficult.tolist() == [False, True]
    assert ds.records[1].num_boxes == 0  # an image without objects is kept
    assert x1.where(1) == f"{root / 'Annotations' / 'x1.xml'} object[1]"
    assert validate(ds)[1].ok  # xmax == width is inside the image


def test_read_voc_size_fallback_and_id_lines(tmp_path: Path) -> None:
    root = _voc(tmp_path, VOC_ITEMS, size=False)
    (root / "ids.txt").write_text("x1\n\nx3\n")  # VOC ImageSets style
    ds = read_voc(root, "ids.txt", ["cat", "dog"])
    assert [r.file.name for r in ds.records] == ["x1.jpg", "x3.jpg"]
    assert (ds.records[0].width, ds.records[0].height) == (50, 40)  # from the image


def test_unknown_voc_class_names_xml_class_and_valid_ones(tmp_path: Path) -> None:
    root = _voc(tmp_path, {"x1": [("dog", [1, 2, 3, 4], 0), ("dgo", [1, 2, 3, 4], 0)]})
    with pytest.raises(DataError) as info:
        read_voc(root, "train.txt", "labels.txt")
    msg = str(info.value)
    assert "x1.xml object[1]" in msg and "class 'dgo'" in msg and "(cat, dog)" in msg
    assert "did you mean 'dog'" in msg


def test_broken_voc_inputs(tmp_path: Path) -> None:
    root = _voc(tmp_path, VOC_ITEMS)
    (root / "Annotations" / "x3.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"x3\.xml: not valid XML"):
        read_voc(root, "train.txt", "labels.txt")
    (root / "Annotations" / "x3.xml").unlink()
    with pytest.raises(DataError, match=r"train\.txt:3: .*x3\.xml"):
        read_voc(root, "train.txt", "labels.txt")
    with pytest.raises(DataError, match="label list not found"):
        read_voc(root, "train.txt", "nope.txt")
    (root / "bad.txt").write_text("a b c\n")
    with pytest.raises(DataError, match=r"bad\.txt:1: expected 'image_path xml_path'"):
        read_voc(root, "bad.txt", "labels.txt")


@pytest.mark.skipif(not BCCD.is_dir(), reason="shared sample data not present")
def test_bccd_sample_reads_and_its_zero_size_box_is_caught(tmp_path: Path) -> None:
    names = ["RBC", "WBC", "Platelets"]
    ds = read_voc(BCCD, "ImageSets/Main/val.txt", names)
    assert len(ds) == 87 and ds.num_boxes == 1138
    assert all(r.width == 640 and r.height == 480 for r in ds.records)
    with pytest.raises(DataError, match=r"BloodImage_00338\.xml object\[12\]: box \[504, 337"):
        validate(ds)
    clean, report = validate(ds, drop_invalid=True)
    assert report.counts["empty_box"] == 1 and report.num_invalid == 1
    assert clean.num_boxes == 1137
    test = read_voc(BCCD, "ImageSets/Main/test.txt", names)
    assert test.num_boxes == 945 and validate(test)[1].ok  # the other split is clean
    # the contract's 2-column list (here with a label-list file) reads the same boxes
    ids = (BCCD / "ImageSets" / "Main" / "val.txt").read_text().split()[:5]
    (tmp_path / "val_list.txt").write_text(
        "".join(f"JPEGImages/{i}.jpg Annotations/{i}.xml\n" for i in ids)
    )
    (tmp_path / "label_list.txt").write_text("\n".join(names) + "\n")
    two = read_voc(BCCD, tmp_path / "val_list.txt", tmp_path / "label_list.txt")
    for r1, r2 in zip(two.records, ds.records[:5], strict=True):
        np.testing.assert_array_equal(r1.boxes, r2.boxes)
        assert r1.file == r2.file


# --------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda d: d["images"][0].update(id=2**64), r"images\[0\]: 'id' is a 20-digit number"),
        (lambda d: d["categories"][1].update(id=2**63), r"categories\[1\]: 'id' .*64-bit"),
        (
            lambda d: d["annotations"][0].update(image_id=2**64),
            r"annotations\[0\]: 'image_id' .*64-bit",
        ),
        (
            lambda d: d["annotations"][2].update(category_id=2**63),
            r"annotations\[2\]: 'category_id' .*64-bit",
        ),
        (lambda d: d["images"][1].update(width=1e300), r"images\[1\]: 'width' is 1e\+300"),
        (
            lambda d: d["annotations"][1].update(bbox=[1, 2, 10**400, 5]),
            r"annotations\[1\]: 'bbox' has a non-finite value",
        ),
    ],
)
def test_coco_numbers_beyond_int64_or_float_are_data_errors(
    tmp_path: Path, edit: Any, pattern: str
) -> None:
    data = _coco_dict()
    edit(data)
    ann, image_dir = _write_coco(tmp_path, data, images=False)
    with pytest.raises(DataError, match=r"train\.json " + pattern):
        read_coco(ann, image_dir)


def test_coco_json_too_deep_too_long_or_not_utf8_names_the_line(tmp_path: Path) -> None:
    ann, image_dir = _write_coco(tmp_path, '{"images": [],\n"annotations": ' + "[" * 100_000)
    with pytest.raises(DataError, match=r"train\.json:2:\d+: not valid JSON: nested too deeply"):
        read_coco(ann, image_dir)
    ann.write_text('{"images": [],\n\n"annotations": [' + "7" * 5000 + "]}")
    with pytest.raises(DataError, match=r"train\.json:3:\d+: not valid JSON: number too long"):
        read_coco(ann, image_dir)
    ann.write_bytes('{"images": [],\n"categories": [{"name": "caf\u00e9"}]}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"train\.json:2: not UTF-8"):
        read_coco(ann, image_dir)


def test_coco_file_name_too_long_for_the_os_is_a_missing_image(tmp_path: Path) -> None:
    data = _coco_dict()
    data["images"][1]["file_name"] = "x" * 300 + ".png"
    ann, image_dir = _write_coco(tmp_path, data)
    with pytest.raises(DataError, match=r"1 missing image file\(s\) \(first: .*xxxx\.png\)"):
        validate(read_coco(ann, image_dir))


def test_image_declaring_too_many_pixels_is_a_data_error(tmp_path: Path) -> None:
    data = _coco_dict()
    del data["images"][0]["width"]  # the size then comes from the image header
    ann, image_dir = _write_coco(tmp_path, data)
    png = bytearray((image_dir / "a.png").read_bytes())
    png[16:24] = (60_000).to_bytes(4, "big") * 2  # IHDR width and height, then its CRC
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    (image_dir / "a.png").write_bytes(bytes(png))
    with pytest.raises(DataError, match=r"train\.json images\[0\]: image .*a\.png declares more"):
        read_coco(ann, image_dir)


def test_voc_text_files_not_utf8_name_file_and_line(tmp_path: Path) -> None:
    root = _voc(tmp_path, VOC_ITEMS)
    (root / "train.txt").write_bytes(b"JPEGImages/x1.jpg Annotations/x1.xml\ncaf\xe9 x\n")
    with pytest.raises(DataError, match=r"train\.txt:2: not UTF-8"):
        read_voc(root, "train.txt", "labels.txt")
    (root / "labels.txt").write_bytes(b"cat\n\n\xff\xfedog\n")
    with pytest.raises(DataError, match=r"labels\.txt:3: not UTF-8"):
        read_voc(root, "train.txt", "labels.txt")


def test_voc_list_path_too_long_for_the_os_is_reported_missing(tmp_path: Path) -> None:
    root = _voc(tmp_path, VOC_ITEMS)
    (root / "train.txt").write_text("JPEGImages/x1.jpg Annotations/" + "y" * 300 + ".xml\n")
    with pytest.raises(DataError, match=r"1 annotation file\(s\) not found: .*train\.txt:1: "):
        read_voc(root, "train.txt", "labels.txt")


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "1e300"])
def test_voc_size_that_is_no_size_is_read_from_the_image(tmp_path: Path, value: str) -> None:
    root = _voc(tmp_path, {"x1": [("cat", [1, 2, 30, 20], 0)]})
    xml = root / "Annotations" / "x1.xml"
    xml.write_text(xml.read_text().replace("<width>50</width>", f"<width>{value}</width>"))
    (rec,) = read_voc(root, "train.txt", "labels.txt").records
    assert (rec.width, rec.height) == (50, 40)


def test_voc_label_list_duplicate_names_both_lines(tmp_path: Path) -> None:
    root = _voc(tmp_path, VOC_ITEMS)
    (root / "labels.txt").write_text("# classes\ncat\ndog\n\ncat\n")
    with pytest.raises(
        DataError, match=r"labels\.txt:5: class 'cat' is listed twice \(also at .*labels\.txt:2\)"
    ):
        read_voc(root, "train.txt", "labels.txt")


def test_labelme_size_beyond_int32_is_read_from_the_image(tmp_path: Path) -> None:
    from e2ekit.det.data import labelme_to_coco

    _image(tmp_path / "a.png", 40, 30)
    shape = {"label": "cat", "points": [[1, 2], [10, 12]], "shape_type": "rectangle"}
    doc = {"shapes": [shape], "imagePath": "a.png", "imageWidth": 10**400, "imageHeight": 30}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    out = labelme_to_coco(tmp_path, tmp_path / "out" / "coco.json")
    (rec,) = read_coco(out, tmp_path).records
    assert (rec.width, rec.height) == (40, 30)


def test_coco_id_given_as_a_list_names_the_annotation(tmp_path: Path) -> None:
    data = _coco_dict()
    data["annotations"][1]["image_id"] = [5]
    ann, image_dir = _write_coco(tmp_path, data, images=False)
    with pytest.raises(
        DataError, match=r"annotations\[1\]: 'image_id' must be an integer, got \[5\]"
    ):
        read_coco(ann, image_dir)


@pytest.mark.parametrize("value", ["nan", "inf", "1e39"])
def test_voc_to_coco_refuses_to_write_a_non_finite_box(tmp_path: Path, value: str) -> None:
    from e2ekit.det.data import voc_to_coco

    root = _voc(tmp_path, {"x1": [("cat", [1, 2, 30, 20], 0), ("dog", [3, 4, 9, 9], 0)]})
    xml = root / "Annotations" / "x1.xml"
    xml.write_text(xml.read_text().replace("<xmax>9</xmax>", f"<xmax>{value}</xmax>"))
    out = tmp_path / "coco.json"
    with pytest.raises(DataError, match=r"x1\.xml object\[1\]: box .* NaN or infinite coordinate"):
        voc_to_coco(root, "train.txt", "labels.txt", out)
    assert not out.exists()
