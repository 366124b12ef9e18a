"""VOC mAP as the det kit's evaluation metric: ``eval.metric`` (auto/coco/voc),
``eval.voc_metric`` and ``eval.voc_iou``, the default ``best.pt`` metric that follows it, and
the numbers checked against a direct ``voc_evaluate`` call on the same detections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from e2ekit.core.config import load_config
from e2ekit.det.config import DetConfig
from e2ekit.det.data import voc_to_coco
from e2ekit.det.metrics import voc_evaluate
from e2ekit.det.task import DetTask

from ..conftest import ROOT

TINY = ROOT / "configs" / "det" / "tiny.yaml"
W, H = 48, 24  # resized to 96x96 by tiny.yaml: x2 and y4, exact in float
CLASSES = ["cat", "dog"]

# image -> [(class, xyxy in original pixels, difficult)]
GT: dict[str, list[tuple[str, list[int], int]]] = {
    "x1": [("dog", [2, 2, 20, 20], 0), ("cat", [24, 4, 46, 22], 1)],
    "x2": [("cat", [5, 5, 25, 20], 0)],
    "x3": [("dog", [10, 2, 40, 22], 0), ("cat", [1, 1, 9, 9], 0)],
}
# image -> [(class, xyxy in original pixels, score)]; the IoU 0.887 hits become misses at 0.9
DETS: dict[str, list[tuple[str, list[float], float]]] = {
    "x1": [
        ("dog", [2, 2, 20, 20], 0.9),  # hit
        ("dog", [3, 3, 21, 21], 0.8),  # duplicate: false positive
        ("cat", [24, 4, 46, 22], 0.7),  # on a difficult box: neither
    ],
    "x2": [("cat", [6, 6, 25, 20], 0.6), ("dog", [30, 2, 45, 20], 0.95)],
    "x3": [
        ("dog", [12, 3, 40, 22], 0.5),
        ("cat", [30, 10, 40, 20], 0.45),  # false positive between the two cat hits
        ("cat", [1, 1, 9, 9], 0.4),
    ],
}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _xml(name: str, objects: list[tuple[str, list[int], int]]) -> str:
    objs = "".join(
        f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for c, b, d in objects
    )
    return (
        f"<annotation><filename>{name}.png</filename><size><width>{W}</width>"
        f"<height>{H}</height><depth>3</depth></size>{objs}</annotation>"
    )


def write_voc(root: Path) -> Path:
    """A three-image VOC folder (list file lists.txt for both splits, labels.txt)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, objects in GT.items():
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / f"{name}.png")
        (root / f"{name}.xml").write_text(_xml(name, objects))
    (root / "list.txt").write_text("".join(f"{n}.png {n}.xml\n" for n in GT))
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def voc_overrides(root: Path) -> list[str]:
    return [
        "data.format=voc",
        f"data.root={root}",
        "data.train_list=list.txt",
        "data.val_list=list.txt",
        "data.label_list=labels.txt",
    ]


def coco_overrides(root: Path) -> list[str]:
    ann = voc_to_coco(root, "list.txt", "labels.txt", root / "coco.json")
    return [
        f"data.train_ann={ann}",
        f"data.train_images={root}",
        f"data.val_ann={ann}",
        f"data.val_images={root}",
    ]


def task_for(overrides: list[str]) -> DetTask:
    return DetTask(load_config(TINY, DetConfig, overrides))


