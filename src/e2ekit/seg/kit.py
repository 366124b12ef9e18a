"""Seg kit wiring: task factory, predict over files/folders/lists, ``POST /predict``, and
the seg-only verbs ``convert`` (polygon annotations -> label PNGs) and ``split`` (list files
for a plain folder). Pre- and post-processing for predict and serve live in ``seg.runner``.
"""

from __future__ import annotations

import base64
import json
from argparse import ArgumentParser, Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from e2ekit.core.errors import E2EError
from e2ekit.core.fileio import atomic_open
from e2ekit.core.imageio import check_image_files, decode_image_field, encode_png, list_inputs
from e2ekit.core.kit import Kit, Verb
from e2ekit.core.progress import progress
from e2ekit.core.serve import Endpoint
from e2ekit.seg.config import SegConfig
from e2ekit.seg.runner import (
    MAX_IMAGE_KEY,
    SegRunner,
    class_counts,
    iterate_predictions,
    resize_back,
    rle_encode,
    write_outputs,
)
from e2ekit.seg.task import SegTask


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

    image: str = Field(..., description="base64-encoded image file (PNG, JPEG, ...)")
    format: Literal["png", "rle", "both"] = Field("png", description="mask encoding to return")


def cmd_convert(kit: Kit[SegConfig], args: Namespace) -> dict[str, Any]:
    """``seg convert --from labelme|via|coco|cvat --input PATH --out DIR``."""
    from e2ekit.seg.data.convert import convert

    if not args.input or not args.out:
        raise E2EError("convert needs --input (the annotations) and --out (the folder to write)")
    return convert(
        args.source,
        args.input,
        args.out,
        label_list=args.label_list,
        images=args.images,
        attribute=args.attribute,
        default_class=args.default_class,
    )


def cmd_split(kit: Kit[SegConfig], args: Namespace) -> dict[str, Any]:
    """``seg split --input DIR``: DIR/images + DIR/labels -> seeded train/val(/test).txt."""
    from e2ekit.core.split import (
        IMAGE_SUFFIXES,
        files_by_stem,
        pair_by_stem,
        refuse_existing_split,
        split_items,
        write_list_files,
    )

    if not args.input:
        raise E2EError("split needs --input DIR (holding images/ and labels/)")
    root = Path(args.input).expanduser()
    images = files_by_stem(root / "images", IMAGE_SUFFIXES)
    labels = files_by_stem(root / "labels", (".png",))
    pairs = pair_by_stem(images, labels, "image(s)", "label(s)")
    parts = split_items(pairs, args.val, args.test, args.seed)
    out = Path(args.out).expanduser() if args.out else root
    refuse_existing_split(out, ".txt", args.overwrite)
    counts = write_list_files(root, pairs, parts, out)
    return {**counts, "seed": args.seed, "output": str(out)}


def _convert_flags(p: ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, help="labelme, via, coco or cvat")
    p.add_argument(
        "--input", help="labelme folder or file, VIA json, COCO instances json, or CVAT 1.1 xml"
    )
    p.add_argument(
        "--label-list",
        help="class names, one a line: fixes class ids (background first, added if absent)",
    )
    p.add_argument(
        "--images", help="folder of the images (default: beside the annotations, or images/)"
    )
    p.add_argument("--attribute", help="via: the region attribute that holds the class")
    p.add_argument(
        "--default-class", help="via: the class of regions without attributes (single class)"
    )


def _split_flags(p: ArgumentParser) -> None:
    p.add_argument("--input", help="folder holding images/ and labels/")
    p.add_argument("--val", type=float, default=0.2, help="fraction for val.txt (0.2)")
    p.add_argument("--test", type=float, default=0.0, help="fraction for test.txt (0: none)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (0)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier split's lists")


