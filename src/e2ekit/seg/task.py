"""Seg task: backbone + network + losses composed by config, mIoU evaluation, export."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from e2ekit.core.engine import ExportSpec, Task, to_device
from e2ekit.core.errors import ConfigError
from e2ekit.core.logs import log
from e2ekit.seg import backbones as _backbones  # noqa: F401  (registers backbones)
from e2ekit.seg import models as _models  # noqa: F401  (registers networks)
from e2ekit.seg.config import BUILTIN_PREFIX, SegConfig
from e2ekit.seg.data import datasets as _datasets  # noqa: F401  (registers readers)
from e2ekit.seg.data.datasets import OriginalLabels
from e2ekit.seg.data.synthetic import builtin_root
from e2ekit.seg.data.transforms import build_transforms
from e2ekit.seg.data.validate import validate_labels
from e2ekit.seg.losses import build_seg_losses
from e2ekit.seg.metrics import ConfusionMatrix
from e2ekit.seg.registry import DATASETS, MODELS
from e2ekit.seg.test_time import infer_logits

__all__ = ["SegInference", "SegModel", "SegTask", "build_inference_module", "pad_collate"]


class SegModel(nn.Module):
    """Network + losses: a dict of loss terms in training, main-head logits in eval.

    The loss head is built on the first training step, once the number of outputs
    (main + auxiliary heads) is known, and is kept out of the state dict so that
    checkpoints hold only the network.
    """

    def __init__(self, net: nn.Module, loss_factory: Callable[[int], Any]) -> None:
        super().__init__()
        self.net = net
        object.__setattr__(self, "_loss_factory", loss_factory)
        object.__setattr__(self, "_loss_heads", {})

    def loss_head(self, num_outputs: int) -> Any:
        if num_outputs not in self._loss_heads:
            self._loss_heads[num_outputs] = self._loss_factory(num_outputs)
        return self._loss_heads[num_outputs]

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        outputs = self.net(batch["image"])
        if self.training:
            return self.loss_head(len(outputs))(outputs, batch["label"])
        return outputs[0]


class SegInference(nn.Module):
    """Export wrapper: normalized image (B,3,H,W) in, class probabilities (B,K,H,W) out.

    With ``softmax=False`` it returns logits: an argmax export needs no softmax
    (argmax(softmax(z)) == argmax(z)), and a channel-axis Softmax was ~45% of the
    onnxruntime time of a small network.
    """

    def __init__(self, net: nn.Module, softmax: bool = True) -> None:
        super().__init__()
        self.net = net
        self.softmax = softmax

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.net(image)[0]
        return logits.softmax(dim=1) if self.softmax else logits


def build_network(model_cfg: dict[str, Any], num_classes: int) -> nn.Module:
    return MODELS.build(model_cfg, num_classes=num_classes)


def build_inference_module(
    model: dict[str, Any], num_classes: int, softmax: bool = True
) -> nn.Module:
    """Rebuilds the export wrapper for the Predictor's torch backend."""
    return SegInference(build_network(model, num_classes), softmax).eval()


