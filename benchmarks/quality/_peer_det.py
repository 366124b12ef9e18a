"""Peer side of the det quality benchmark, run in the ultralytics venv: YOLOv8n from scratch
(``YOLO("yolov8n.yaml")``, no pretrained weights) at its default training recipe, with the
wall-time budget as ultralytics' own ``time=`` (hours) argument. Offline: no downloads, no
plots (fonts), no auto-installs, settings in the work folder.

Converts the COCO json to YOLO txt labels in the work folder, trains, then predicts the val
images (conf 0.001, iou 0.7, max_det 100) into a COCO detections json. Last stdout: JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path


def to_yolo(ann: Path, images: Path, out: Path) -> Path:
    """``out/images`` (copies of the images) and ``out/labels`` (class cx cy w h, 0..1)."""
    coco = json.loads(ann.read_text())
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    rows: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for a in coco["annotations"]:
        w, h = sizes[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        cx, cy = (x + bw / 2) / w, (y + bh / 2) / h
        rows[a["image_id"]].append(
            f"{a['category_id'] - 1} {cx:.6f} {cy:.6f} {bw / w:.6f} {bh / h:.6f}"
        )
    for im in coco["images"]:
        copy = out / "images" / im["file_name"]
        if not copy.exists():
            shutil.copyfile(images / im["file_name"], copy)
        stem = Path(im["file_name"]).stem
        (out / "labels" / f"{stem}.txt").write_text("\n".join(rows[im["id"]]) + "\n")
    return out / "images"


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    work = Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        YOLO_OFFLINE="true", YOLO_AUTOINSTALL="false", YOLO_CONFIG_DIR=str(work / "config")
    )
    import torch
    import ultralytics
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update(sync=False)
    torch.set_num_threads(spec["threads"])
    train_dir = to_yolo(
        Path(spec["train_ann"]), Path(spec["train_images"]), work / "yolo" / "train"
    )
    val_dir = to_yolo(Path(spec["val_ann"]), Path(spec["val_images"]), work / "yolo" / "val")
    names = {i: n for i, n in enumerate(spec["names"])}
    data = work / "data.yaml"
    data.write_text(json.dumps({"train": str(train_dir), "val": str(val_dir), "names": names}))

    model = YOLO("yolov8n.yaml")
    hours = spec["budget_s"] / 3600
    start = time.perf_counter()
    model.train(
        data=str(data),
        imgsz=spec["imgsz"],
        epochs=1000,
        time=hours,
        batch=spec["batch"],
        device="cpu",
        workers=0,
        pretrained=False,
        amp=False,
        plots=False,
        val=False,
        project=str(work / "runs"),
        name="train",
        exist_ok=True,
        seed=spec["seed"],
        verbose=False,
    )
    train_wall = time.perf_counter() - start

    coco = json.loads(Path(spec["val_ann"]).read_text())
    t0 = time.perf_counter()
    dets = []
    for im in coco["images"]:
        res = model.predict(
            str(Path(spec["val_images"]) / im["file_name"]),
            imgsz=spec["imgsz"],
            conf=0.001,
            iou=0.7,
            max_det=100,
            device="cpu",
            verbose=False,
        )[0]
        boxes = res.boxes
        for (x0, y0, x1, y1), s, c in zip(
            boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True
        ):
            dets.append(
                {
                    "image_id": im["id"],
                    "category_id": int(c) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(s),
                }
            )
    predict_wall = time.perf_counter() - t0
    Path(spec["pred_file"]).write_text(json.dumps(dets))
    epochs = getattr(model.trainer, "epoch", None)
    result = {
        "command": f"YOLO('yolov8n.yaml').train(imgsz={spec['imgsz']}, time={hours:.4f}, "
        f"batch={spec['batch']}, pretrained=False, val=False, plots=False); predict(conf=0.001, "
        "iou=0.7, max_det=100)",
        "ultralytics_version": ultralytics.__version__,
        "epochs": None if epochs is None else int(epochs) + 1,
        "train_wall_s": round(train_wall, 1),
        "predict_wall_s": round(predict_wall, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