class SegKit(Kit[SegConfig]):
    name = "seg"
    schema = SegConfig
    description = "image segmentation (PaddleSeg-style)"

    def verbs(self) -> dict[str, Verb]:
        return {
            **super().verbs(),
            "convert": Verb(
                cmd_convert,
                "labelme, VIA, COCO or CVAT polygons -> images/, labels/ PNGs, train.txt",
                _convert_flags,
                out_help="the dataset folder to write",
            ),
            "split": Verb(
                cmd_split,
                "seeded train/val(/test).txt for a folder of images/ and labels/",
                _split_flags,
                out_help="where the list files go (default: --input)",
            ),
        }

    def make_task(self, cfg: SegConfig) -> SegTask:
        return SegTask(cfg)

    def predict(
        self, predictor: Any, input_path: Path, out_dir: Path, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        runner = SegRunner(predictor)
        files = list_inputs(input_path)
        check_image_files(files, runner.test.max_image_pixels, MAX_IMAGE_KEY)
        out_dir.mkdir(parents=True, exist_ok=True)
        ignore = predictor.deploy.get("ignore_index")
        counts = np.zeros(runner.num_classes, dtype=np.int64)
        with atomic_open(out_dir / "predictions.jsonl") as fh:
            wrap = lambda xs: progress(xs, desc="predict", unit="img")  # noqa: E731
            for path, image, label in iterate_predictions(runner, files, wrap):
                write_outputs(out_dir, path.stem, image, label, ignore)
                present = class_counts(label, runner.num_classes)
                counts += present
                fh.write(
                    json.dumps(
                        {
                            "image": str(path),
                            "label": f"label/{path.stem}.png",
                            "classes": np.flatnonzero(present).tolist(),
                        }
                    )
                    + "\n"
                )
        return {
            "images": len(files),
            "output": str(out_dir),
            "pixel_share": (counts / max(counts.sum(), 1)).round(4).tolist(),
        }

    def endpoints(self, predictor: Any) -> list[Endpoint]:
        runner = SegRunner(predictor)

        def to_items(req: PredictRequest) -> list[dict[str, Any]]:
            image = decode_image_field(req.image)
            if runner.is_tiled(image):  # preprocessed window by window in run_batch
                return [{"image": image}]
            h, w = image.shape[-2:]
            return [{"x": runner.preprocess(image), "size": (h, w)}]

        def run_batch(items: list[dict[str, Any]]) -> list[np.ndarray]:
            results: list[np.ndarray | None] = [None] * len(items)
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, item in enumerate(items):  # same-size images share one model call
                if "image" in item:
                    results[i] = runner.predict_tiled(item["image"])
                    continue
                groups.setdefault(tuple(item["x"].shape), []).append(i)
            for idx in groups.values():
                labels = runner.label_maps(torch.stack([items[i]["x"] for i in idx]))
                for i, lab in zip(idx, labels, strict=True):
                    results[i] = resize_back(lab, items[i]["size"])
            return results  # type: ignore[return-value]

        def to_response(req: PredictRequest, results: list[np.ndarray]) -> dict[str, Any]:
            label = results[0]
            body: dict[str, Any] = {
                "height": int(label.shape[0]),
                "width": int(label.shape[1]),
                "classes": np.unique(label).tolist(),
            }
            if req.format in ("png", "both"):
                body["mask_png"] = base64.b64encode(encode_png(label.astype(np.uint8))).decode()
            if req.format in ("rle", "both"):
                body["rle"] = rle_encode(label)
            return body

        return [Endpoint("/predict", PredictRequest, to_items, run_batch, to_response)]

    def demo_input(self, cfg: SegConfig, folder: Path) -> Path:
        task = SegTask(cfg)
        root = task.data_root()
        first = (root / (cfg.data.val_list or "val.txt")).read_text().split()[0]
        return root / first

    def demo_request(self, deploy: dict[str, Any]) -> dict[str, Any]:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
        return {"image": base64.b64encode(encode_png(image)).decode(), "format": "rle"}


KIT = SegKit()
__all__ = ["KIT", "SegKit"]
