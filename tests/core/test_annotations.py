"""The shared annotation readers (labelme, VIA, CVAT): kinds, points, labels, sizes, the
skip/fail rules and messages that name the file and the shape."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from e2ekit.core.annotations import (
    Shape,
    find_image,
    image_roots,
    labelme_files,
    read_cvat,
    read_labelme,
    read_via,
)
from e2ekit.core.errors import DataError


def _labelme(folder: Path, shapes: list[dict], **extra: object) -> Path:
    doc = {"shapes": shapes, "imagePath": "img/a.png", "imageWidth": 60, "imageHeight": 40}
    doc.update(extra)
    path = folder / "a.json"
    path.write_text(json.dumps(doc))
    return path


LABELME = [
    {"label": "cat", "points": [[1, 2], [20, 2], [5, 30]], "shape_type": "polygon"},
    {"label": "dog", "points": [[30, 25], [5, 4]], "shape_type": "rectangle"},
    {"label": "cat", "points": [[40, 20], [43, 24]], "shape_type": "circle"},
    {"label": "cat", "points": [[3, 3]], "shape_type": "point"},
    {"label": "bird", "points": [[2, 2], [9, 2], [2, 9]]},  # old files: no shape_type
]


def test_labelme_shapes_labels_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _labelme(tmp_path, LABELME)
    with caplog.at_level(logging.WARNING, logger="e2ekit"):
        (item,) = read_labelme(labelme_files(tmp_path))
    assert "labelme: skipped shapes without area: 1 point" in caplog.text
    assert (item.file, item.ann_file, item.width, item.height) == ("img/a.png", path, 60, 40)
    assert [(s.kind, s.label, s.index) for s in item.shapes] == [
        ("polygon", "cat", 0),
        ("rectangle", "dog", 1),
        ("circle", "cat", 2),
        ("polygon", "bird", 4),  # the skipped point keeps its place in the count
    ]
    poly, rect, circle, _ = item.shapes
    np.testing.assert_array_equal(poly.points, [[1, 2], [20, 2], [5, 30]])
    assert poly.box() == [1, 2, 20, 30] and poly.polygon() is not None
    assert rect.box() == [5, 4, 30, 25] and rect.polygon() is None  # corners put in order
    assert circle.radii == (5, 5) and circle.box() == [35, 15, 45, 25]
    assert poly.where == f"{path} shapes[0]"


def test_labelme_size_is_a_positive_int_or_none(tmp_path: Path) -> None:
    _labelme(tmp_path, [], imageWidth=10**400, imageHeight=True)
    (item,) = read_labelme(labelme_files(tmp_path))
    assert item.width is None and item.height is None  # the caller reads the header


def test_labelme_embedded_image(tmp_path: Path) -> None:
    _labelme(tmp_path, [], imagePath="", imageData="aGVsbG8=")
    (item,) = read_labelme([tmp_path / "a.json"])
    assert item.file == "" and item.embedded() == b"hello"
    _labelme(tmp_path, [], imageData="not base64!")
    with pytest.raises(DataError, match=r"a\.json: imageData is not valid base64"):
        read_labelme([tmp_path / "a.json"])[0].embedded()


@pytest.mark.parametrize(
    ("shape", "needle"),
    [
        ({"label": "c", "points": [[1, 1], [2, 2]]}, r"shapes\[0\]: a polygon needs at least 3"),
        ({"label": "c", "points": [[1, 1]], "shape_type": "rectangle"}, "a rectangle needs"),
        ({"label": "c", "points": [[1, "x"]], "shape_type": "circle"}, "points must be"),
        ({"label": "c", "points": [[0, 0], [1, 1]], "shape_type": "mask"}, "unknown shape"),
        ({"label": "c", "points": [[0, 0]], "shape_type": "cirle"}, "did you mean 'circle'"),
        ({"points": [[0, 0]]}, r"shapes\[0\]: a labelme shape needs 'label' and 'points'"),
    ],
)
def test_labelme_errors_name_file_and_shape(tmp_path: Path, shape: dict, needle: str) -> None:
    _labelme(tmp_path, [shape])
    with pytest.raises(DataError, match=needle) as info:
        read_labelme([tmp_path / "a.json"])
    assert str(tmp_path / "a.json") in str(info.value)


def test_labelme_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no labelme \.json files under"):
        labelme_files(tmp_path)
    with pytest.raises(DataError, match="labelme file not found"):
        labelme_files(tmp_path / "nope.json")
    (tmp_path / "a.json").write_text('{"shapes": {}}')
    with pytest.raises(DataError, match=r"a\.json: 'shapes' must be a list"):
        read_labelme([tmp_path / "a.json"])
    (tmp_path / "a.json").write_text('{"shapes": [}')
    with pytest.raises(DataError, match=r"a\.json:1:\d+: not valid JSON"):
        read_labelme([tmp_path / "a.json"])
    (tmp_path / "out.json").write_text("{}")
    assert labelme_files(tmp_path, exclude=tmp_path / "out.json") == [tmp_path / "a.json"]


def _region(shape: dict, label: str | None = "cat") -> dict:
    attrs = {} if label is None else {"label": label}
    return {"shape_attributes": shape, "region_attributes": attrs}


def _via(tmp_path: Path, regions: list[dict]) -> Path:
    path = tmp_path / "via_region_data.json"
    entry = {"filename": "v.png", "size": 1, "regions": regions, "file_attributes": {}}
    path.write_text(json.dumps({"v.png1": entry}))
    return path


VIA = [
    _region({"name": "polygon", "all_points_x": [4, 24, 24], "all_points_y": [4, 4, 24]}),
    _region({"name": "rect", "x": 10, "y": 12, "width": 20, "height": 8}, "dog"),
    _region({"name": "circle", "cx": 40, "cy": 20, "r": 6}),
    _region({"name": "ellipse", "cx": 30, "cy": 30, "rx": 8, "ry": 4, "theta": math.pi / 2}),
    _region({"name": "point", "cx": 3, "cy": 3}),
]


def test_via_shapes_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _via(tmp_path, VIA)
    with caplog.at_level(logging.WARNING, logger="e2ekit"):
        (item,) = read_via(path)
    assert "via: skipped shapes without area: 1 point" in caplog.text
    assert item.file == "v.png" and item.width is None  # VIA states no size
    assert [(s.kind, s.label) for s in item.shapes] == [
        ("polygon", "cat"),
        ("rectangle", "dog"),
        ("circle", "cat"),
        ("ellipse", "cat"),
    ]
    _, rect, circle, ellipse = item.shapes
    assert rect.box() == [10, 12, 30, 20] and circle.box() == [34, 14, 46, 26]
    assert ellipse.angle == pytest.approx(90) and ellipse.radii == (8, 4)
    np.testing.assert_allclose(ellipse.box(), [26, 22, 34, 38])  # turned: tall, not wide
    assert ellipse.where == f"{path} v.png regions[3]"


def test_via_class_attribute_and_default(tmp_path: Path) -> None:
    two = {**VIA[0], "region_attributes": {"kind": "dog", "note": "x"}}
    path = _via(tmp_path, [two])
    with pytest.raises(DataError, match=r"regions\[0\]: cannot tell the class attribute") as e:
        read_via(path, attribute_option="--attribute NAME")
    assert "pass --attribute NAME" in str(e.value)
    assert read_via(path, attribute="kind")[0].shapes[0].label == "dog"
    path = _via(tmp_path, [{**VIA[0], "region_attributes": {}}])
    with pytest.raises(DataError, match="no class attribute; give it one in VIA, or pass -d"):
        read_via(path, default_option="-d")
    assert read_via(path, default_class="leaf")[0].shapes[0].label == "leaf"
    ticked = {**VIA[0], "region_attributes": {"label": {"cat": True, "dog": True}}}
    with pytest.raises(DataError, match="must select one class, got"):
        read_via(_via(tmp_path, [ticked]))


@pytest.mark.parametrize(
    ("shape", "needle"),
    [
        ({"name": "polygon", "all_points_x": [1, 2], "all_points_y": [1, 2]}, "a polygon needs"),
        ({"name": "rect", "x": 1, "y": 2, "width": "3", "height": 4}, "a rect needs numbers"),
        ({"name": "circle", "cx": 1, "cy": True, "r": 4}, "a circle needs numbers"),
        ({"name": "blob"}, "unknown shape type 'blob'"),
    ],
)
def test_via_errors_name_file_and_region(tmp_path: Path, shape: dict, needle: str) -> None:
    path = _via(tmp_path, [VIA[0], _region(shape)])
    with pytest.raises(DataError, match=needle) as info:
        read_via(path)
    assert f"{path} v.png regions[1]:" in str(info.value)


def test_via_project_and_v1_regions(tmp_path: Path) -> None:
    path = tmp_path / "project.json"
    regions = {"1": VIA[1], "0": VIA[0]}  # VIA 1: numbered keys
    meta = {"v.png1": {"filename": "v.png", "regions": regions}}
    path.write_text(json.dumps({"_via_img_metadata": meta, "_via_settings": {}}))
    (item,) = read_via(path)
    assert [s.kind for s in item.shapes] == ["polygon", "rectangle"]
    path.write_text("{}")
    with pytest.raises(DataError, match="no images in this VIA file"):
        read_via(path)


CVAT = """<annotations><version>1.1</version><meta><project><labels>
  <label><name>cat</name></label><label><name>dog</name></label></labels></project></meta>
  <image id="0" name="sub/q.png" width="64" height="48">
    <polygon label="cat" points="2,2;40,2;2,40" z_order="1"/>
    <box label="dog" xtl="10" ytl="10" xbr="30" ybr="20" z_order="0"/>
    <box label="dog" xtl="10" ytl="10" xbr="30" ybr="20" rotation="90"/>
    <points label="cat" points="3,3"/>
    <ellipse label="cat" cx="40" cy="30" rx="8" ry="5"/>
    <mask label="cat" rle="5,3,4" left="50" top="2" width="4" height="3"/>
  </image>
