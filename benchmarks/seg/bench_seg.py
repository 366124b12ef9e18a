"""Seg training and inference throughput: e2ekit vs plain PyTorch vs PaddleSeg 2.8 (CPU).

Why: the seg kit claims PaddleSeg's models and workflow in PyTorch. This measures, in one
run, on the same machine and thread count, what a user gets from each way of training and
serving the same networks (U-Net, DeepLabV3+ ResNet-50 at output stride 8):

- ours: the network from the registry, trained by the engine itself (``Trainer._micro_step``
  + ``_optimizer_step`` on a ``SegTask`` model: SegModel + our loss head, AdamW or SGD from
  the config, AMP off on CPU), NCHW and ``train.channels_last`` both timed; served through
  the kit's export path (``task.export_spec`` -> ``export_onnx`` -> ``Predictor`` on
  onnxruntime fp32; int8 from ``quantize_int8`` when it is faster and agrees on argmax).
- plain: the same ``nn.Module`` in a textbook loop (NCHW, ``model(x)``, ``F.cross_entropy``,
  ``opt.step()``, ``loss.item()``) and eager ``torch.inference_mode()`` inference.
- paddle: ``paddleseg.models.UNet`` / ``DeepLabV3P(ResNet50_vd)`` trained in dygraph as
  PaddleSeg's trainer does, served through ``paddle.inference`` with oneDNN
  (``enable_mkldnn``, ``set_cpu_math_library_num_threads``), in its own venv
  (``_paddle_env.py``) and process (``_paddle_worker.py``).

Method: random data of fixed shape (batch 4 for training, 4 classes). Every variant gets an
untimed warm-up, then timed blocks of every variant alternate, the order rotating every
repeat, so drifting machine speed hits all alike. Throughput is the median block; a ratio is
the median of per-repeat ratios. Nothing is asserted. ``--explore`` times extra training
variants of our step (fused/foreach AdamW, channels_last input, loss head, oneDNN off).

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "core"))

from _alternate import (  # noqa: E402
    Block,
    WorkerClient,
    calibrate,
    load_warning,
    log,
    ratio,
    summarize,
)
from _alternate import alternate as _alternate  # noqa: E402
from _alternate import timed as _timed  # noqa: E402
from _paddle_env import DEFAULT_VENV, ensure_venv  # noqa: E402

from e2ekit.core.engine.amp import cpu_has_bf16  # noqa: E402

NETS: dict[str, dict[str, Any]] = {
    "unet": {"type": "unet"},
    "deeplabv3p": {"type": "deeplabv3p", "backbone": {"type": "resnet50", "output_stride": 8}},
    "deeplabv3p_os16": {
        "type": "deeplabv3p",
        "backbone": {"type": "resnet50", "output_stride": 16},
    },
}
OPTIM = {
    # base_shapes.yaml (adamw) and deeplabv3p_resnet50.yaml (sgd) settings.
    "adamw": {"type": "adamw", "lr": 0.002, "weight_decay": 0.01},
    "sgd": {"type": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0004},
}
NUM_CLASSES = 4


def alternate(blocks: dict[str, Block], iters: dict[str, int], args: argparse.Namespace):
    """The shared alternation with this script's --repeats and --pause-s."""
    return _alternate(blocks, iters, args.repeats, args.pause_s)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="unet,deeplabv3p", help=f"comma list of {list(NETS)}")
    p.add_argument("--sizes", default="256", help="comma list of square input sizes")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks per variant")
    p.add_argument("--threads", type=int, default=2, help="torch, onnxruntime and paddle")
    p.add_argument("--batch", type=int, default=4, help="training batch size")
    p.add_argument("--infer-batches", default="1,4")
    p.add_argument("--optim", choices=sorted(OPTIM), default="adamw")
    p.add_argument("--train-block-s", type=float, default=2.0, help="target s per train block")
    p.add_argument("--infer-block-s", type=float, default=1.5, help="target s per infer block")
    p.add_argument("--pause-s", type=float, default=0.3, help="idle gap between blocks")
    p.add_argument("--skip-paddle", action="store_true")
    p.add_argument("--paddle-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument(
        "--paddle-train-mkldnn",
        action="store_true",
        help="FLAGS_use_mkldnn in paddle dygraph training (PaddleSeg's trainer leaves it off)",
    )
    p.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="also time our step with train.amp=bf16 (auto: when the CPU has native bf16)",
    )
    p.add_argument("--no-int8", action="store_true", help="skip the int8 probe")
    p.add_argument("--no-infer", action="store_true", help="training only")
    p.add_argument("--explore", action="store_true", help="extra variants of our train step")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