def pad_collate(ignore_index: int) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Stack samples, padding images with 0 and labels with ignore_index to a common size."""

    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        h = max(s["image"].shape[-2] for s in samples)
        w = max(s["image"].shape[-1] for s in samples)
        images, labels = [], []
        for s in samples:
            img, lab = torch.as_tensor(s["image"]), torch.as_tensor(s["label"])
            dh, dw = h - img.shape[-2], w - img.shape[-1]
            if dh or dw:
                img = F.pad(img, (0, dw, 0, dh))
                lab = F.pad(lab, (0, dw, 0, dh), value=ignore_index)
            images.append(img)
            labels.append(lab)
        batch: dict[str, Any] = {"image": torch.stack(images), "label": torch.stack(labels).long()}
        if any("label_orig" in s for s in samples):  # evaluation at the original size
            batch["label_orig"] = [s.get("label_orig", s["label"]) for s in samples]
            batch["size"] = [tuple(s["image"].shape[-2:]) for s in samples]  # before padding
        return batch

    return collate


class SegTask(Task):
    kit = "seg"
    schema = SegConfig
    default_metric = "mIoU"
    metric_mode = "max"
    cfg: SegConfig

    def __init__(self, cfg: SegConfig) -> None:
        super().__init__(cfg)
        self._validated: set[str] = set()

    # -- data ---------------------------------------------------------------------------
    def data_root(self) -> Path:
        d = self.cfg.data
        if d.root.startswith(BUILTIN_PREFIX):
            name = d.root[len(BUILTIN_PREFIX) :]
            if name != "shapes":
                raise ConfigError(
                    f"data.root: unknown built-in dataset '{name}'; use builtin:shapes"
                )
            b = d.builtin
            params = {
                "num_train": b.num_train,
                "num_val": b.num_val,
                "size": list(b.size),
                "num_classes": d.num_classes,
                "seed": b.seed,
                "hue_overlap": b.hue_overlap,
            }
            return builtin_root(params)
        root = Path(d.root)
        if not root.is_dir():
            raise ConfigError(f"data.root: folder not found: {root}")
        return root

    def build_dataset(self, split: str) -> Dataset | None:
        d = self.cfg.data
        transforms = build_transforms(d.train_transforms if split == "train" else d.val_transforms)
        common = {
            "num_classes": d.num_classes,
            "transforms": transforms,
            "ignore_index": d.ignore_index,
            "binary_255_to_1": d.binary_255_to_1,
            "label_map": d.label_map,
        }
        if d.type == "file_list":
            list_file = {"train": d.train_list, "val": d.val_list, "test": d.test_list}.get(split)
            if not list_file:
                return None
            # a relative list is looked up under data.root first, then from the working
            # directory (the dataset does both and names both when neither has it)
            root = self.data_root()
            spec = {"type": "file_list", "root": str(root), "list_file": str(list_file), **common}
        else:
            name = {"train": d.train_split, "val": d.val_split}.get(split)
            if name is None:
                return None
            spec = {"type": d.type, "root": str(self.data_root()), "split": name, **common}
        ds = DATASETS.build(spec)
        if d.validate_labels and split not in self._validated:
            stats = validate_labels(ds, d.num_classes, d.ignore_index, d.binary_255_to_1)
            log.info(
                "%s labels ok: %d files, class pixel share %s",
                split,
                stats["num_files"],
                [round(x, 3) for x in stats["class_share"]],
            )
            self._validated.add(split)
        if split != "train" and hasattr(ds, "load_label"):
            ds = OriginalLabels(ds)  # mIoU on the original label pixels
        return ds

    def collate_fn(self, split: str) -> Callable[[list[Any]], Any]:
        return pad_collate(self.cfg.data.ignore_index)

    # -- model ----------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        d = self.cfg.data
        net = build_network(self.cfg.model, d.num_classes)
        types, coef = self.cfg.loss.types, self.cfg.loss.coef

        def factory(num_outputs: int) -> Any:
            # Unset coef: 1.0 for the main head and 0.4 for each auxiliary head (PSPNet's).
            coefs = coef if coef is not None else [1.0] + [0.4] * (num_outputs - 1)
            return build_seg_losses(types, coefs, d.ignore_index)

        return SegModel(net, factory)

    def evaluate(self, model: nn.Module, loader: Iterable[Any], device: torch.device) -> dict:
        d = self.cfg.data
        cm = ConfusionMatrix(d.num_classes, d.ignore_index, device=device)
        net = model.net if hasattr(model, "net") else model
        channels_last = self.cfg.train.channels_last

        def logits_fn(x: torch.Tensor) -> torch.Tensor:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return net(x)[0]

        for batch in loader:
            batch = to_device(batch, device)
            logits = infer_logits(logits_fn, batch["image"], self.cfg.test)
            if "label_orig" not in batch:
                cm.update(logits.argmax(dim=1), batch["label"])
                continue
            # the val transforms resized: score at each image's own size, as PaddleSeg does
            for i, (label, (h, w)) in enumerate(
                zip(batch["label_orig"], batch["size"], strict=True)
            ):
                own = logits[i : i + 1, :, :h, :w]  # this image's part of the padded batch
                if tuple(own.shape[-2:]) != tuple(label.shape[-2:]):
                    own = F.interpolate(own, size=label.shape[-2:], mode="bilinear")
                cm.update(own.argmax(dim=1), label[None])
        result = cm.compute()
        self._last_eval = (cm.mat.detach().cpu().numpy(), result)  # for eval_pictures
        return result

    def eval_pictures(self, out_dir: Path) -> list[Path]:
        """``confusion_matrix.png`` (pixels, row-normalised) and ``per_class_iou.png``."""
        from e2ekit.core.plots import bars_png, confusion_png

        last = getattr(self, "_last_eval", None)
        if last is None:
            return []
        matrix, result = last
        names = self.class_names()
        iou = dict(zip(names, result["per_class_iou"], strict=True))
        miou = result["mIoU"]
        return [
            confusion_png(
                matrix, names, out_dir / "confusion_matrix.png", "pixels: true vs predicted"
            ),
            bars_png(iou, out_dir / "per_class_iou.png", f"IoU per class (mIoU {miou:.4f})", "IoU"),
        ]

    # -- deployment --------------------------------------------------------------------------
    def class_names(self) -> list[str]:
        d = self.cfg.data
        return d.class_names or [f"class_{i}" for i in range(d.num_classes)]

    def calibration_inputs(self, n: int) -> list[dict[str, np.ndarray]] | None:
        """``n`` preprocessed val images spread over the split, each a batch of 1 at its own
        size (the export's height/width axes are dynamic); None without a val split."""
        ds = self.build_dataset("val")
        if ds is None or len(ds) == 0 or n < 1:
            return None
        picks = np.unique(np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int))
        return [
            {"image": torch.as_tensor(ds[int(i)]["image"]).float()[None].numpy()} for i in picks
        ]

    def export_spec(self, model: nn.Module) -> ExportSpec:
        d, e = self.cfg.data, self.cfg.export
        net = model.net if hasattr(model, "net") else model
        w, h = e.input_size
        gen = torch.Generator().manual_seed(0)
        argmax = e.output == "argmax"
        out_name = "label_map" if argmax else "probs"
        scores = "logits" if argmax else "probs"
        return ExportSpec(
            module=SegInference(net, softmax=not argmax).eval(),
            example_inputs={"image": torch.randn(1, 3, h, w, generator=gen)},
            parity_inputs=[{"image": torch.randn(2, 3, h // 2 + 32, w + 32, generator=gen)}],
            output_names=[scores],
            dynamic_axes={
                "image": {0: "batch", 2: "height", 3: "width"},
                scores: {0: "batch", 2: "height", 3: "width"},
                **({"label_map": {0: "batch", 1: "height", 2: "width"}} if argmax else {}),
            },
            argmax={"logits": "label_map"} if argmax else None,
            deploy={
                "kit": "seg",
                "num_classes": d.num_classes,
                "class_names": self.class_names(),
                "ignore_index": d.ignore_index,
                "output": e.output,
                "output_name": out_name,
                "preprocess": {"transforms": d.val_transforms},
                "test": self.cfg.test.model_dump(mode="json"),
            },
            torch_builder="e2ekit.seg.task:build_inference_module",
            builder_config={
                "model": dict(self.cfg.model),
                "num_classes": d.num_classes,
                "softmax": not argmax,
            },
        )