</annotations>
"""


def test_cvat_shapes_sizes_meta(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    xml = tmp_path / "annotations.xml"
    xml.write_text(CVAT)
    with caplog.at_level(logging.WARNING, logger="e2ekit"):
        (item,), meta = read_cvat(xml)
    assert "cvat: skipped shapes without area: 1 points" in caplog.text
    assert meta == ["cat", "dog"]
    assert (item.file, item.width, item.height) == ("sub/q.png", 64, 48)
    kinds = [(s.kind, s.label, s.index, s.order) for s in item.shapes]
    assert kinds == [
        ("polygon", "cat", 0, 1.0),
        ("rectangle", "dog", 1, 0.0),
        ("rotated_box", "dog", 2, 0.0),
        ("ellipse", "cat", 4, 0.0),
        ("mask", "cat", 5, 0.0),
    ]
    _, box, turned, ellipse, mask = item.shapes
    assert box.box() == [10, 10, 30, 20]
    np.testing.assert_allclose(turned.box(), [15, 5, 25, 25])  # 20 x 10 turned upright
    assert turned.polygon() is not None and len(turned.points) == 4
    assert ellipse.box() == [32, 25, 48, 35]
    assert mask.box() == [50, 2, 54, 5] and mask.mask is not None
    assert mask.mask.astype(int).tolist() == [[0, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]]
    assert item.shapes[0].where == f"{xml} image 'sub/q.png' <polygon> #0"


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ('points="2,2;40,2;2,40"', 'points="2,2;40,2"', "<polygon> #0: a polygon needs at least 3"),
        (
            'xbr="30" ybr="20" z_order',
            'xbr="x" ybr="20" z_order',
            "<box> #1: a <box> needs numbers",
        ),
        ('rle="5,3,4"', 'rle="5,3"', "<mask> #5: a mask's rle must be"),
        ("<points", "<cuboid", "<cuboid> #3: unknown shape <cuboid>"),
        ('<ellipse label="cat"', "<ellipse", "<ellipse> #4: a <ellipse> needs a label"),
    ],
)
def test_cvat_errors_name_file_and_shape(tmp_path: Path, old: str, new: str, needle: str) -> None:
    xml = tmp_path / "annotations.xml"
    xml.write_text(CVAT.replace(old, new))
    with pytest.raises(DataError, match=needle) as info:
        read_cvat(xml)
    assert f"{xml} image 'sub/q.png' " in str(info.value)


def test_cvat_file_errors(tmp_path: Path) -> None:
    xml = tmp_path / "a.xml"
    with pytest.raises(DataError, match="annotation file not found"):
        read_cvat(xml)
    xml.write_text("<annotations><image")
    with pytest.raises(DataError, match="not valid XML"):
        read_cvat(xml)
    xml.write_text("<root/>")
    with pytest.raises(DataError, match=r"expected <annotations> .* got <root>"):
        read_cvat(xml)


def test_find_image(tmp_path: Path) -> None:
    ann = tmp_path / "ann.json"
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(b"")
    roots = image_roots(ann, None)
    assert roots == [tmp_path, tmp_path / "images"]
    assert find_image("deep/x.png", roots, "here") == tmp_path / "images" / "x.png"  # by name
    with pytest.raises(DataError, match=r"here: image 'y.png' not found .*--images DIR"):
        find_image("y.png", roots, "here")
    assert image_roots(ann, tmp_path / "elsewhere") == [tmp_path / "elsewhere"]


def test_shape_box_of_a_turned_ellipse_matches_its_outline() -> None:
    s = Shape("ellipse", "c", "w", 0, np.array([[10.0, 20.0]]), (6.0, 2.0), 30.0)
    t = np.linspace(0, 2 * np.pi, 3601)
    a = math.radians(30)
    xs = 10 + 6 * np.cos(t) * math.cos(a) - 2 * np.sin(t) * math.sin(a)
    ys = 20 + 6 * np.cos(t) * math.sin(a) + 2 * np.sin(t) * math.cos(a)
    np.testing.assert_allclose(s.box(), [xs.min(), ys.min(), xs.max(), ys.max()], atol=1e-3)
