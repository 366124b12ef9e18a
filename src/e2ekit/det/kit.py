"""det kit wiring: predict (drawn images + JSON lines), ``POST /predict``, and the det-only
verbs ``preview``, ``convert``, ``split`` and ``anchors``; pre/post-processing lives in
``det.runner``."""

from __future__ import annotations

import base64
import json
from argparse import ArgumentParser, Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from e2ekit.core.errors import ConfigError, DataError, E2EError
from e2ekit.core.fileio import atomic_open
from e2ekit.core.imageio import check_image_files, decode_image_field, list_inputs, read_image
from e2ekit.core.kit import Kit, Verb
from e2ekit.core.progress import progress
from e2ekit.core.serve import Endpoint
from e2ekit.det.config import DetConfig
from e2ekit.det.runner import MAX_IMAGE_KEY, DetRunner, draw, save_image
from e2ekit.det.task import DetTask

# det predict's images per model call: enough to amortise a call, small in memory
PREDICT_BATCH_SIZE = 8


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

    image: str = Field(..., description="base64-encoded image file (PNG, JPEG, ...)")
    score_threshold: float | None = Field(
        None, ge=0, le=1, description="drop boxes below this score (default: deploy's)"
    )


def cmd_preview(kit: Kit[DetConfig], args: Namespace) -> dict[str, Any]:
    """Draw the ground truth of the train (or ``--split``) annotations for checking."""
    from e2ekit.core.verbs import load_run_config

    cfg, _ = load_run_config(kit, args)
    task = DetTask(cfg)
    split = getattr(args, "split", None) or "train"
    ds = task.det_dataset(split)
    if ds is None:
        raise ConfigError(f"no {split} annotations configured")
    out = Path(args.out or f"runs/det/preview-{split}")
    out.mkdir(parents=True, exist_ok=True)
    limit = int(getattr(args, "limit", None) or 50)
    drawn = ds.records[:limit]
    for r in progress(drawn, desc="preview", unit="img"):
        image = read_image(r.file)
        caps = [ds.class_names[int(k)] for k in r.labels]
        save_image(draw(image, r.boxes, caps, None, r.labels), out / f"{Path(r.file).stem}.png")
    boxes = sum(len(r.boxes) for r in drawn)  # what the pictures show, not the whole split
    return {"images": len(drawn), "boxes": boxes, "of_images": len(ds.records), "output": str(out)}


def cmd_convert(kit: Kit[DetConfig], args: Namespace) -> dict[str, Any]:
    """``det convert --from labelme|via|cvat|voc --input ... --out train.json``."""
    from e2ekit.det.data import labelme_to_coco, via_to_coco, voc_to_coco
    from e2ekit.det.data.convert import cvat_to_coco

    if not args.input or not args.out:
        raise E2EError("convert needs --input and --out (the COCO json to write)")
    source = args.source
    if source == "labelme":
        path = labelme_to_coco(args.input, args.out, image_root=args.images)
    elif source == "via":  # images next to the VIA json
        path = via_to_coco(args.input, args.out, image_dir=args.images)
    elif source == "cvat":  # images in images/ beside the XML, as CVAT exports them
        path = cvat_to_coco(args.input, args.out, image_dir=args.images)
    elif source == "voc":
        if not args.label_list:
            raise E2EError("--from voc needs --label-list and --input ROOT/LIST_FILE")
        list_file = Path(args.input)
        path = voc_to_coco(list_file.parent, list_file.name, args.label_list, args.out)
    else:
        raise E2EError(f"--from {source}: use labelme, via, cvat or voc")
    coco = json.loads(Path(path).read_text())
    return {
        "output": str(path),
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "categories": [c["name"] for c in coco["categories"]],
    }


def cmd_split(kit: Kit[DetConfig], args: Namespace) -> dict[str, Any]:
    """``det split --input DIR|ann.json``: seeded train/val(/test) lists or COCO files."""
    from e2ekit.core.split import refuse_existing_split
    from e2ekit.det.data.convert import split_coco, split_voc_folder

    if not args.input:
        raise E2EError("split needs --input: a folder of images/ + annotations/, or a COCO json")
    source = Path(args.input).expanduser()
    if source.is_file() and source.suffix.lower() == ".json":
        out = Path(args.out).expanduser() if args.out else source.parent
        refuse_existing_split(out, ".json", args.overwrite)
        counts = split_coco(source, out, args.val, args.test, args.seed)
    elif source.is_dir():
        out = Path(args.out).expanduser() if args.out else source
        refuse_existing_split(out, ".txt", args.overwrite)
        counts = split_voc_folder(source, out, args.val, args.test, args.seed)
    else:
        raise E2EError(f"--input {source}: not a folder or a .json file")
    return {**counts, "seed": args.seed, "output": str(out)}


