"""PaddleSeg 2.8 side of bench_seg.py; runs inside the paddle venv, never imports torch.

A long-lived worker so the parent can alternate paddle blocks with its own: it reads one JSON
command per line on stdin and answers one JSON line each. Timing is taken here, around the
work only. Paddle and oneDNN print to stdout from C++: ``../core/_worker_io.py`` keeps the
answers on a private copy of the original stdout.

Commands (``cmd`` key):
- ``setup``: net, size, batch, classes, optim, lr, weight_decay, seed, train_mkldnn -> builds
  the network and optimizer, runs one untimed training step; answers parameters and seconds.
- ``train``: steps -> seconds for that many training steps (PaddleSeg trainer's step).
- ``export``: batches -> ``paddle.jit.to_static`` + ``paddle.jit.save`` (argmax head, as
  PaddleSeg's export.py), one ``paddle.inference`` predictor per batch size with oneDNN
  (``enable_mkldnn``, ``set_cpu_math_library_num_threads``); answers the mode that ran.
- ``infer``: batch, calls -> seconds for that many predictor runs on a fixed input.
- ``close``: drop the model; ``quit``: exit.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "core"))
# first, before paddle loads: it moves fd 1 away from the answer stream
serve = importlib.import_module("_worker_io").serve

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from paddle.inference import Config, create_predictor  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
paddle.set_device("cpu")
paddle.base.core.set_num_threads(THREADS)


class ArgmaxHead(paddle.nn.Layer):
    """What PaddleSeg's export.py appends (``output_op: argmax``): class ids (B,1,H,W)."""

    def __init__(self, net: paddle.nn.Layer) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return paddle.argmax(self.net(x)[0], axis=1, keepdim=True, dtype="int32")


def build_net(name: str, classes: int) -> paddle.nn.Layer:
    from paddleseg.models import DeepLabV3P, UNet
    from paddleseg.models.backbones import ResNet50_vd

    if name == "unet":
        return UNet(num_classes=classes)
    # PaddleSeg's deeplabv3p_resnet50_os8 configs: ResNet50_vd, multi_grid 1-2-4, ASPP rates
    # 1/12/24/36 at stride 8 (1/6/12/18 at stride 16), low-level features from stage 0.
    stride = 16 if name == "deeplabv3p_os16" else 8
    backbone = ResNet50_vd(output_stride=stride, multi_grid=(1, 2, 4))
    rates = (1, 12, 24, 36) if stride == 8 else (1, 6, 12, 18)
    return DeepLabV3P(classes, backbone, backbone_indices=(0, 3), aspp_ratios=rates)


