"""Detection: ours (``e2ekit det train``, config from ``--det-config``) vs ultralytics YOLOv8n
from scratch (``YOLO("yolov8n.yaml")``, no pretrained weights, offline) at the same image size
and wall-time budget; COCO mAP(0.5:0.95) and AP50 from both sides' predictions on the same
val images, computed here with pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, SHARED_DATA, Budget, log, result_line, run_cli, run_ours, run_peer
from PIL import Image, ImageDraw, ImageFilter

DATASETS = ("bccd", "marks")


def _coco(images: list[dict], anns: list[dict], names: list[str]) -> dict:
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    return {"images": images, "annotations": anns, "categories": cats}


def _bccd(work: Path) -> dict[str, Any]:
    """BCCD's own split lists: train on ``val.txt`` (87 images), evaluate on ``test.txt`` (72)."""
    root = SHARED_DATA / "det" / "bccd_voc" / "BCCD"
    names = ["RBC", "WBC", "Platelets"]
    out = {}
    for split, listname in (("train", "val"), ("val", "test")):
        stems = (root / "ImageSets" / "Main" / f"{listname}.txt").read_text().split()
        images, anns = [], []
        for i, stem in enumerate(sorted(stems)):
            tree = ET.parse(root / "Annotations" / f"{stem}.xml").getroot()
            size = tree.find("size")
            w, h = int(size.findtext("width")), int(size.findtext("height"))
            images.append({"id": i + 1, "file_name": f"{stem}.jpg", "width": w, "height": h})
            for obj in tree.iter("object"):
                bb = obj.find("bndbox")
                x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
                if x1 - x0 < 1 or y1 - y0 < 1:
                    continue  # BloodImage_00338 has a zero-size box
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": names.index(obj.findtext("name").strip()) + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
        path = work / f"{split}.json"
        path.write_text(json.dumps(_coco(images, anns, names)))
        out[split] = {"ann": path, "images": root / "JPEGImages"}
    out["names"] = names
    return out


def _marks(work: Path, n_train: int = 400, n_val: int = 80, size: int = 224) -> dict[str, Any]:
    """Generated, unlike the kit's built-in shapes: filled ellipses, irregular polygons and
    open rings on smooth colour-noise backgrounds with grain and blur; seed 7331."""
    rng = np.random.default_rng(7331)
    names = ["ellipse", "polygon", "ring"]
    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"names": names}
    for split, count in (("train", n_train), ("val", n_val)):
        images, anns = [], []
        for i in range(count):
            coarse = rng.uniform(30, 220, size=(7, 7, 3)).astype(np.uint8)
            img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
            draw = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(1, 7))):
                cls = int(rng.integers(0, 3))
                color = tuple(int(c) for c in rng.uniform(0, 255, 3))
                w, h = rng.uniform(14, 70), rng.uniform(14, 70)
                x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
                box = [x0, y0, x0 + w, y0 + h]
                if cls == 0:
                    draw.ellipse(box, fill=color)
                elif cls == 1:
                    k = int(rng.integers(4, 8))
                    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
                    pts = [
                        (x0 + w / 2 * (1 + np.cos(t)), y0 + h / 2 * (1 + np.sin(t))) for t in ang
                    ]
                    draw.polygon(pts, fill=color)
                    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                    box = [min(xs), min(ys), max(xs), max(ys)]
                else:
                    draw.ellipse(box, outline=color, width=int(rng.integers(3, 7)))
                bw, bh = box[2] - box[0], box[3] - box[1]
                if bw < 4 or bh < 4:
                    continue
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": cls + 1,
                        "bbox": [box[0], box[1], bw, bh],
                        "area": bw * bh,
                        "iscrowd": 0,
                    }
                )
            img = img.filter(ImageFilter.GaussianBlur(0.6))
            arr = np.asarray(img).astype(np.float32) + rng.normal(0, 10, (size, size, 3))
            name = f"{split}_{i:04d}.jpg"
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / name, quality=92)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        path = work / f"{split}.json"
        path.write_text(json.dumps(_coco(images, anns, names)))
        out[split] = {"ann": path, "images": folder}
    return out