def cmd_anchors(kit: Kit[DetConfig], args: Namespace) -> dict[str, Any]:
    """k-means anchors of the train boxes at the training input size, for ``model.anchors``."""
    from e2ekit.core.logs import log
    from e2ekit.core.verbs import load_run_config
    from e2ekit.det.anchors import kmeans_anchors, mean_best_iou

    cfg, _ = load_run_config(kit, args)
    for flag, value in (("--levels", args.levels), ("--per-level", args.per_level)):
        if value < 1:
            raise E2EError(f"{flag} must be >= 1, got {value}")
    if args.size is not None and args.size < 8:
        raise E2EError(f"--size must be the input size in pixels (>= 8), got {args.size}")
    ds = DetTask(cfg).det_dataset("train")
    if ds is None or not ds.records:
        raise ConfigError("no train annotations configured: set data.train_ann (or data.root)")
    size = int(args.size or cfg.export.input_size)
    keep_ratio = next(
        (
            bool(t.get("keep_ratio", False))
            for t in cfg.data.train_transforms
            if isinstance(t, dict) and t.get("type") == "Resize"
        ),
        False,
    )
    rows = []
    for r in ds.records:
        if not len(r.boxes):
            continue
        sx, sy = size / r.width, size / r.height
        if keep_ratio:
            sx = sy = size / max(r.width, r.height)
        wh = (r.boxes[:, 2:] - r.boxes[:, :2]) * np.array([sx, sy], dtype=np.float32)
        rows.append(wh)
    if not rows:
        raise DataError("the train annotations have no boxes to fit anchors to")
    wh = np.concatenate(rows)
    levels = int(args.levels)
    k = levels * int(args.per_level)
    if len(wh) < k:
        raise DataError(
            f"{len(wh)} train boxes cannot fit {k} anchors ({levels} levels x "
            f"{args.per_level}); lower --levels/--per-level or add data"
        )
    anchors = kmeans_anchors(wh, k=k, seed=int(cfg.seed))
    per = int(args.per_level)
    sizes = [[max(1, round(float(w))), max(1, round(float(h)))] for w, h in anchors]
    nested = [sizes[i * per : (i + 1) * per] for i in range(levels)]
    fitted = mean_best_iou(wh, np.array(nested, dtype=np.float64).reshape(-1, 2))
    result: dict[str, Any] = {
        "anchors": nested,
        "mean_best_iou": round(fitted, 4),
        "boxes": len(wh),
        "input_size": size,
        "keep_ratio": keep_ratio,
    }
    current = cfg.model.get("anchors")
    current_wh = np.asarray(current if current is not None else [], dtype=np.float64)
    if current_wh.size and current_wh.size % 2 == 0:  # malformed anchors fail at model build
        result["mean_best_iou_current"] = round(mean_best_iou(wh, current_wh.reshape(-1, 2)), 4)
    log.info("model.anchors (small to large, one list per level):\n  anchors: %s", nested)
    return result


def cmd_eval(kit: Kit[DetConfig], args: Namespace) -> dict[str, Any]:
    from e2ekit.core import verbs
    from e2ekit.core.logs import log

    metrics = verbs.cmd_eval(kit, args)
    classwise = bool(getattr(args, "classwise", False))
    tables = (("per_class_ap", "AP@[.5:.95]"), ("voc_per_class_ap", "VOC AP"))
    for key, title in tables:
        per_class = metrics.get(key) or {}
        if classwise and per_class:
            width = max(len(n) for n in per_class)
            rows = [
                f"{n:<{width}}  {'-' if v is None else f'{v:.4f}'}" for n, v in per_class.items()
            ]
            log.info("per-class %s:\n%s", title, "\n".join(rows))
    if not classwise:
        metrics = {k: v for k, v in metrics.items() if k not in dict(tables)}
    return metrics


def _eval_flags(p: ArgumentParser) -> None:
    p.add_argument("--classwise", action="store_true", help="per-class AP table")


def _predict_flags(p: ArgumentParser) -> None:
    p.add_argument(
        "--draw-threshold", type=float, help="min score drawn (0..1; default: the export's)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=PREDICT_BATCH_SIZE,
        help=f"images per model call (default {PREDICT_BATCH_SIZE}; exports with a one-image "
        "NMS graph run one at a time)",
    )


def predict_batch_size(options: Mapping[str, Any]) -> int:
    """``--batch-size``, checked: a bad value fails naming the flag, not in the model."""
    size = options.get("batch_size")
    if size is None:
        return PREDICT_BATCH_SIZE
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise E2EError(f"--batch-size {size}: must be an integer >= 1 (images per model call)")
    return size


def _save_drawn(
    runner: DetRunner, image: Any, det: dict[str, np.ndarray], threshold: float, png: Path
) -> int:
    """Draw ``det``'s boxes scoring at least ``threshold`` on ``image`` into ``png``;
    returns how many were drawn."""
    keep = det["scores"] >= threshold
    caps = [
        f"{runner.names[int(k)]} {s:.2f}"
        for k, s in zip(det["labels"][keep], det["scores"][keep], strict=True)
    ]
    masks = det["masks"][keep] if "masks" in det else None
    save_image(draw(image, det["boxes"][keep], caps, masks, det["labels"][keep]), png)
    return int(keep.sum())


