"""Every shipped det config builds its detector: model keys are checked against the builder's
arguments only at build time, and a ``_base_`` can leak keys of another architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2ekit.core.config import load_config
from e2ekit.det.config import DetConfig
from e2ekit.det.task import DetTask

from ..conftest import ROOT

CONFIGS = sorted((ROOT / "configs" / "det").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_det_config_builds_its_model(path: Path) -> None:
    cfg = load_config(path, DetConfig, [])
    det = DetTask(cfg).build_detector()  # full-size ones take ~1 s (random init, no download)
    assert det.num_classes >= 1


APPS = {
    "pedestrian_yolov3_darknet": "pedestrian",
    "vehicle_yolov3_darknet": "vehicle",
    "face_blazeface": "face",
}


@pytest.mark.parametrize(("config", "labels"), list(APPS.items()))
def test_application_config_takes_its_label_list(config: str, labels: str, tmp_path: Path) -> None:
    """The README's recipe: own VOC data + the shipped label list -> the model's classes."""
    import numpy as np
    from PIL import Image

    label_file = ROOT / "configs" / "det" / "labels" / f"{labels}.txt"
    names = label_file.read_text().split()
    (tmp_path / "img").mkdir()
    (tmp_path / "xml").mkdir()
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    objects = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{4 + i}</xmin><ymin>4</ymin>"
        f"<xmax>{30 + i}</xmax><ymax>40</ymax></bndbox></object>"
        for i, n in enumerate(names)
    )
    (tmp_path / "xml" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>96</width><height>64</height>"
        f"<depth>3</depth></size>{objects}</annotation>"
    )
    (tmp_path / "list.txt").write_text("img/a.png xml/a.xml\n")
    overrides = ["data.format=voc", f"data.root={tmp_path}", "data.train_list=list.txt"]
    overrides += ["data.val_list=list.txt", f"data.label_list={label_file}"]
    task = DetTask(load_config(ROOT / "configs" / "det" / f"{config}.yaml", DetConfig, overrides))
    assert task.class_names == names
    assert task.build_detector().num_classes == len(names)
    assert len(task.det_dataset("train").records[0].labels) == len(names)
