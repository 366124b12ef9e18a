"""Det inference and training throughput: e2ekit vs PyTorch eager vs PaddleDetection 2.6 (CPU).

Why: the det kit claims PaddleDetection's detectors and deploy flow in PyTorch. This measures,
in one run, on the same machine and thread count, what a user gets from each way of serving
and training the same networks (YOLOv3-DarkNet53, RetinaNet ResNet-50-FPN, Faster R-CNN
ResNet-50-FPN, 80 classes):

- ours: the network from the det registry, exported by the kit's path (``det_export_spec`` ->
  ``ExportSpec.export``: ONNX with NMS inside, batch 1) and run by ``Predictor`` on
  onnxruntime fp32 (graph optimizations fuse conv+bn+activation) and static QDQ int8
  (``quantize_int8``: int8 convolutions on VNNI). Training: the kit's Detector in train mode
  (losses dict, sum, backward, SGD-momentum step), as the engine does.
- eager: the same ``nn.Module`` called under ``torch.inference_mode()`` (the kit's eval
  forward: network, decode, NMS), i.e. a plain PyTorch port of the architecture.
- torchvision (RetinaNet, Faster R-CNN): ``retinanet_resnet50_fpn(num_classes=80, ...)`` /
  ``fasterrcnn_resnet50_fpn(num_classes=81, ...)`` (background counted) with ``min_size=S,
  max_size=S``, eager, the model a PyTorch user would pick; Faster R-CNN is also trained.
- paddle: PaddleDetection 2.6's ``YOLOv3`` / ``RetinaNet`` / ``FasterRCNN`` built from its
  configs, served by
  ``paddle.inference`` with oneDNN (deploy/python/infer.py's CPU setting), trained in dygraph
  as its Trainer does; in its own venv (``../core/_paddle_env.py``) and process
  (``_paddle_worker.py``).

Random weights emit random boxes, and NMS over thousands of them would dominate the time, so
every model's score outputs are neutralised (weights 0, bias a low prior) in all frameworks
alike: the timings cover the network, box decoding and an NMS on no candidates. Faster
R-CNN: the box classifier is neutralised (weights 0, background bias high, foreground low)
and the RPN's box deltas are zeroed, so every framework's proposals are its anchors (random
deltas blow them up to the whole image and NMS leaves a handful); the RPN settings are the
same everywhere (``FRCNN_RPN``) and the proposal count each feeds its box head is reported.

int8 is only worth serving where accuracy holds: ``--ap-runs RUN_DIR,...`` takes trained det
runs (e.g. ``configs/det/yolov3_tiny_shapes.yaml``), exports each through ``e2ekit det export
--quantize`` (fp32 + static int8 as the kit makes it), and reports COCO AP of fp32 vs int8 on
the run's val split (same runner, same images) and their img/s.

Method: fixed random inputs, batch 1 for inference. Every variant gets an untimed warm-up,
then timed blocks of the variants alternate, the order rotating every repeat. Throughput is
the median block; a ratio is the median of per-repeat ratios. Nothing is asserted.

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "core"))

from _alternate import (  # noqa: E402
    Block,
    WorkerClient,
    alternate,
    calibrate,
    load_warning,
    log,
    ratio,
    summarize,
    timed,
)
from _paddle_env import DEFAULT_VENV, ensure_venv  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from _bench_common import cpu_flags, cpu_model  # noqa: E402

NUM_CLASSES = 80
NETS: dict[str, dict[str, Any]] = {
    "yolov3": {"model": {"type": "yolov3_darknet53"}, "torchvision": False},
    "retinanet": {"model": {"type": "retinanet_r50_fpn"}, "torchvision": True},
    "faster_rcnn": {"model": {"type": "faster_rcnn_r50_fpn"}, "torchvision": True},
}
YOLO_LOW, RETINA_PRIOR = -5.0, float(np.log(0.01 / 0.99))
FG_LOW, BG_HIGH = -10.0, 10.0  # box classifier: softmax foreground ~5e-5, under 0.05
# the RPN settings ours and torchvision's defaults share (PaddleDetection's in the worker)
FRCNN_RPN = {
    "pre_nms_top_n_test": 1000,
    "post_nms_top_n_test": 1000,
    "nms_thresh": 0.7,
    "pre_nms_top_n_train": 2000,
    "post_nms_top_n_train": 2000,
}
FRCNN_RPN_RULE = (
    "per level: top pre_nms_top_n by objectness; NMS 0.7 per level (batched_nms over all "
    "levels, level as class); best post_nms_top_n of all levels"
)
# Faster R-CNN goals: inference over paddle and torchvision eager; int8 counts where AP holds
GOALS = {"faster_rcnn": {"vs_paddle": 1.5, "vs_torchvision_eager": 1.2}}
INT8_MAP_DROP_OK = 0.01
INT8_MIN_FP32_AP50 = 0.5  # an untrained run's AP is ~0 in both precisions: proves nothing


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="yolov3,retinanet", help=f"comma list of {list(NETS)}")
    p.add_argument("--sizes", default="416,608", help="comma list of square inference sizes")
    p.add_argument("--train-sizes", default="416", help="training sizes ('' for none)")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed blocks per variant")
    p.add_argument("--threads", type=int, default=2, help="torch, onnxruntime and paddle")
    p.add_argument("--infer-block-s", type=float, default=3.0, help="target s per infer block")
    p.add_argument("--pause-s", type=float, default=0.3, help="idle gap between blocks")
    p.add_argument("--skip-paddle", action="store_true")
    p.add_argument("--paddle-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--no-int8", action="store_true", help="skip the int8 variant")
    p.add_argument("--ap-runs", default="", help="comma list of trained det run folders")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


# --------------------------------------------------------------------------- models


@torch.no_grad()
def neutralise(convs: list[nn.Conv2d], bias: float) -> None:
    """Score outputs of random weights -> a constant low score: no candidate boxes."""
    for conv in convs:
        conv.weight.zero_()
        conv.bias.fill_(bias)


# Two-stage training as PaddleDetection's faster_rcnn_r50_fpn_1x_coco (and every user starting
# from an ImageNet backbone) runs it: frozen BN everywhere, stem and first stage frozen.
FRCNN_TRAIN = {"trainable_layers": 3, "frozen_bn": True}


def build_ours(net: str, train: bool = False) -> nn.Module:
    """``train``: the two-stage net with :data:`FRCNN_TRAIN` (inference builds the default)."""
    from e2ekit.det.registry import MODELS
    from e2ekit.det.task import _register_models

    _register_models()
    model = dict(NETS[net]["model"])
    if net == "faster_rcnn":
        model |= {f"rpn_{k}": v for k, v in FRCNN_RPN.items()}
        if train:
            model |= FRCNN_TRAIN
    det = MODELS.build(model, num_classes=NUM_CLASSES)
    if net == "yolov3":
        neutralise(list(det.heads), YOLO_LOW)
    elif net == "faster_rcnn":
        neutralise_two_stage(det)
    else:
        neutralise([det.head.classification_head.cls_logits], RETINA_PRIOR)
    return det


@torch.no_grad()
def neutralise_two_stage(model: nn.Module) -> None:
    """Faster R-CNN (ours and torchvision's share the module names): box classifier weights 0,
    background (column 0) bias high, foreground low; RPN box deltas 0 (proposals = anchors)."""
    cls = model.roi_heads.box_predictor.cls_score
    cls.weight.zero_()
    cls.bias.fill_(FG_LOW)
    cls.bias[0] = BG_HIGH
    delta = model.rpn.head.bbox_pred
    delta.weight.zero_()
    delta.bias.zero_()


def build_torchvision(net: str, size: int, train: bool = False) -> nn.Module:
    """``train``: Faster R-CNN as ``fasterrcnn_resnet50_fpn(weights_backbone=...)`` builds it
    (FrozenBatchNorm2d, 3 trainable stages: :data:`FRCNN_TRAIN`), without the download."""
    from torchvision.models import resnet50
    from torchvision.models.detection import (
        FasterRCNN,
        fasterrcnn_resnet50_fpn,
        retinanet_resnet50_fpn,
    )
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    if net == "faster_rcnn":
        common = {
            "num_classes": NUM_CLASSES + 1,  # torchvision counts the background class
            "min_size": size,
            "max_size": size,
            **{f"rpn_{k}": v for k, v in FRCNN_RPN.items()},
        }
        if train:
            body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
            layers = FRCNN_TRAIN["trainable_layers"]
            model = FasterRCNN(_resnet_fpn_extractor(body, layers), **common)
        else:
            model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **common)
        neutralise_two_stage(model)
        return model.eval()
    model = retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=size, max_size=size
    )
    neutralise([model.head.classification_head.cls_logits], RETINA_PRIOR)
    return model.eval()


def count_proposals(model: nn.Module, run: Any) -> int:
    """Proposals the RPN hands the box head in one call of ``run`` (RoI pooler's input)."""
    seen: list[int] = []
    hook = model.roi_heads.box_roi_pool.register_forward_hook(
        lambda _m, args, _out: seen.append(sum(len(p) for p in args[1]))
    )
    try:
        run()
    finally:
        hook.remove()
    return seen[0]


def random_targets(rng: np.random.Generator, batch: int, size: int) -> list[dict[str, Any]]:
    """Per image 1-8 boxes (xyxy pixels) and class ids, like the paddle worker's."""
    out = []
    for _ in range(batch):
        n = int(rng.integers(1, 9))
        wh = rng.uniform(0.05, 0.5, (n, 2)) * size
        xy = rng.uniform(0, 1, (n, 2)) * (size - wh)
        boxes = torch.as_tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)
        out.append({"boxes": boxes, "labels": torch.as_tensor(rng.integers(0, NUM_CLASSES, n))})
    return out


# --------------------------------------------------------------------------- training


def bench_train(
    net: str, size: int, det: nn.Module, args: argparse.Namespace, paddle: WorkerClient | None
) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    b = args.train_batch
    if net == "faster_rcnn":  # the training recipe (FRCNN_TRAIN), as paddle's config trains
        det = build_ours(net, train=True)
    images = torch.from_numpy(rng.standard_normal((b, 3, size, size), dtype=np.float32))
    targets = random_targets(rng, b, size)
    det.train()
    # the settings PaddleDetection's configs use (momentum 0.9, L2 5e-4); lr does not matter
    opt = torch.optim.SGD(det.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        losses = det(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss)

    blocks: dict[str, Block] = {"ours": lambda n: timed(step, n)}
    out: dict[str, Any] = {"batch": b}
    if net == "faster_rcnn":  # torchvision's own model, trained the same way
        tv = build_torchvision(net, size, train=True).train()
        tv_images = list(images)
        tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        tv_opt = torch.optim.SGD(tv.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

        def tv_step() -> None:
            losses = tv(tv_images, tv_targets)
            loss = sum(losses.values())
            tv_opt.zero_grad(set_to_none=True)
            loss.backward()
            tv_opt.step()
            float(loss.detach())

        tv_step()  # warm-up
        blocks["torchvision"] = lambda n: timed(tv_step, n)
    if paddle is not None:
        try:
            paddle.call("train_setup", size=size, batch=b)
            blocks["paddle"] = lambda n: paddle.call("train", steps=n)["seconds"]
        except RuntimeError as e:  # reported; ours is still measured
            out["paddle_error"] = str(e)[-400:]
            log(f"[{net} {size}] paddle training failed, measuring without it: {e}")
    step()  # warm-up
    iters = {k: 1 for k in blocks}  # one step is seconds long already
    per_iter = alternate(blocks, iters, args.repeats, args.pause_s)
    out["img_s"] = summarize(per_iter, b)
    out["ours_vs_paddle"] = ratio(per_iter, "ours", "paddle")
    if "torchvision" in blocks:
        out["ours_vs_torchvision"] = ratio(per_iter, "ours", "torchvision")
    log(f"[{net} {size}] train img/s {out['img_s']}")
    det.eval()
    return out


# --------------------------------------------------------------------------- inference


def bench_infer(
    net: str,
    size: int,
    det: nn.Module,
    args: argparse.Namespace,
    tmp: Path,
    paddle: WorkerClient | None,
) -> dict[str, Any]:
    from e2ekit.core.export import quantize_int8
    from e2ekit.core.infer import Predictor
    from e2ekit.det.config import DetConfig
    from e2ekit.det.export import det_export_spec

    det.eval()
    cfg = DetConfig(model=dict(NETS[net]["model"]), export={"input_size": size})
    names = [f"class{i}" for i in range(NUM_CLASSES)]
    spec = det_export_spec(det, cfg, names)
    export_dir = tmp / f"export_{net}_{size}"
    start = time.perf_counter()
    report = spec.export(export_dir, opset=cfg.export.opset, atol=cfg.export.atol)
    out: dict[str, Any] = {
        "export_s": round(time.perf_counter() - start, 1),
        "parity_max_abs_diff": report["onnx"]["max_abs_diff"],
    }
    log(f"[{net} {size}] exported in {out['export_s']} s")
    rng = np.random.default_rng(args.seed + 1)
    x = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    xt = torch.from_numpy(x)
    feeds = {"image": x}
    fp32 = Predictor(export_dir, num_threads=args.threads)

    def eager_run() -> Any:
        with torch.inference_mode():
            return det(xt)

    blocks: dict[str, Block] = {
        "ours_ort_fp32": lambda n: timed(lambda: fp32.run(feeds), n),
        "eager": lambda n: timed(eager_run, n),
    }
    if not args.no_int8:
        # The det kit's int8 (static QDQ, output convs as the model chooses), calibrated on a
        # random input: this times the kernels; ap_check measures accuracy on trained models.
        start = time.perf_counter()
        calib = [{"image": rng.standard_normal((1, 3, size, size), dtype=np.float32)}]
        try:
            q = quantize_int8(
                export_dir,
                mode="static",
                calibration_inputs=calib,
                keep_final_float=spec.int8_keep_final_float,
            )
            int8 = Predictor(export_dir, num_threads=args.threads, precision="int8")
            int8.run(feeds)  # raises here if the int8 graph does not run
        except Exception as e:  # reported in the JSON; fp32 and the peers are still measured
            out["int8"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            log(f"[{net} {size}] int8 failed: {e}")
        else:
            out["int8"] = {"quantize_s": round(time.perf_counter() - start, 1), "mode": q["mode"]}
            blocks["ours_ort_int8"] = lambda n: timed(lambda: int8.run(feeds), n)
    if NETS[net]["torchvision"]:
        tv = build_torchvision(net, size)
        img = [xt[0]]

        def tv_run() -> Any:
            with torch.inference_mode():
                return tv(img)

        blocks["torchvision_eager"] = lambda n: timed(tv_run, n)
    if net == "faster_rcnn":
        # the box head's work: ours (eager and ONNX share weights and input) and torchvision
        out["proposals"] = {"ours": count_proposals(det, eager_run)}
        out["proposals"]["torchvision_eager"] = count_proposals(tv, tv_run)
    if paddle is not None:
        info = paddle.call("export", size=size, seed=args.seed)
        keys = ("mode", "mode_s", "graph", "errors", "export_s")
        out["paddle_infer"] = {k: info.get(k) for k in keys}
        if "proposals" in info:
            out["proposals"]["paddle"] = info["proposals"]
        blocks["paddle"] = lambda n: paddle.call("infer", calls=n)["seconds"]
    iters = calibrate(blocks, {}, args.infer_block_s)
    per_iter = alternate(blocks, iters, args.repeats, args.pause_s)
    out["img_s"] = summarize(per_iter, 1)
    r: dict[str, Any] = {}
    for ours in ("ours_ort_fp32", "ours_ort_int8"):
        for ref in ("paddle", "eager", "torchvision_eager"):
            value = ratio(per_iter, ours, ref)
            if value is not None:
                r[f"{ours}_vs_{ref}"] = value
    for ref in ("paddle", "torchvision_eager"):
        value = ratio(per_iter, "eager", ref)
        if value is not None:
            r[f"eager_vs_{ref}"] = value
    out["ratios"] = r
    log(f"[{net} {size}] infer img/s {out['img_s']}")
    log(f"[{net} {size}] ratios {r}")
    return out


# --------------------------------------------------------------------------- int8 AP


def ap_check(run_dir: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """COCO AP of a trained run's export, fp32 vs static int8, on its val split."""
    from e2ekit.core.config import load_config
    from e2ekit.core.imageio import read_image
    from e2ekit.core.infer import Predictor
    from e2ekit.det.config import DetConfig
    from e2ekit.det.metrics import coco_evaluate, to_coco_detections
    from e2ekit.det.runner import DetRunner
    from e2ekit.det.task import DetTask

    export_dir = tmp / f"ap_{run_dir.name}"
    cmd = [
        sys.executable,
        "-m",
        "e2ekit",
        "det",
        "export",
        "-c",
        str(run_dir / "config.yaml"),
        "--weights",
        str(run_dir),
        "--quantize",
        # a run's config.yaml pins every key as it was at training time: ask for the kit's
        # current int8 recipe explicitly (static; output convs as the model chooses)
        "-o",
        "export.quantize_mode=static",
        "-o",
        "export.quantize_keep_final_float=null",
        "--out",
        str(export_dir),
    ]
    log(f"[ap {run_dir}] {' '.join(cmd[2:])}")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    cfg = load_config(run_dir / "config.yaml", DetConfig)
    ds = DetTask(cfg).det_dataset("val")
    assert ds is not None
    images = [read_image(r.file) for r in ds.records]
    category_ids = list(ds.category_ids) or list(range(1, len(ds.class_names) + 1))
    out: dict[str, Any] = {"model": cfg.model.get("type"), "val_images": len(images)}
    for precision in ("fp32", "int8"):
        runner = DetRunner(Predictor(export_dir, num_threads=args.threads, precision=precision))
        runner.detect(images[0])  # warm-up
        detections: list[dict[str, Any]] = []
        start = time.perf_counter()
        for record, image in zip(ds.records, images, strict=True):
            d = runner.detect(image)
            detections += to_coco_detections(
                int(record.image_id),
                torch.as_tensor(d["boxes"]),
                torch.as_tensor(d["scores"]),
                torch.as_tensor(d["labels"]),
                category_ids,
            )
        seconds = time.perf_counter() - start
        metrics = coco_evaluate(ds.to_coco(), detections)
        out[precision] = {
            "mAP": round(float(metrics["mAP"]), 4),
            "AP50": round(float(metrics["AP50"]), 4),
            "img_s": round(len(images) / seconds, 2),
        }
    out["AP50_drop"] = round(out["fp32"]["AP50"] - out["int8"]["AP50"], 4)
    out["mAP_drop"] = round(out["fp32"]["mAP"] - out["int8"]["mAP"], 4)
    out["int8_vs_fp32_img_s"] = round(out["int8"]["img_s"] / out["fp32"]["img_s"], 3)
    log(f"[ap {run_dir}] {out}")
    return out


# --------------------------------------------------------------------------- goals


def goals_of(net: str, results: dict[str, Any]) -> dict[str, Any]:
    """Per inference size: our best variant's ratio against each reference and whether it
    meets the goal. int8 is eligible only where --ap-runs measured trained runs of this net
    (fp32 AP50 >= INT8_MIN_FP32_AP50) with an mAP drop within INT8_MAP_DROP_OK; otherwise
    fp32 alone counts."""
    prefix = str(NETS[net]["model"]["type"]).split("_r50")[0]  # faster_rcnn_r50_fpn -> ...
    checks = [
        r for r in results.get("int8_ap", {}).values() if str(r.get("model", "")).startswith(prefix)
    ]
    int8_ok = bool(checks) and all(
        r["mAP_drop"] <= INT8_MAP_DROP_OK and r["fp32"]["AP50"] >= INT8_MIN_FP32_AP50
        for r in checks
    )
    variants = ["ours_ort_fp32", *(["ours_ort_int8"] if int8_ok else [])]
    out: dict[str, Any] = {
        "int8_eligible": int8_ok,
        "int8_ap_runs": [
            {"model": r.get("model"), "fp32_AP50": r["fp32"]["AP50"], "mAP_drop": r["mAP_drop"]}
            for r in checks
        ],
        "targets": GOALS[net],
    }
    for size, case in results.get(net, {}).get("infer", {}).items():
        row: dict[str, Any] = {}
        for ref, target in GOALS[net].items():
            ref_name = ref.removeprefix("vs_")
            found = {v: case["ratios"].get(f"{v}_vs_{ref_name}") for v in variants}
            found = {v: r for v, r in found.items() if r is not None}
            if not found:
                row[ref] = {"met": None, "why": f"no {ref_name} measurement"}
                continue
            best = max(found, key=lambda v: found[v])
            row[ref] = {"variant": best, "ratio": found[best], "met": found[best] >= target}
        out[size] = row
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown:
        raise SystemExit(f"unknown --nets {unknown}; choose from {list(NETS)}")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    train_sizes = [int(s) for s in args.train_sizes.split(",") if s.strip()]
    import onnxruntime

    env: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "loadavg_1m_start": load_warning("start"),
    }
    settings: dict[str, Any] = {
        "threads": args.threads,
        "num_classes": NUM_CLASSES,
        "infer_batch": 1,
        "train_batch": args.train_batch,
        "repeats": args.repeats,
        "score_outputs": "neutralised in every framework (no candidate boxes)",
        "ort": "Predictor: intra_op threads, inter_op 1, ORT_ENABLE_ALL; NMS in the graph",
        "int8": "the det export default: quantize_int8 static QDQ, per-channel int8 weights, "
        "uint8 activations; output convs float for YOLOv3 (int8_keep_final_float), int8 else",
    }
    if "faster_rcnn" in nets:
        settings["faster_rcnn"] = {
            "rpn": {"ours": FRCNN_RPN, "torchvision": FRCNN_RPN, "rule": FRCNN_RPN_RULE},
            "rpn_paddle": "see results.faster_rcnn.paddle_settings",
            "neutralised": "box classifier weights 0, background bias "
            f"{BG_HIGH}, foreground {FG_LOW} (softmax foreground ~5e-5 < score 0.05); RPN box "
            "deltas 0 (proposals = anchors); RPN objectness left random",
            "box_head": "RoIAlign 7x7 sampling 2 on P2-P5, TwoMLPHead 1024, 81-way classifier, "
            "class-specific deltas; score 0.05, NMS 0.5, 100 detections",
            "ours_graph": "ONNX at batch 1 (the NMS graph of a two-stage model is traced at "
            "batch 1); ours emits every (proposal, class) row to one NonMaxSuppression",
            "int8_goal_rule": "int8 counts for a goal only if every --ap-runs faster_rcnn run "
            f"has fp32 AP50 >= {INT8_MIN_FP32_AP50} (trained) and an int8 mAP drop <= "
            f"{INT8_MAP_DROP_OK}; else the fp32 ratio",
        }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="e2ekit-bench-det-") as td:
        tmp = Path(td)
        python = None if args.skip_paddle else ensure_venv(args.paddle_venv, log=log)
        if python is not None:
            settings["paddle"] = {
                "infer": "paddle.inference (legacy IR export, as ppdet 2.6 needs), enable_mkldnn, "
                "set_mkldnn_cache_capacity(10), set_cpu_math_library_num_threads",
                **(
                    {
                        "infer_faster_rcnn": "PIR export (FasterRCNNGraph); the fastest of the "
                        "oneDNN settings that run on it (paddle_infer.mode, mode_s)"
                    }
                    if "faster_rcnn" in nets
                    else {}
                ),
                "train": "dygraph, Momentum 0.9 + L2 5e-4, loss.backward, float(loss) per step",
            }
        for net in nets:
            log(f"== {net} ==")
            det = build_ours(net)
            paddle = None
            if python is not None:
                paddle = WorkerClient(
                    python, HERE / "_paddle_worker.py", args.threads, tmp / f"paddle_{net}.log"
                )
            try:
                case: dict[str, Any] = {"params": sum(p.numel() for p in det.parameters())}
                if paddle is not None:
                    try:
                        info = paddle.call("setup", net=net, seed=args.seed)
                        case["paddle_params"] = info["params"]
                        if "settings" in info:
                            case["paddle_settings"] = info["settings"]
                    except RuntimeError as e:  # reported; ours is still measured
                        case["paddle_error"] = str(e)[:300]
                        log(f"[{net}] paddle setup failed, measuring without it: {e}")
                        paddle.close()
                        paddle = None
                for size in train_sizes:
                    case.setdefault("train", {})[str(size)] = bench_train(
                        net, size, det, args, paddle
                    )
                for size in sizes:
                    log(f"-- {net} {size}x{size} inference --")
                    case.setdefault("infer", {})[str(size)] = bench_infer(
                        net, size, det, args, tmp, paddle
                    )
            finally:
                if paddle is not None:
                    paddle.close()
            results[net] = case
            del det
        ap_runs = [Path(r) for r in args.ap_runs.split(",") if r.strip()]
        if ap_runs and not args.no_int8:
            results["int8_ap"] = {r.name: ap_check(r, args, tmp) for r in ap_runs}
    if python is not None:
        env["paddle"] = "paddlepaddle 3.3.1, paddledet 2.6.0"
    env["loadavg_1m_end"] = load_warning("end")
    summary = {}
    for net in nets:
        for size, case in results[net].get("infer", {}).items():
            for k, v in case["ratios"].items():
                summary[f"{net}_{size}_{k}"] = v
        if net in GOALS:  # the two-stage net's training ratios too
            for size, case in results[net].get("train", {}).items():
                for k in ("ours_vs_torchvision", "ours_vs_paddle"):
                    if case.get(k) is not None:
                        summary[f"{net}_train_{size}_{k}"] = case[k]
    goals = {net: goals_of(net, results) for net in nets if net in GOALS}
    out = {
        "benchmark": "det",
        "env": env,
        "settings": settings,
        "summary": summary,
        **({"goals": goals} if goals else {}),
        "results": results,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