def _preview_flags(p: ArgumentParser) -> None:
    p.add_argument("--split", default="train", help="train or val")
    p.add_argument("--limit", type=int, default=50, help="images drawn")


def _convert_flags(p: ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, help="labelme, via, cvat or voc")
    p.add_argument(
        "--input",
        help="labelme folder/files, VIA json (images beside it), CVAT 1.1 xml, or "
        "ROOT/LIST_FILE (voc)",
    )
    p.add_argument("--label-list", help="voc: label list file")
    p.add_argument(
        "--images",
        help="the image folder file names are relative to (default: the input's folder; "
        "cvat: images/ beside the xml)",
    )


def _split_flags(p: ArgumentParser) -> None:
    p.add_argument("--input", help="folder of images/ + annotations/ (VOC xml), or a COCO json")
    p.add_argument("--val", type=float, default=0.2, help="fraction for val (0.2)")
    p.add_argument("--test", type=float, default=0.0, help="fraction for test (0: none)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (0)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier split's files")


def _anchors_flags(p: ArgumentParser) -> None:
    p.add_argument("--size", type=int, help="input size (default export.input_size)")
    p.add_argument("--levels", type=int, default=3, help="feature levels (3)")
    p.add_argument("--per-level", type=int, default=3, help="anchors per level (3)")


class DetKit(Kit[DetConfig]):
    name = "det"
    schema = DetConfig
    description = "object detection (PaddleDetection-style): YOLOv3, RetinaNet, SSD, BlazeFace"

    def make_task(self, cfg: DetConfig) -> DetTask:
        return DetTask(cfg)

    def verbs(self) -> dict[str, Verb]:
        shared = super().verbs()
        return {
            **shared,
            "eval": shared["eval"].extend(cmd_eval, _eval_flags),
            "predict": shared["predict"].extend(add_arguments=_predict_flags),
            "preview": Verb(
                cmd_preview,
                "draw a split's ground-truth boxes, to check annotations",
                _preview_flags,
            ),
            "convert": Verb(
                cmd_convert,
                "labelme, VIA, CVAT or VOC annotations -> one COCO json",
                _convert_flags,
                out_help="the COCO json to write",
            ),
            "split": Verb(
                cmd_split,
                "seeded train/val(/test) lists of a VOC folder, or json files of a COCO json",
                _split_flags,
                out_help="where the split files go (default: beside --input)",
            ),
            "anchors": Verb(
                cmd_anchors,
                "k-means anchors of the train boxes at the input size, for model.anchors",
                _anchors_flags,
            ),
        }

    def predict(
        self, predictor: Any, input_path: Path, out_dir: Path, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        runner = DetRunner(predictor)
        files = list_inputs(input_path)
        check_image_files(files, runner.max_image_pixels, MAX_IMAGE_KEY)
        out_dir.mkdir(parents=True, exist_ok=True)
        threshold = options.get("draw_threshold")
        if threshold is None:
            threshold = float(runner.deploy.get("draw_threshold", 0.5))
        batch_size = predict_batch_size(options)
        boxes_total = 0
        with (
            atomic_open(out_dir / "predictions.jsonl") as fh,
            progress(total=len(files), desc="predict", unit="img") as bar,
        ):
            for start in range(0, len(files), batch_size):
                chunk = files[start : start + batch_size]
                images = [runner.read(path) for path in chunk]
                for path, image, det in zip(
                    chunk, images, runner.detect_batch(images), strict=True
                ):
                    items = runner.as_json(det)
                    fh.write(json.dumps({"image": str(path), "detections": items}) + "\n")
                    png = out_dir / f"{path.stem}.png"
                    boxes_total += _save_drawn(runner, image, det, threshold, png)
                bar.update(len(chunk))
        return {"images": len(files), "boxes_drawn": boxes_total, "output": str(out_dir)}

    def endpoints(self, predictor: Any) -> list[Endpoint]:
        runner = DetRunner(predictor)

        def to_items(req: PredictRequest) -> list[dict[str, Any]]:
            return [{"image": decode_image_field(req.image)}]

        def run_batch(items: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
            # one model call for the batch (an image per call for one-image NMS exports)
            return runner.detect_batch([item["image"] for item in items])

        def to_response(req: PredictRequest, results: list[dict[str, np.ndarray]]) -> Any:
            threshold = req.score_threshold if req.score_threshold is not None else 0.0
            return {"detections": runner.as_json(results[0], threshold)}

        return [Endpoint("/predict", PredictRequest, to_items, run_batch, to_response)]

    def demo_input(self, cfg: DetConfig, folder: Path) -> Path:
        task = DetTask(cfg)
        ds = task.det_dataset("val")
        assert ds is not None
        listing = folder / "predict_list.txt"
        listing.write_text("".join(f"{r.file}\n" for r in ds.records[:8]))
        return listing

    def demo_request(self, deploy: dict[str, Any]) -> dict[str, Any]:
        import io

        from PIL import Image

        buf = io.BytesIO()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "PNG")
        return {"image": base64.b64encode(buf.getvalue()).decode()}


KIT = DetKit()
