"""Det task: COCO/VOC data validated before training, detectors from the registry, COCO and
VOC mAP.

The model the engine trains wraps a detector (``e2ekit.det.models.base.Detector``): in
training it returns the detector's loss dict, in eval the per-image detections. Evaluation
maps boxes back to original image pixels (the val transforms only resize) and scores them
with pycocotools against the validated ground truth; when ``eval.metric`` resolves to voc
(the default for VOC data) it also reports Pascal VOC mAP (``voc_mAP``), which then selects
``best.pt`` unless ``train.metric`` says otherwise.

A detector class with ``needs_masks`` (Mask R-CNN) gets instance masks: COCO is read with
its segmentations, samples carry ``masks``, training targets pass them on, and evaluation
adds COCO mask AP (``segm_mAP``, ``segm_AP50``, ``segm_AP75``) of the predicted masks
mapped back to original pixels as the boxes are. VOC data has no masks: refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from e2ekit.core.engine import ExportSpec, Task
from e2ekit.core.errors import ConfigError
from e2ekit.core.imageio import read_image
from e2ekit.core.logs import log
from e2ekit.det.config import BUILTIN, DetConfig
from e2ekit.det.data import (
    DetDataset,
    builtin_class_names,
    builtin_paths,
    read_coco,
    read_voc,
    validate,
)
from e2ekit.det.data.samples import RecordSamples
from e2ekit.det.data.transforms import DetCollate, TransformDataset, build_transforms
from e2ekit.det.metrics import coco_evaluate, encode_masks, to_coco_detections, voc_evaluate
from e2ekit.det.registry import MODELS

__all__ = ["DetTask", "DetTrainModel", "RecordsDataset", "model_needs_masks"]

SEGM_KEYS = {"mAP": "segm_mAP", "AP50": "segm_AP50", "AP75": "segm_AP75"}


def _register_models() -> None:
    import e2ekit.det.models  # noqa: F401  (registers detectors)


def model_needs_masks(model_type: Any) -> bool:
    """Whether the detector ``model.type`` names trains on instance masks: its class (a
    registered class, or the class a builder's return annotation names) says
    ``needs_masks``. Known before any model or data is built."""
    _register_models()
    if not isinstance(model_type, str):
        return False
    try:
        builder = MODELS.get(model_type)
    except ConfigError:  # an unknown type fails later, where the model is built
        return False
    if isinstance(builder, type):
        return bool(getattr(builder, "needs_masks", False))
    try:
        cls = get_type_hints(builder).get("return")
    except (NameError, TypeError):  # an annotation that does not resolve: no class to ask
        return False
    return bool(getattr(cls, "needs_masks", False))


class RecordsDataset(Dataset):
    """Raw samples ``{image uint8 (3,H,W), boxes (N,4), labels (N,), image_id, orig_size}``."""

    def __init__(self, ds: DetDataset) -> None:
        self.records = ds.records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        image = read_image(r.file)
        keep = ~np.asarray(r.iscrowd, dtype=bool)
        return {
            "image": image,
            "boxes": torch.as_tensor(r.boxes[keep], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(r.labels[keep], dtype=torch.int64),
            "image_id": int(r.image_id),
            "orig_size": (int(image.shape[-2]), int(image.shape[-1])),
        }


def _detections_in_pixels(
    det: Callable[[torch.Tensor], Any],
    loader: Iterable[Any],
    device: torch.device,
    masks: dict[int, list[dict[str, Any]]] | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """image id -> (boxes xyxy, scores, labels) in the image's original pixels; with
    ``masks`` (a dict to fill) and a detector that returns masks, also image id -> each
    detection's mask as COCO RLE at the original size.

    The val transforms only resize, so dividing by the recorded ``scale_factor`` and
    clipping to the original size undoes them: metrics compare against the annotations as
    written, not against the resized input.
    """
    from e2ekit.det.runner import masks_in_image

    found: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for images, targets in loader:
        outputs = det(images.to(device))
        for out, t in zip(outputs, targets, strict=True):
            boxes = out["boxes"].detach().float().cpu()
            sy, sx = t.get("scale_factor", (1.0, 1.0))
            boxes = boxes / torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
            h, w = t["orig_size"]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            found[int(t["image_id"])] = (
                boxes.numpy().reshape(-1, 4),
                out["scores"].detach().float().cpu().numpy().reshape(-1),
                out["labels"].detach().cpu().numpy().astype(np.int64).reshape(-1),
            )
            if masks is not None and "masks" in out:
                binary = masks_in_image(out["masks"].detach().float().cpu(), (sy, sx), (h, w))
                masks[int(t["image_id"])] = encode_masks(binary)
    return found


class DetTrainModel(nn.Module):
    """Engine-facing wrapper: ``forward((images, targets))`` -> losses (train) or detections."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        self.det = det

    def forward(self, batch: tuple[torch.Tensor, list[dict[str, Any]]]) -> Any:
        images, targets = batch
        if self.training:
            keys = ("boxes", "labels", "masks")  # masks only where the samples carry them
            return self.det(images, [{k: t[k] for k in keys if k in t} for t in targets])
        return self.det(images)


GROUP_WINDOW = 20
RATIO_BINS = 2.0 ** np.linspace(-1, 1, 7)  # 8 groups of width / height, below 1:2 to above 2:1


def aspect_ratio_groups(ratios: Sequence[float]) -> list[int]:
    """Bin index of each width/height ratio: torchvision's aspect-ratio grouping, k=3."""
    return np.digitize(np.asarray(ratios, dtype=np.float64), RATIO_BINS).astype(int).tolist()


class DetTask(Task):
    kit = "det"
    schema = DetConfig
    default_metric = "mAP"
    metric_mode = "max"
    cfg: DetConfig

    def __init__(self, cfg: DetConfig) -> None:
        super().__init__(cfg)
        # windows of GROUP_WINDOW global batches are sorted by aspect-ratio bin
        self.bucket = GROUP_WINDOW if cfg.data.aspect_ratio_grouping else 0
        self._datasets: dict[str, DetDataset | None] = {}
        if cfg.eval_metric == "voc":  # an explicit train.metric still wins (the trainer's rule)
            self.default_metric = "voc_mAP"  # type: ignore[misc]
        self.needs_masks = model_needs_masks(dict(cfg.model).get("type"))

    # -- data ---------------------------------------------------------------------------
    def _builtin_params(self) -> dict[str, Any]:
        b = self.cfg.data.builtin
        return {
            "num_train": b.num_train,
            "num_val": b.num_val,
            "size": b.size,
            "seed": b.seed,
            "max_objects": b.max_objects,
        }

    def _builtin(self) -> dict[str, Path]:
        return builtin_paths(self._builtin_params())

    def det_dataset(self, split: str) -> DetDataset | None:
        """The validated annotations of ``split`` ('train' or 'val'); None if unset."""
        if split in self._datasets:
            return self._datasets[split]
        d = self.cfg.data
        if split not in ("train", "val"):
            raise ConfigError(f"det has splits train and val, not '{split}'")
        if d.format == "coco":
            ann = d.train_ann if split == "train" else d.val_ann
            images = d.train_images if split == "train" else d.val_images
            if not ann:
                self._datasets[split] = None
                return None
            if ann == BUILTIN:
                paths = self._builtin()
                ann, images = str(paths[f"{split}_ann"]), str(paths[f"{split}_images"])
            elif not images:
                raise ConfigError(f"data.{split}_images: the image folder of {ann} is not set")
            raw = read_coco(ann, images, masks=self.needs_masks)
        else:
            if self.needs_masks:
                raise ConfigError(
                    f"model.type {self.cfg.model.get('type')} trains on instance masks, which "
                    "VOC data (data.format: voc) does not have: use COCO annotations with "
                    "'segmentation' (data.format: coco) or a box-only model"
                )
            list_file = d.train_list if split == "train" else d.val_list
            if not list_file:
                self._datasets[split] = None
                return None
            assert d.root and d.label_list
            raw = read_voc(d.root, list_file, d.label_list)
        ds, report = validate(raw, drop_invalid=d.drop_invalid)
        log.info(
            "%s: %d images, %d boxes, %d classes", split, len(ds), ds.num_boxes, len(ds.class_names)
        )
        if not report.ok:
            log.warning("%s", report.text())
        self._datasets[split] = ds
        return ds

    @property
    def class_names(self) -> list[str]:
        d = self.cfg.data
        if d.format == "coco" and d.train_ann == BUILTIN and "train" not in self._datasets:
            # building a model from the built-in config needs no generated images
            return builtin_class_names(self._builtin_params())
        ds = self.det_dataset("train") or self.det_dataset("val")
        if ds is None:
            raise ConfigError("no det data configured: set data.train_ann (or data.root for VOC)")
        return list(ds.class_names)

    @property
    def num_classes(self) -> int:
        return self.cfg.data.num_classes or len(self.class_names)

    def build_dataset(self, split: str) -> Dataset | None:
        ds = self.det_dataset(split)
        if ds is None:
            return None
        d = self.cfg.data
        transforms = build_transforms(d.train_transforms if split == "train" else d.val_transforms)
        samples = RecordSamples(ds, with_masks=True) if self.needs_masks else RecordsDataset(ds)
        built = TransformDataset(samples, transforms)
        built.det_ratios = [r.width / max(r.height, 1) for r in ds.records]  # type: ignore[attr-defined]
        return built

    def sample_lengths(self, dataset: Dataset) -> Sequence[int] | None:
        """With ``data.aspect_ratio_grouping``: each image's aspect-ratio bin, which the
        engine's sampler sorts windows of ``bucket`` batches by (batches of one bin)."""
        ratios = getattr(dataset, "det_ratios", None)
        if not self.bucket or ratios is None:
            return None
        return aspect_ratio_groups(ratios)

    def collate_fn(self, split: str) -> Callable[[list[Any]], Any]:
        d = self.cfg.data
        return DetCollate(d.batch_transforms if split == "train" else [], stride=d.pad_stride)

    # -- model ----------------------------------------------------------------------------
    def build_detector(self) -> nn.Module:
        _register_models()
        spec = dict(self.cfg.model)
        if "type" not in spec:
            raise ConfigError("model.type is required (e.g. yolov3_tiny, retinanet_tiny)")
        if "num_classes" in spec:  # the builder gets it from the data: two values would clash
            raise ConfigError(
                "model.num_classes: set data.num_classes instead (the class count comes from "
                "the data)"
            )
        return MODELS.build(spec, num_classes=self.num_classes)

    def build_model(self) -> nn.Module:
        return DetTrainModel(self.build_detector())

    def evaluate(self, model: nn.Module, loader: Iterable[Any], device: torch.device) -> dict:
        ds = self.det_dataset("val")
        assert ds is not None
        det = model.det if hasattr(model, "det") else model
        masks: dict[int, list[dict[str, Any]]] | None = {} if self.needs_masks else None
        found = _detections_in_pixels(det, loader, device, masks)
        category_ids = list(ds.category_ids) or list(range(1, len(ds.class_names) + 1))
        detections: list[dict[str, Any]] = []
        segm: list[dict[str, Any]] = []
        for image_id, (boxes, scores, labels) in found.items():
            found_here = to_coco_detections(image_id, boxes, scores, labels, category_ids)
            detections += found_here
            if masks is not None and image_id in masks:
                segm += [
                    {**d, "segmentation": rle}
                    for d, rle in zip(found_here, masks[image_id], strict=True)
                ]
        pr: dict[str, np.ndarray] = {}
        result = coco_evaluate(
            ds.to_coco(), detections, classwise=True, class_names=ds.class_names, pr_out=pr
        )
        result["detections"] = len(detections)
        self._last_eval = (ds, found, pr, result)  # for eval_pictures
        if masks is not None:
            mask_result = coco_evaluate(ds.to_coco(mask_area=True), segm, iou_type="segm")
            result.update({new: mask_result[old] for old, new in SEGM_KEYS.items()})
        if self.cfg.eval_metric == "voc":
            result.update(self._voc_metrics(ds, found))
        return result

    def eval_pictures(self, out_dir: Path) -> list[Path]:
        """``pr_curves.png`` (COCO precision-recall at IoU 0.5 per class),
        ``per_class_ap.png`` and ``confusion_matrix.png`` (boxes scoring >= 0.25 matched at
        IoU 0.5, background as the last class) of the last evaluation."""
        from e2ekit.core.plots import bars_png, confusion_png, pr_curves_png
        from e2ekit.det.metrics import box_confusion_matrix

        last = getattr(self, "_last_eval", None)
        if last is None:
            return []
        ds, found, pr, result = last
        names = list(ds.class_names)
        paths = []
        if pr:
            curves = {n: pr["precision"][:, k] for k, n in enumerate(names)}
            title = f"precision-recall at IoU 0.5 (AP50 {result['AP50']:.4f})"
            paths.append(pr_curves_png(pr["recall"], curves, out_dir / "pr_curves.png", title))
        title = f"AP@[.5:.95] per class (mAP {result['mAP']:.4f})"
        paths.append(bars_png(result["per_class_ap"], out_dir / "per_class_ap.png", title, "AP"))
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
        dets = [found.get(r.image_id, empty) for r in ds.records]
        crowd = [np.asarray(r.iscrowd, bool) for r in ds.records]  # ignored, as COCO does
        matrix = box_confusion_matrix(
            [r.boxes[~c] for r, c in zip(ds.records, crowd, strict=True)],
            [r.labels[~c] for r, c in zip(ds.records, crowd, strict=True)],
            [d[0] for d in dets],
            [d[1] for d in dets],
            [d[2] for d in dets],
            len(names),
        )
        title = "boxes (score >= 0.25, IoU >= 0.5): true vs predicted"
        paths.append(
            confusion_png(matrix, [*names, "background"], out_dir / "confusion_matrix.png", title)
        )
        return paths

    def _voc_metrics(
        self, ds: DetDataset, found: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> dict[str, Any]:
        """VOC mAP of the val records; crowd regions count as difficult (neither a hit nor a
        miss), as COCO ignores detections on them."""
        e = self.cfg.eval
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
        dets = [found.get(r.image_id, empty) for r in ds.records]
        voc = voc_evaluate(
            gt_boxes=[r.boxes for r in ds.records],
            gt_labels=[r.labels for r in ds.records],
            gt_difficult=[np.asarray(r.difficult, bool) | r.iscrowd for r in ds.records],
            det_boxes=[d[0] for d in dets],
            det_scores=[d[1] for d in dets],
            det_labels=[d[2] for d in dets],
            num_classes=len(ds.class_names),
            iou_thresh=e.voc_iou,
            metric=e.voc_metric,
        )
        per_class = dict(zip(ds.class_names, voc["per_class_ap"], strict=True))
        return {"voc_mAP": voc["mAP"], "voc_per_class_ap": per_class}

    # -- deployment -----------------------------------------------------------------------
    def export_spec(self, model: nn.Module) -> ExportSpec:
        from e2ekit.det.export import det_export_spec

        det = model.det if hasattr(model, "det") else model
        ds = self.det_dataset("val") or self.det_dataset("train")
        images = [read_image(r.file) for r in ds.records[:3]] if ds is not None else []
        return det_export_spec(det, self.cfg, self.class_names, images)

    def calibration_inputs(self, n: int) -> list[dict[str, np.ndarray]] | None:
        """``n`` train (else val) images spread over the set, resized and normalised as the
        export expects: int8 activation ranges come from real pictures, not noise, and not
        from the val images the int8 model is then scored on."""
        from e2ekit.det.export import preprocess_info
        from e2ekit.det.runner import preprocess

        ds = self.det_dataset("train") or self.det_dataset("val")
        if ds is None or not ds.records:
            return None
        info = preprocess_info(self.cfg)
        picks = np.linspace(0, len(ds.records) - 1, min(n, len(ds.records))).round().astype(int)
        return [
            {"image": preprocess(read_image(ds.records[i].file), info).numpy()}
            for i in sorted(set(picks.tolist()))
        ]