def image_size(config: str) -> int:
    """The size our config evaluates at (its val ``Resize``), which the peer then uses."""
    from e2ekit.core.config import load_yaml_tree

    tree, _ = load_yaml_tree(REPO / config, kit="det")
    for t in tree.get("data", {}).get("val_transforms", []):
        if t.get("type") == "Resize":
            size = t.get("target_size")
            return int(size[0] if isinstance(size, list) else size)
    return 320


def coco_map(gt_file: Path, dets: list[dict]) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        if not dets:
            return {"mAP": 0.0, "AP50": 0.0}
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP": round(float(ev.stats[0]), 4), "AP50": round(float(ev.stats[1]), 4)}


def _ours_dets(pred_file: Path, gt_file: Path) -> list[dict]:
    gt = json.loads(gt_file.read_text())
    ids = {im["file_name"]: im["id"] for im in gt["images"]}
    dets = []
    for line in pred_file.read_text().splitlines():
        row = json.loads(line)
        image_id = ids[Path(row["image"]).name]
        for d in row["detections"]:
            x0, y0, x1, y1 = d["box"]
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": int(d["class_id"]) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(d["score"]),
                }
            )
    return dets


def run(name: str, work: Path, budget: Budget, peer_py: Path, mach: dict, args: Any) -> dict:
    log(f"det/{name}: preparing data")
    (work / "data").mkdir(parents=True, exist_ok=True)
    d = _bccd(work / "data") if name == "bccd" else _marks(work / "data")
    size = image_size(args.det_config)
    batch = 16
    overrides = [
        "data.format=coco",
        f"data.train_ann={d['train']['ann']}",
        f"data.train_images={d['train']['images']}",
        "data.val_ann=null",  # scored afterwards from predictions, as the peer is
        "data.val_images=null",
        f"train.batch_size={batch}",
    ]
    if args.det_score_thresh is not None:  # low, as the peer's conf=0.001, for mAP
        overrides.append(f"model.score_thresh={args.det_score_thresh}")
    log(f"det/{name}: ours ({args.det_config}, {size} px)")
    ours = run_ours("det", args.det_config, overrides, work / "ours", budget, batch, 6)
    val = json.loads(d["val"]["ann"].read_text())
    listing = work / "val_images.txt"
    listing.write_text("".join(f"{d['val']['images'] / im['file_name']}\n" for im in val["images"]))
    pred_dir = work / "ours" / "pred"
    t = run_cli(
        [
            "det",
            "predict",
            "--weights",
            ours["run_dir"],
            "--input",
            str(listing),
            "--out",
            str(pred_dir),
            "--threads",
            str(budget.threads),
            "--draw-threshold",
            "0.99",
        ],
        work / "ours" / "predict.log",
        budget,
    )
    t0 = time.perf_counter()
    ours.update(
        coco_map(d["val"]["ann"], _ours_dets(pred_dir / "predictions.jsonl", d["val"]["ann"]))
    )
    ours["eval_wall_s"] = round(t + time.perf_counter() - t0, 1)
    ours["wall_s"] = round(ours["train_wall_s"] + ours["eval_wall_s"], 1)

    log(f"det/{name}: peer ultralytics YOLOv8n from scratch")
    spec = {
        "train_ann": str(d["train"]["ann"]),
        "train_images": str(d["train"]["images"]),
        "val_ann": str(d["val"]["ann"]),
        "val_images": str(d["val"]["images"]),
        "names": d["names"],
        "imgsz": size,
        "batch": batch,
        "budget_s": budget.seconds,
        "threads": budget.threads,
        "work": str(work / "peer"),
        "pred_file": str(work / "peer" / "dets.json"),
        "seed": 0,
    }
    peer = run_peer(peer_py, "_peer_det.py", spec, work / "peer", budget)
    t0 = time.perf_counter()
    peer.update(coco_map(d["val"]["ann"], json.loads((work / "peer" / "dets.json").read_text())))
    peer["eval_wall_s"] = round(peer["predict_wall_s"] + time.perf_counter() - t0, 1)
    peer["wall_s"] = round(peer["train_wall_s"] + peer["eval_wall_s"], 1)
    line = result_line("det", name, "mAP", ours, peer, mach, budget)
    line["image_size"] = size
    line["ratio_ap50_ours_over_peer"] = (
        round(ours["AP50"] / peer["AP50"], 4) if peer.get("AP50") else None
    )
    return line