class Worker:
    def __init__(self) -> None:
        self.net: Any = None
        self.predictors: dict[int, Any] = {}
        self.inputs: dict[int, np.ndarray] = {}
        self.tmp = tempfile.TemporaryDirectory(prefix="e2ekit-bench-paddle-")

    def setup(self, c: dict[str, Any]) -> dict[str, Any]:
        self.close({})
        paddle.seed(c["seed"])
        paddle.set_flags({"FLAGS_use_mkldnn": bool(c.get("train_mkldnn", False))})
        self.size, self.classes = c["size"], c["classes"]
        self.net = build_net(c["net"], self.classes)
        params = self.net.parameters()
        if c["optim"] == "sgd":
            self.opt = paddle.optimizer.Momentum(
                c["lr"], momentum=0.9, parameters=params, weight_decay=c["weight_decay"]
            )
        else:
            self.opt = paddle.optimizer.AdamW(
                c["lr"], parameters=params, weight_decay=c["weight_decay"]
            )
        rng = np.random.default_rng(c["seed"])
        b, s = c["batch"], self.size
        self.x = paddle.to_tensor(rng.standard_normal((b, 3, s, s), dtype=np.float32))
        # int64 labels + functional cross entropy: paddleseg's CrossEntropyLoss fails a
        # step under paddle 3.3.1 (int64 vs float32 type promotion).
        self.y = paddle.to_tensor(rng.integers(0, self.classes, (b, s, s)).astype(np.int64))
        self.net.train()
        start = time.perf_counter()
        loss = self._step()
        return {
            "params": int(sum(int(np.prod(p.shape)) for p in params)),
            "warmup_step_s": time.perf_counter() - start,
            "loss": loss,
            "paddle": paddle.__version__,
        }

    def _step(self) -> float:
        # PaddleSeg core/train.py: logits_list = model(images); loss; backward; step;
        # model.clear_gradients(); avg_loss += float(loss) (a sync every step).
        logits = self.net(self.x)[0]
        loss = F.cross_entropy(logits, self.y, axis=1)
        loss.backward()
        self.opt.step()
        self.net.clear_gradients()
        return float(loss)

    def train(self, c: dict[str, Any]) -> dict[str, Any]:
        self.net.train()
        start = time.perf_counter()
        for _ in range(c["steps"]):
            self._step()
        return {"seconds": time.perf_counter() - start}

    def _predictor(self, path: str, mode: str) -> Any:
        cfg = Config(path + ".json", path + ".pdiparams")
        cfg.disable_gpu()
        cfg.disable_glog_info()
        cfg.set_cpu_math_library_num_threads(THREADS)
        if mode != "cpu":
            # PaddleSeg deploy/python/infer.py on CPU: cache capacity 10, enable_mkldnn.
            cfg.set_mkldnn_cache_capacity(10)
            cfg.enable_mkldnn()
        if mode == "mkldnn-fused-only":
            # Paddle#79749: under PIR the placement pass moves bilinear_interp (a double-array
            # 'scale' attribute) onto oneDNN, which 3.3.1 cannot run. Without it the oneDNN
            # fusion passes still run convolutions (conv+bn+act fused) on oneDNN.
            cfg.delete_pass("onednn_placement_pass")
        return create_predictor(cfg)

    @staticmethod
    def _run(pred: Any, x: np.ndarray) -> np.ndarray:
        inp = pred.get_input_handle(pred.get_input_names()[0])
        inp.reshape(list(x.shape))
        inp.copy_from_cpu(x)
        pred.run()
        return pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()

    def export(self, c: dict[str, Any]) -> dict[str, Any]:
        self.net.eval()
        head = ArgmaxHead(self.net)
        head.eval()
        s = self.size
        spec = [paddle.static.InputSpec([None, 3, s, s], "float32", "x")]
        path = os.path.join(self.tmp.name, f"model_{s}")
        start = time.perf_counter()
        paddle.jit.save(paddle.jit.to_static(head, input_spec=spec, full_graph=True), path)
        out: dict[str, Any] = {"export_s": time.perf_counter() - start, "errors": {}}
        rng = np.random.default_rng(c.get("seed", 0) + 1)
        self.inputs = {b: rng.standard_normal((b, 3, s, s), dtype=np.float32) for b in c["batches"]}
        with paddle.no_grad():
            ref = head(paddle.to_tensor(self.inputs[1])).numpy()
        self.predictors, self.mode = {}, "dygraph"
        for mode in ("mkldnn", "mkldnn-fused-only", "cpu"):
            try:
                preds = {b: self._predictor(path, mode) for b in c["batches"]}
                for b, p in preds.items():
                    got = self._run(p, self.inputs[b])  # warm-up; raises when a kernel fails
                    if b == 1:
                        out["argmax_match_vs_dygraph"] = float((got == ref).mean())
                self.predictors, self.mode = preds, mode
                break
            except Exception as e:  # a failed mode is reported, the next one is tried
                out["errors"][mode] = f"{type(e).__name__}: {str(e).splitlines()[0][:110]}"
        out["mode"] = self.mode
        self.head = head
        return out

    def infer(self, c: dict[str, Any]) -> dict[str, Any]:
        b, x = c["batch"], self.inputs[c["batch"]]
        if self.mode == "dygraph":
            xt = paddle.to_tensor(x)
            start = time.perf_counter()
            with paddle.no_grad():
                for _ in range(c["calls"]):
                    self.head(xt).numpy()
        else:
            pred = self.predictors[b]
            start = time.perf_counter()
            for _ in range(c["calls"]):
                self._run(pred, x)
        return {"seconds": time.perf_counter() - start}

    def close(self, c: dict[str, Any]) -> dict[str, Any]:
        self.net = self.opt = self.head = None
        self.predictors, self.inputs = {}, {}
        gc.collect()
        return {}


def main() -> None:
    worker = Worker()
    serve(worker)
    worker.tmp.cleanup()


if __name__ == "__main__":
    main()