# --------------------------------------------------------------------------- ours / plain


def make_trainer(
    net: str, channels_last: bool, args: argparse.Namespace, out_dir: Path, amp: str = "off"
):
    """A real engine Trainer for a SegTask; only its step methods are used (no fit())."""
    from e2ekit.core.config import validate
    from e2ekit.core.engine.trainer import Trainer
    from e2ekit.seg.config import SegConfig
    from e2ekit.seg.task import SegTask

    tree = {
        "seed": args.seed,
        "device": "cpu",
        "model": NETS[net],
        "data": {
            # Built-in data only so the Trainer can be constructed; timed steps get fixed
            # random batches of the benchmark's shape.
            "num_classes": NUM_CLASSES,
            "validate_labels": False,
            "builtin": {"num_train": args.batch, "num_val": 2, "size": [32, 32]},
            "train_transforms": [{"type": "Normalize"}],
        },
        "train": {
            "batch_size": args.batch,
            "max_steps": 1_000_000,
            "amp": amp,
            "channels_last": channels_last,
            "tensorboard": False,
            "progress": False,
        },
        "optim": OPTIM[args.optim],
    }
    task = SegTask(validate(tree, SegConfig))
    trainer = Trainer(task, out_dir)
    trainer.model.train()
    return trainer


def engine_step(trainer: Any, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        trainer._micro_step(batch)  # forward, loss dict, finite check, backward, float(loss)
        trainer._optimizer_step()  # (clip), step, zero_grad(set_to_none), scheduler

    return step


def plain_step(
    net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad()
        loss = F.cross_entropy(net(x)[0], y)
        loss.backward()
        opt.step()
        loss.item()

    return step


def plain_optimizer(net: nn.Module, args: argparse.Namespace, **kw: Any) -> torch.optim.Optimizer:
    o = OPTIM[args.optim]
    if args.optim == "sgd":
        return torch.optim.SGD(
            net.parameters(), o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"], **kw
        )
    return torch.optim.AdamW(net.parameters(), o["lr"], weight_decay=o["weight_decay"], **kw)


def torch_block(step: Callable[[], None]) -> Block:
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            step()
        return time.perf_counter() - start

    return run


def explore_variants(
    base: Any, net: str, batch: dict, args: argparse.Namespace, tmp: Path
) -> dict[str, Callable[[], None]]:
    """Extra training variants: what changes our step's speed (all channels_last engine)."""
    state = base.model.state_dict()

    def engine(tag: str, optim_flag: str | None = None, plain_ce: bool = False) -> Any:
        tr = make_trainer(net, True, args, tmp / f"explore_{tag}")
        tr.model.load_state_dict(state)
        if optim_flag:  # same param groups and hyper-parameters, foreach/fused kernels
            groups = [dict(g) for g in tr.optimizer.param_groups]
            for g in groups:
                g.pop("foreach", None), g.pop("fused", None)
            lr = tr.optimizer.defaults["lr"]
            tr.optimizer = type(tr.optimizer)(groups, lr=lr, **{optim_flag: True})
            tr.scheduler = torch.optim.lr_scheduler.LambdaLR(tr.optimizer, lambda s: 1.0)
        if plain_ce:  # F.cross_entropy in place of our CrossEntropyLoss head

            def head(outs: list[torch.Tensor], label: torch.Tensor) -> dict[str, torch.Tensor]:
                return {"loss_ce": F.cross_entropy(outs[0], label, ignore_index=255)}

            tr.model._loss_heads.clear()
            object.__setattr__(tr.model, "_loss_factory", lambda n: head)
        return tr

    cl_batch = {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}
    plain = copy.deepcopy(base.model.net).to(memory_format=torch.channels_last).train()
    return {
        "engine_cl_foreach_optim": engine_step(engine("foreach", "foreach"), batch),
        "engine_cl_fused_optim": engine_step(engine("fused", "fused"), batch),
        "engine_cl_input_cl": engine_step(engine("incl"), cl_batch),
        "engine_cl_F_cross_entropy": engine_step(engine("ce", plain_ce=True), batch),
        "engine_cl_fused_F_cross_entropy": engine_step(
            engine("fused_ce", "fused", plain_ce=True), batch
        ),
        "plain_cl": plain_step(plain, plain_optimizer(plain, args), batch["image"], batch["label"]),
        "engine_nchw_amp_bf16": engine_step(
            make_trainer(net, False, args, tmp / "explore_bf16_nchw", amp="bf16"), batch
        ),
    }


# --------------------------------------------------------------------------- one case


def bench_train(
    net: str, size: int, args: argparse.Namespace, tmp: Path, paddle: WorkerClient | None
) -> tuple[dict[str, Any], Any]:
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, size, size, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (args.batch, size, size), generator=gen)
    batch = {"image": x, "label": y}

    log(
        f"[{net} {size}] building: ours NCHW, ours channels_last, plain"
        + (", paddle" if paddle else "")
    )
    trainers = {
        "ours_nchw": make_trainer(net, False, args, tmp / f"{net}_{size}_nchw"),
        "ours_channels_last": make_trainer(net, True, args, tmp / f"{net}_{size}_cl"),
    }
    plain = copy.deepcopy(trainers["ours_nchw"].model.net).train()
    steps = {k: engine_step(tr, batch) for k, tr in trainers.items()}
    if args.bf16 == "on" or (args.bf16 == "auto" and cpu_has_bf16()):
        # Not "ours" (numerics differ from the fp32 peers): what train.amp=bf16 would give.
        tr = make_trainer(net, True, args, tmp / f"{net}_{size}_bf16", amp="bf16")
        steps["ours_amp_bf16"] = engine_step(tr, batch)
    steps["plain"] = plain_step(plain, plain_optimizer(plain, args), x, y)
    if args.explore:
        steps.update(explore_variants(trainers["ours_channels_last"], net, batch, args, tmp))
    blocks = {k: torch_block(s) for k, s in steps.items()}
    warm: dict[str, float] = {}
    out: dict[str, Any] = {"params": sum(p.numel() for p in plain.parameters())}
    if paddle is not None:
        setup = paddle.call(
            "setup",
            net=net,
            size=size,
            batch=args.batch,
            classes=NUM_CLASSES,
            optim=args.optim,
            lr=OPTIM[args.optim]["lr"],
            weight_decay=OPTIM[args.optim]["weight_decay"],
            seed=args.seed,
            train_mkldnn=args.paddle_train_mkldnn,
        )
        out["paddle_params"] = setup["params"]
        blocks["paddle"] = lambda n: paddle.call("train", steps=n)["seconds"]
        warm["paddle"] = blocks["paddle"](1)  # setup ran the first step; this is the second
    for name, run in blocks.items():
        if name not in warm:
            run(1)
            warm[name] = run(1)
        log(f"[{net} {size}] warm train step {name}: {warm[name]:.2f} s")
    iters = calibrate(blocks, warm, args.train_block_s)
    per_iter = alternate(blocks, iters, args)
    rates = summarize(per_iter, args.batch)
    best = max(("ours_nchw", "ours_channels_last"), key=lambda k: rates[k])
    per_iter["ours"] = per_iter[best]
    rates["ours"] = rates[best]
    out.update(
        train_img_s=rates,
        ours_train_variant=best,
        train_ours_vs_paddle=ratio(per_iter, "ours", "paddle"),
        train_ours_vs_plain=ratio(per_iter, "ours", "plain"),
        train_channels_last_vs_nchw=ratio(per_iter, "ours_channels_last", "ours_nchw"),
    )
    if "ours_amp_bf16" in per_iter:
        out["train_bf16_vs_ours"] = ratio(per_iter, "ours_amp_bf16", "ours")
        out["train_bf16_vs_paddle"] = ratio(per_iter, "ours_amp_bf16", "paddle")
    if args.explore:
        base = "ours_channels_last"
        out["explore_vs_ours_channels_last"] = {
            k: ratio(per_iter, k, base) for k in per_iter if k not in (base, "ours")
        }
    log(f"[{net} {size}] train img/s {rates}")
    return out, trainers[best]


def bench_infer(
    net: str,
    size: int,
    trainer: Any,
    args: argparse.Namespace,
    tmp: Path,
    paddle: WorkerClient | None,
) -> dict[str, Any]:
    from e2ekit.core.export import quantize_int8
    from e2ekit.core.infer import Predictor

    cfg = trainer.task.cfg
    cfg.export.input_size = (size, size)
    spec = trainer.task.export_spec(trainer.model)
    export_dir = tmp / f"export_{net}_{size}"
    log(f"[{net} {size}] export_onnx (kit export spec, output {cfg.export.output})")
    start = time.perf_counter()
    report = spec.export(export_dir, opset=cfg.export.opset, atol=cfg.export.atol)
    out: dict[str, Any] = {
        "export_s": round(time.perf_counter() - start, 1),
        "parity_max_abs_diff": report["onnx"]["max_abs_diff"],
    }
    fp32 = Predictor(export_dir, num_threads=args.threads)
    out_name = fp32.output_names[0]
    # Plain eager: the same module (SegInference: softmax) + argmax, NCHW weights.
    eager = copy.deepcopy(spec.module).to(memory_format=torch.contiguous_format).eval()
    batches = [int(b) for b in args.infer_batches.split(",")]
    rng = np.random.default_rng(args.seed + 1)
    inputs = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in batches}

    def eager_run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return eager(x).argmax(1).numpy()

    def ort_block(pred: Any, b: int) -> Block:
        feeds = {"image": inputs[b]}
        return lambda n: _timed(lambda: pred.run(feeds), n)

    def eager_block(b: int) -> Block:
        xt = torch.from_numpy(inputs[b])
        return lambda n: _timed(lambda: eager_run(xt), n)

    int8_pred = None
    if not args.no_int8:
        # Static QDQ int8 (real int8 conv kernels on VNNI), calibrated on val images;
        # dynamic ConvInteger is several times slower than fp32 here.
        start = time.perf_counter()
        calib = trainer.task.calibration_inputs(16)
        q = quantize_int8(export_dir, mode="static", calibration_inputs=calib)
        int8_pred = Predictor(export_dir, num_threads=args.threads, precision="int8")
        x1 = {"image": inputs[batches[0]]}
        ref, got = fp32.run(x1)[out_name], int8_pred.run(x1)[out_name]
        t8, t32 = _timed(lambda: int8_pred.run(x1), 1), _timed(lambda: fp32.run(x1), 1)
        mismatch = float((ref != got).mean())
        faster = t8 < t32
        out["int8"] = {
            "quantize_s": round(time.perf_counter() - start, 1),
            "mode": "static",
            "op_types": q.get("op_types"),
            "argmax_mismatch_vs_fp32": round(mismatch, 5),
            "report_mismatch": q.get("mismatch_fraction"),
            "probe_img_s": round(batches[0] / t8, 4),
            "probe_fp32_img_s": round(batches[0] / t32, 4),
            "timed": faster and mismatch < 0.01,
        }
        if not out["int8"]["timed"]:
            log(f"[{net} {size}] int8 not timed further: {out['int8']}")
            int8_pred = None

    if paddle is not None:
        info = paddle.call("export", batches=batches, seed=args.seed)
        out["paddle_infer"] = {k: info.get(k) for k in ("mode", "errors", "export_s")}
        log(f"[{net} {size}] paddle inference mode: {info['mode']} {info['errors'] or ''}")

    out["infer_img_s"], out["ratios"] = {}, {}
    for b in batches:
        blocks: dict[str, Block] = {"ours_ort_fp32": ort_block(fp32, b)}
        if int8_pred is not None:
            blocks["ours_ort_int8"] = ort_block(int8_pred, b)
        blocks["plain_eager"] = eager_block(b)
        if paddle is not None:
            blocks["paddle"] = lambda n, b=b: paddle.call("infer", batch=b, calls=n)["seconds"]
        iters = calibrate(blocks, {}, args.infer_block_s)
        per_iter = alternate(blocks, iters, args)
        rates = summarize(per_iter, b)
        best = max((k for k in rates if k.startswith("ours_")), key=lambda k: rates[k])
        per_iter["ours"] = per_iter[best]
        out["infer_img_s"][str(b)] = rates
        out["ratios"][str(b)] = {
            "ours_backend": best,
            "ours_vs_paddle": ratio(per_iter, "ours", "paddle"),
            "ours_vs_plain": ratio(per_iter, "ours", "plain_eager"),
        }
        log(f"[{net} {size}] infer batch {b} img/s {rates}")
    # Same function check on the timed input: ONNX argmax vs eager argmax.
    x = inputs[batches[-1]]
    out["ort_vs_eager_argmax_mismatch"] = float(
        (fp32.run({"image": x})[out_name] != eager_run(torch.from_numpy(x))).mean()
    )
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
    sizes = [int(s) for s in args.sizes.split(",")]
    import onnxruntime

    env: dict[str, Any] = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "loadavg_1m_start": load_warning("start"),
    }
    settings: dict[str, Any] = {
        "threads": args.threads,
        "train_batch": args.batch,
        "num_classes": NUM_CLASSES,
        "optim": OPTIM[args.optim],
        "repeats": args.repeats,
        "amp": "off (ours_amp_bf16: train.amp=bf16, channels_last)",
        "cpu_native_bf16": cpu_has_bf16(),
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "ort": "Predictor: intra_op threads, inter_op 1, ORT_ENABLE_ALL",
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="e2ekit-bench-seg-") as td:
        tmp = Path(td)
        os.environ["E2EKIT_DATA"] = str(tmp / "data")  # the Trainer's builtin data stays here
        paddle = None
        if not args.skip_paddle:
            python = ensure_venv(args.paddle_venv, log=log)
            paddle = WorkerClient(
                python, HERE / "_paddle_worker.py", args.threads, tmp / "paddle_worker.log"
            )
            settings["paddle"] = {
                "train": "dygraph, F.cross_entropy(int64 labels, axis=1), float(loss) per step",
                "train_FLAGS_use_mkldnn": args.paddle_train_mkldnn,
                "infer": "paddle.inference, enable_mkldnn, set_mkldnn_cache_capacity(10), "
                "set_cpu_math_library_num_threads, one predictor per batch size",
            }
        try:
            for net in nets:
                for size in sizes:
                    log(f"== {net} {size}x{size} ==")
                    case, trainer = bench_train(net, size, args, tmp, paddle)
                    if not args.no_infer:
                        case.update(bench_infer(net, size, trainer, args, tmp, paddle))
                        b1 = case["ratios"].get("1") or next(iter(case["ratios"].values()))
                        case["infer_ours_vs_paddle"] = b1["ours_vs_paddle"]
                        case["infer_ours_vs_plain"] = b1["ours_vs_plain"]
                    if paddle is not None:
                        paddle.call("close")
                    results.setdefault(net, {})[str(size)] = case
                    del trainer
        finally:
            if paddle is not None:
                paddle.close()
    if paddle is not None:
        env["paddle"] = "paddlepaddle 3.3.1, paddleseg 2.8.0"
    env["loadavg_1m_end"] = load_warning("end")
    out = {
        "benchmark": "seg",
        "env": env,
        "settings": settings,
        "results": results,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
