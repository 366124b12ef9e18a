"""``det convert --from cvat``: boxes and polygons to COCO, polygons as segmentations; and
labelme polygons through the CLI keep their segmentation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>cat</name></label><label><name>dog</name></label>
  </labels></task></meta>
  <image id="1" name="b.png" width="40" height="30">
    <box label="dog" occluded="0" xtl="5" ytl="4" xbr="25" ybr="20" z_order="0"></box>
    <polygon label="cat" occluded="0" points="10,10;30,10;30,28;10,28" z_order="0"/>
    <points label="cat" points="3,3" z_order="0"/>
  </image>
  <image id="0" name="a.png" width="40" height="30"></image>
</annotations>
"""


def _images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        Image.new("RGB", (40, 30)).save(folder / f"{name}.png")


def test_cvat_to_coco(cli, tmp_path: Path) -> None:
    from e2ekit.det.data import decode_masks, read_coco

    _images(tmp_path / "images")
    xml = tmp_path / "annotations.xml"
    xml.write_text(CVAT)
    out = tmp_path / "coco.json"
    code, stdout, err = cli("det", "convert", "--from", "cvat", "--input", xml, "--out", out)
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["images"] == 2 and summary["annotations"] == 2
    assert summary["categories"] == ["cat", "dog"]  # the XML's meta order
    coco = json.loads(out.read_text())
    assert [im["file_name"] for im in coco["images"]] == ["a.png", "b.png"]
    box, poly = coco["annotations"]
    assert box["bbox"] == [5, 4, 20, 16] and box["category_id"] == 2
    assert "segmentation" not in box or not box["segmentation"]
    assert poly["bbox"] == [10, 10, 20, 18] and poly["category_id"] == 1
    assert poly["segmentation"] == [[10, 10, 30, 10, 30, 28, 10, 28]]
    ds = read_coco(out, tmp_path / "images", masks=True)  # default image folder: images/
    rec = ds.records[1]
    masks = decode_masks(rec.segmentations, rec.height, rec.width, rec.boxes)
    assert masks[1][15, 20] == 1 and masks[1][5, 20] == 0


def test_cvat_errors_name_the_shape(cli, tmp_path: Path) -> None:
    xml = tmp_path / "annotations.xml"
    xml.write_text(CVAT.replace('points="10,10;30,10;30,28;10,28"', 'points="10,10;30,10"'))
    code, _, err = cli("det", "convert", "--from", "cvat", "--input", xml, "--out", tmp_path / "o")
    assert code == 1 and "image 'b.png' <polygon> #1: a polygon needs at least 3" in err
    xml.write_text(CVAT.replace("<points", "<cuboid").replace("</points", "</cuboid"))
    code, _, err = cli("det", "convert", "--from", "cvat", "--input", xml, "--out", tmp_path / "o")
    assert code == 1 and "unknown shape <cuboid>" in err


def test_labelme_polygons_become_segmentations(cli, tmp_path: Path) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    shapes = [
        {"label": "cat", "points": [[2, 2], [20, 2], [2, 20]], "shape_type": "polygon"},
        {"label": "dog", "points": [[25, 5], [35, 25]], "shape_type": "rectangle"},
    ]
    doc = {"shapes": shapes, "imagePath": "a.png", "imageWidth": 40, "imageHeight": 30}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    out = tmp_path / "coco.json"
    code, _, err = cli("det", "convert", "--from", "labelme", "--input", tmp_path, "--out", out)
    assert code == 0, err
    poly, rect = json.loads(out.read_text())["annotations"]
    assert poly["segmentation"] == [[2, 2, 20, 2, 2, 20]]
    assert poly["area"] == pytest.approx(18 * 18 / 2, abs=15)  # the mask area, not w * h
    assert rect["bbox"] == [25, 5, 10, 20]
