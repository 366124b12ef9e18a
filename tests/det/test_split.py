"""``det split``: a VOC folder -> seeded list files, a COCO json -> per-split json files."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

VOC_XML = """<annotation><size><width>32</width><height>24</height></size>
<object><name>{name}</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax>
<ymax>15</ymax></bndbox></object></annotation>"""


def _last(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _voc_folder(root: Path, n: int) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(n):
        Image.new("RGB", (32, 24), (i, 0, 0)).save(root / "images" / f"s{i:02d}.jpg")
        name = "dog" if i % 3 else "cat"
        (root / "annotations" / f"s{i:02d}.xml").write_text(VOC_XML.format(name=name))
    return root


def _lists(root: Path, splits: tuple[str, ...]) -> dict[str, str]:
    return {s: (root / f"{s}.txt").read_text() for s in splits}


def test_voc_split_counts_pairs_determinism(cli, tmp_path: Path) -> None:
    root = _voc_folder(tmp_path / "voc", 12)
    code, out, err = cli("det", "split", "--input", root, "--val", "0.25", "--test", "0.1")
    assert code == 0, err
    summary = _last(out)
    assert (summary["train"], summary["val"], summary["test"]) == (8, 3, 1)
    lists = _lists(root, ("train", "val", "test"))
    lines = sorted(ln for text in lists.values() for ln in text.splitlines())
    assert lines == [f"images/s{i:02d}.jpg annotations/s{i:02d}.xml" for i in range(12)]
    assert (root / "label_list.txt").read_text() == "cat\ndog\n"
    code, _, err = cli("det", "split", "--input", root, "--seed", "3")  # a split exists
    assert code == 1 and "holds a split already; pass --overwrite" in err
    assert _lists(root, ("train", "val", "test")) == lists  # untouched
    again = ("--val", "0.25", "--test", "0.1", "--overwrite")
    assert cli("det", "split", "--input", root, *again)[0] == 0
    assert _lists(root, ("train", "val", "test")) == lists  # same seed, same lists
    assert cli("det", "split", "--input", root, *again, "--seed", "3")[0] == 0
    assert _lists(root, ("train", "val", "test")) != lists


def test_voc_split_reads_back(tmp_path: Path, cli) -> None:
    from e2ekit.det.data import read_voc

    root = _voc_folder(tmp_path / "voc", 5)
    assert cli("det", "split", "--input", root)[0] == 0  # default --val 0.2: 4 / 1
    train = read_voc(root, "train.txt", "label_list.txt")
    val = read_voc(root, "val.txt", "label_list.txt")
    assert (len(train.records), len(val.records)) == (4, 1)
    assert not (root / "test.txt").exists()


def test_voc_split_refuses_unpaired(cli, tmp_path: Path) -> None:
    root = _voc_folder(tmp_path / "voc", 6)
    for i in (1, 2, 4, 5):
        (root / "annotations" / f"s{i:02d}.xml").unlink()
    code, _, err = cli("det", "split", "--input", root)
    assert code == 1
    assert "4 image(s) without annotation(s): s01.jpg, s02.jpg, s04.jpg (and 1 more)" in err
    assert not (root / "train.txt").exists()


def test_bad_fractions(cli, tmp_path: Path) -> None:
    root = _voc_folder(tmp_path / "voc", 3)
    code, _, err = cli("det", "split", "--input", root, "--val", "0.6", "--test", "0.5")
    assert code == 1 and "keep the sum < 1" in err
    code, _, err = cli("det", "split", "--input", root, "--val", "0.5", "--test", "0.4")
    assert code == 1 and "cannot give 2 val and 1 test" in err


def test_coco_split_by_image(cli, tmp_path: Path) -> None:
    coco = {
        "info": {"description": "x"},
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in range(10)],
        "annotations": [
            {"id": 100 + k, "image_id": k % 10, "category_id": 1, "bbox": [0, 0, 2, 2],
             "area": 4, "iscrowd": 0}
            for k in range(25)
        ],
        "categories": [{"id": 1, "name": "a"}],
    }  # fmt: skip
    ann = tmp_path / "all.json"
    ann.write_text(json.dumps(coco))
    out = tmp_path / "split"
    code, stdout, err = cli("det", "split", "--input", ann, "--out", out)
    assert code == 0, err
    assert (_last(stdout)["train"], _last(stdout)["val"]) == (8, 2)
    train = json.loads((out / "train.json").read_text())
    val = json.loads((out / "val.json").read_text())
    ids = {im["id"] for im in train["images"]}, {im["id"] for im in val["images"]}
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 10
    for part, keep in ((train, ids[0]), (val, ids[1])):
        assert {a["image_id"] for a in part["annotations"]} <= keep
        assert part["categories"] == coco["categories"] and part["info"] == coco["info"]
    assert len(train["annotations"]) + len(val["annotations"]) == 25
    first = (out / "val.json").read_bytes()
    assert cli("det", "split", "--input", ann, "--out", out)[0] == 1  # a split exists
    assert cli("det", "split", "--input", ann, "--out", out, "--overwrite")[0] == 0
    assert (out / "val.json").read_bytes() == first

    named = tmp_path / "train.json"
    named.write_text(json.dumps(coco))
    code, _, err = cli("det", "split", "--input", named)
    assert code == 1 and "would overwrite its input" in err