class FixedDetector:
    """Finds ``DETS`` in the val images (one batch, list order), in input pixels."""

    def __call__(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        assert images.shape[0] == len(DETS) and tuple(images.shape[-2:]) == (96, 96)
        scale = torch.tensor([96 / W, 96 / H, 96 / W, 96 / H])
        return [
            {
                "boxes": torch.tensor([b for _, b, _ in dets]).reshape(-1, 4) * scale,
                "scores": torch.tensor([s for _, _, s in dets]),
                "labels": torch.tensor([CLASSES.index(c) for c, _, _ in dets]),
            }
            for dets in DETS.values()
        ]


def evaluate(task: DetTask) -> dict[str, Any]:
    ds = task.build_dataset("val")
    loader = DataLoader(ds, batch_size=len(DETS), collate_fn=task.collate_fn("val"))
    with torch.inference_mode():
        return task.evaluate(FixedDetector(), loader, torch.device("cpu"))


def direct(metric: str, iou: float) -> dict[str, Any]:
    """``voc_evaluate`` on ``GT`` and ``DETS`` as written, without the task."""

    def arrays(rows: list, k: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        return np.array([r[k] for r in rows], dtype).reshape(shape)

    gts, dets = list(GT.values()), list(DETS.values())
    return voc_evaluate(
        gt_boxes=[arrays(g, 1, np.float64, (-1, 4)) for g in gts],
        gt_labels=[[CLASSES.index(c) for c, _, _ in g] for g in gts],
        gt_difficult=[arrays(g, 2, bool, (-1,)) for g in gts],
        det_boxes=[arrays(d, 1, np.float64, (-1, 4)) for d in dets],
        det_scores=[arrays(d, 2, np.float64, (-1,)) for d in dets],
        det_labels=[[CLASSES.index(c) for c, _, _ in d] for d in dets],
        num_classes=len(CLASSES),
        iou_thresh=iou,
        metric=metric,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_voc(tmp_path_factory.mktemp("voc_metric") / "voc")


@pytest.fixture(scope="module")
def trained(voc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from e2ekit.core.cli import main

    run = tmp_path_factory.mktemp("voc_run") / "run"
    sets = [*voc_overrides(voc_root), "train.max_steps=2", "train.batch_size=2"]
    args = ["det", "train", "-c", str(TINY), "--out", str(run)]
    for o in [*sets, "train.eval_interval=1"]:
        args += ["-o", o]
    assert main(args) == 0
    return run


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_voc_run_selects_best_by_voc_map(cli, trained: Path) -> None:
    """VOC data (eval.metric auto): metrics.json has COCO and VOC numbers, best.pt by voc_mAP;
    ``det eval`` reproduces them, and ``-o eval.metric=coco`` leaves the VOC keys out."""
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["best_metric"] == "voc_mAP"
    assert {"mAP", "AP50", "AP75", "per_class_ap", "voc_mAP", "voc_per_class_ap"} <= set(metrics)
    assert set(metrics["voc_per_class_ap"]) == set(CLASSES)
    assert 0.0 <= metrics["voc_mAP"] <= 1.0
    code, out, err = cli("det", "eval", "--weights", trained / "best.pt")
    assert code == 0, err
    result = last_json(out)
    assert result["voc_mAP"] == pytest.approx(metrics["voc_mAP"], abs=1e-9)
    assert result["mAP"] == pytest.approx(metrics["mAP"], abs=1e-9)
    assert "voc_per_class_ap" not in result  # per-class numbers only with --classwise
    code, out, err = cli("det", "eval", "--weights", trained / "best.pt", "--classwise")
    assert code == 0, err
    assert set(last_json(out)["voc_per_class_ap"]) == set(CLASSES)
    assert "per-class VOC AP" in err
    code, out, err = cli("det", "eval", "--weights", trained / "best.pt", "-o", "eval.metric=coco")
    assert code == 0, err
    result = last_json(out)
    assert "mAP" in result and not {"voc_mAP", "voc_per_class_ap"} & set(result)


@pytest.mark.parametrize(
    ("voc_metric", "voc_iou"), [("11point", 0.5), ("area", 0.5), ("11point", 0.9)]
)
def test_voc_settings_match_voc_evaluate(voc_root: Path, voc_metric: str, voc_iou: float) -> None:
    """eval.voc_metric and eval.voc_iou give what voc_evaluate gives for the same boxes,
    mapped back from the 96x96 input to the original pixels, difficult flags from the xml."""
    task = task_for(
        [*voc_overrides(voc_root), f"eval.voc_metric={voc_metric}", f"eval.voc_iou={voc_iou}"]
    )
    got = evaluate(task)
    want = direct(voc_metric, voc_iou)
    assert got["voc_mAP"] == pytest.approx(want["mAP"], abs=1e-12)
    assert got["voc_per_class_ap"] == pytest.approx(
        dict(zip(CLASSES, want["per_class_ap"], strict=True))
    )
    # by hand. dog ranks miss, hit, miss, hit (a hit at IoU 0.887); cat ranks the difficult
    # box's detection (neither), hit (0.887), miss, hit: recall 0.5, 0.5, 1
    expected = {
        ("11point", 0.5): {"dog": 0.5, "cat": (6 + 5 * 2 / 3) / 11},
        ("area", 0.5): {"dog": 0.5, "cat": 0.5 * 1 + 0.5 * 2 / 3},
        ("11point", 0.9): {"dog": 6 * 0.5 / 11, "cat": 6 * (1 / 3) / 11},  # 0.887 misses
    }[(voc_metric, voc_iou)]
    assert got["voc_per_class_ap"] == pytest.approx(expected, abs=1e-12)
    assert got["voc_mAP"] == pytest.approx((expected["dog"] + expected["cat"]) / 2, abs=1e-12)


def test_coco_metric_on_voc_data_reports_no_voc_keys(voc_root: Path) -> None:
    voc = evaluate(task_for(voc_overrides(voc_root)))
    task = task_for([*voc_overrides(voc_root), "eval.metric=coco"])
    coco = evaluate(task)
    assert task.default_metric == "mAP"
    assert not {"voc_mAP", "voc_per_class_ap"} & set(coco)
    assert {k: v for k, v in voc.items() if not k.startswith("voc_")} == coco


def test_voc_metric_on_coco_data(voc_root: Path) -> None:
    """The same set as COCO json (difficult kept as ``difficult: 1``) scores the same VOC mAP;
    auto on COCO data stays COCO."""
    task = task_for([*coco_overrides(voc_root), "eval.metric=voc"])
    assert task.default_metric == "voc_mAP"
    got = evaluate(task)
    assert got["voc_mAP"] == pytest.approx(direct("11point", 0.5)["mAP"], abs=1e-12)
    assert got["voc_mAP"] == pytest.approx(evaluate(task_for(voc_overrides(voc_root)))["voc_mAP"])
    auto = task_for(coco_overrides(voc_root))
    assert auto.default_metric == "mAP" and "voc_mAP" not in evaluate(auto)


def test_explicit_train_metric_wins_over_the_voc_default(voc_root: Path, tmp_path: Path) -> None:
    from e2ekit.core.engine import Trainer

    def best(extra: list[str]) -> str:
        task = task_for([*voc_overrides(voc_root), "train.batch_size=2", *extra])
        return Trainer(task, tmp_path / "never-written").metric_name

    assert best([]) == "voc_mAP"
    assert best(["train.metric=AP50"]) == "AP50"
    assert best(["eval.metric=coco"]) == "mAP"
