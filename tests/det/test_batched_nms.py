"""The det NMS export over a batch: padded per-image outputs equal to one-image runs (empty
images and padding rows included), onnxruntime at several batch sizes, a server and predict
that run a batch per model call, and exports of the earlier one-image layout still running."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "det" / "tiny.yaml")
# the one-image graph below traces torchvision's batched_nms, which calls torch.jit.script
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated:FutureWarning")
BOX_TOL, SCORE_TOL = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny convs on a busy 2-core box: one thread avoids spinning against the other
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class OneImageNMS(nn.Module):
    """The NMS graph det exported before the padded layout: one image per call, outputs
    ``boxes (M, 4)``, ``scores (M,)``, ``labels (M,)``."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        self.det = det

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from torchvision.ops import batched_nms

        d = self.det
        boxes, scores = d.forward_raw(image)
        anchor, label = torch.nonzero(scores[0] > d.score_thresh, as_tuple=True)
        cand = scores[0][anchor, label]
        cand_boxes = boxes[0][anchor]
        keep = batched_nms(cand_boxes, cand, label, d.nms_thresh)[: d.max_detections]
        return cand_boxes[keep], cand[keep], label[keep]


class Counting:
    """A predictor's stand-in that counts model calls and the batch size of each."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.deploy = inner.deploy
        self.output_names = inner.output_names
        self.batches: list[int] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(len(feeds["image"]))
        return self.inner.run(feeds)


@dataclass
class Exported:
    folder: Path  # padded NMS export
    old: Path  # the same detector in the one-image layout
    images: list[torch.Tensor]  # uint8 (3, H, W); images[0] is blank and finds nothing
    spec: Any  # the padded export's ExportSpec
    max_det: int
    counts: list[int]  # detections per image (all under max_det)
    cfg: Any


def _pick(det: nn.Module, info: dict, val: list[torch.Tensor]) -> tuple[list, list[int]]:
    """A blank image and the three val images scoring best, with the score threshold set in
    the widest gap between the blank's best score and theirs (so no score sits near it in
    either runtime) and max_detections one above the largest count, so the blank image finds
    nothing and every image has padding rows. Returns the images and their counts."""
    from e2ekit.det.export import classwise_nms
    from e2ekit.det.runner import preprocess

    blank = torch.zeros(3, 60, 80, dtype=torch.uint8)
    x = torch.cat([preprocess(im, info) for im in [blank, *val]])
    with torch.inference_mode():
        boxes, scores = det.forward_raw(x)
    best = scores.amax(dim=(1, 2))
    top = (best[1:].argsort(descending=True)[:3] + 1).tolist()
    low, high = float(best[0]), float(best[top].min())
    assert high > low * 1.001, f"the blank image should score below real ones: {best.tolist()}"
    pooled = scores[[0, *top]].flatten()
    inside = torch.cat([torch.tensor([low, high]), pooled[(pooled > low) & (pooled < high)]])
    edges = inside.double().sort().values
    gap = int((edges[1:] - edges[:-1]).argmax())
    det.score_thresh = float((edges[gap] + edges[gap + 1]) / 2)
    assert edges[gap + 1] - edges[gap] > 1e-4 * det.score_thresh, "no clear gap for a threshold"
    picked = [0, *top]
    sel = classwise_nms(
        boxes[picked], scores[picked].transpose(1, 2), 10**6, det.nms_thresh, det.score_thresh
    )
    counts = torch.bincount(sel[:, 0], minlength=4).tolist()
    assert counts[0] == 0 and min(counts[1:]) > 0, counts
    det.max_detections = max(counts) + 1
    return [blank, *(val[i - 1] for i in top)], counts


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    # one thread, as in the tests: the same training run on every machine, and no threads
    # spinning against each other on a small box
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _export(tmp_path_factory.mktemp("det_batch"))
    finally:
        torch.set_num_threads(threads)


def _export(root: Path) -> Exported:
    """Train the tiny detector a few steps, then export it in both NMS layouts."""
    from e2ekit.core.cli import main
    from e2ekit.core.config import load_config
    from e2ekit.core.engine.task import ExportSpec
    from e2ekit.core.imageio import read_image
    from e2ekit.core.verbs import _load_model
    from e2ekit.det.config import DetConfig
    from e2ekit.det.export import det_export_spec, preprocess_info
    from e2ekit.det.kit import KIT
    from e2ekit.det.runner import preprocess

    run = root / "run"
    # 8 steps at a higher rate: enough for the val shapes to outscore a blank image
    args = ["det", "train", "-c", TINY, "--out", str(run), "-o", "optim.lr=0.003"]
    assert main([*args, "-o", "train.max_steps=8", "-o", "train.eval_interval=8"]) == 0
    cfg = load_config(run / "config.yaml", DetConfig, [])
    task, model = _load_model(KIT, cfg, str(run))
    det = model.det
    info = preprocess_info(cfg)
    val = [read_image(r.file) for r in task.det_dataset("val").records]
    images, counts = _pick(det, info, val)
    spec = det_export_spec(det, cfg, task.class_names, images[1:])
    spec.export(root / "export", opset=17, atol=cfg.export.atol)

    old_deploy = {k: v for k, v in spec.deploy.items() if k not in ("nms_layout", "padding")}
    x = [preprocess(im, info) for im in images]
    ExportSpec(
        module=OneImageNMS(det).eval(),
        example_inputs={"image": x[1]},
        output_names=["boxes", "scores", "labels"],
        dynamic_axes={n: {0: "detections"} for n in ("boxes", "scores", "labels")},
        deploy=old_deploy,
        parity_inputs=[{"image": t} for t in x],
    ).export(root / "old", opset=17, atol=cfg.export.atol)
    return Exported(root / "export", root / "old", images, spec, det.max_detections, counts, cfg)


def _session(folder: Path) -> Any:
    from e2ekit.core.infer import make_session

    return make_session(folder / "model.onnx")


def _inputs(exported: Exported, picks: list[int]) -> np.ndarray:
    from e2ekit.det.runner import Preprocess

    prep = Preprocess(exported.spec.deploy["preprocess"])
    return np.stack([prep(exported.images[i]).numpy() for i in picks])


def _run(session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    names = ["boxes", "scores", "labels", "num_detections"]
    return dict(zip(names, session.run(names, {"image": x}), strict=True))


def _same_detections(got: dict, want: dict) -> None:
    assert len(got["labels"]) == len(want["labels"])
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=0, atol=SCORE_TOL)
    np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=0, atol=BOX_TOL)


def test_batch_of_four_matches_four_single_runs(exported: Exported) -> None:
    """Per image the same boxes, scores, labels and counts as alone; an image never
    suppresses another's boxes; rows past num_detections are zeros with label -1."""
    session, k = _session(exported.folder), exported.max_det
    batch = _run(session, _inputs(exported, [0, 1, 2, 3]))
    want_counts = exported.counts
    assert batch["num_detections"].tolist() == want_counts
    assert want_counts[0] == 0 and min(want_counts[1:]) > 0 and max(want_counts) < k
    for b in range(4):
        alone = _run(session, _inputs(exported, [b]))
        assert alone["num_detections"].tolist() == [want_counts[b]]
        np.testing.assert_array_equal(batch["labels"][b], alone["labels"][0])
        np.testing.assert_allclose(batch["scores"][b], alone["scores"][0], atol=SCORE_TOL)
        np.testing.assert_allclose(batch["boxes"][b], alone["boxes"][0], atol=BOX_TOL)
        n = want_counts[b]
        assert (batch["labels"][b, n:] == -1).all() and (batch["labels"][b, :n] >= 0).all()
        assert not batch["boxes"][b, n:].any() and not batch["scores"][b, n:].any()
        assert (np.diff(batch["scores"][b, :n]) <= 0).all()  # best first
        assert (batch["scores"][b, :n] > exported.spec.module.det.score_thresh).all()


@pytest.mark.parametrize("picks", [[0], [1, 0, 3], [3, 2, 1, 0]])
def test_onnxruntime_runs_the_graph_at_any_batch(exported: Exported, picks: list[int]) -> None:
    """Fixed per-image shapes at batch 1, 3 and 4 (one image alone, empty images included),
    equal to the eager module the export was checked against."""
    from e2ekit.core.infer import load_deploy

    k, x = exported.max_det, _inputs(exported, picks)
    got = _run(_session(exported.folder), x)
    n = len(picks)
    assert [got[name].shape for name in ("boxes", "scores", "labels", "num_detections")] == [
        (n, k, 4),
        (n, k),
        (n, k),
        (n,),
    ]
    assert got["labels"].dtype == np.int64 and got["num_detections"].dtype == np.int64
    with torch.inference_mode():
        ref = exported.spec.module(torch.from_numpy(x))
    for name, r in zip(("boxes", "scores", "labels", "num_detections"), ref, strict=True):
        np.testing.assert_allclose(got[name], r.numpy(), atol=BOX_TOL, rtol=0)
    deploy = load_deploy(exported.folder)
    assert deploy["nms_layout"] == "padded" and deploy["max_detections"] == k
    shapes = {o["name"]: o["shape"] for o in deploy["outputs"]}
    assert shapes == {
        "boxes": ["batch", k, 4],
        "scores": ["batch", k],
        "labels": ["batch", k],
        "num_detections": ["batch"],
    }
    assert deploy["inputs"][0]["shape"][0] == "batch"


def test_padded_layout_keeps_the_one_image_graphs_detections(exported: Exported) -> None:
    """The padded graph finds, per image, what the one-image graph of earlier exports found."""
    new, old = _session(exported.folder), _session(exported.old)
    batch = _run(new, _inputs(exported, [0, 1, 2, 3]))
    for b in range(4):
        boxes, scores, labels = old.run(None, {"image": _inputs(exported, [b])})
        n = int(batch["num_detections"][b])
        want = {"boxes": boxes, "scores": scores, "labels": labels}
        got = {k: batch[k][b, :n] for k in ("boxes", "scores", "labels")}
        _same_detections(got, want)


def test_runner_detects_a_batch_in_one_call(exported: Exported) -> None:
    """``detect_batch``: one model call, the detections of ``detect`` image by image; the
    checkpoint's module (``predict --weights``) reads the same padded layout."""
    from e2ekit.core.infer import Predictor
    from e2ekit.core.verbs import ModulePredictor
    from e2ekit.det.runner import DetRunner

    counting = Counting(Predictor(exported.folder))
    runner = DetRunner(counting)
    assert runner.layout == "padded" and runner.batched
    many = runner.detect_batch(exported.images)
    assert counting.batches == [4] and len(many) == 4
    assert len(many[0]["labels"]) == 0 and many[0]["boxes"].shape == (0, 4)
    for image, got in zip(exported.images, many, strict=True):
        _same_detections(got, runner.detect(image))
        h, w = image.shape[-2:]
        assert (got["boxes"][:, 2] <= w).all() and (got["boxes"][:, 3] <= h).all()
    assert counting.batches == [4, 1, 1, 1, 1]
    assert runner.detect_batch([]) == []

    module = DetRunner(ModulePredictor(exported.spec, torch.device("cpu")))
    assert module.layout == "padded"
    for got, want in zip(module.detect_batch(exported.images), many, strict=True):
        _same_detections(got, want)


def test_old_layout_export_still_predicts(exported: Exported, tmp_path: Path) -> None:
    """An export of the one-image layout runs an image per call, with the same detections."""
    from e2ekit.core.infer import Predictor
    from e2ekit.det.kit import KIT
    from e2ekit.det.runner import DetRunner

    old = Counting(Predictor(exported.old))
    runner = DetRunner(old)
    assert runner.layout == "single" and not runner.batched
    got = runner.detect_batch(exported.images)
    assert old.batches == [1, 1, 1, 1]
    new = DetRunner(Predictor(exported.folder)).detect_batch(exported.images)
    for g, w in zip(got, new, strict=True):
        _same_detections(g, w)

    folder = _write_pngs(exported, tmp_path / "images")
    old.batches.clear()
    summary = KIT.predict(old, folder, tmp_path / "pred", {"batch_size": 8})
    assert summary["images"] == 4 and old.batches == [1, 1, 1, 1]
    rows = (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()
    assert [len(json.loads(r)["detections"]) for r in rows] == [len(d["labels"]) for d in new]


def _write_pngs(exported: Exported, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir()
    for i, image in enumerate(exported.images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"im{i}.png")
    return folder


def test_predict_runs_in_batches(exported: Exported, tmp_path: Path, cli) -> None:
    """``det predict --batch-size N``: ceil(images / N) model calls, the same predictions as
    one image per call; a bad size fails naming the flag."""
    from e2ekit.core.errors import E2EError
    from e2ekit.core.infer import Predictor
    from e2ekit.det.kit import KIT

    folder = _write_pngs(exported, tmp_path / "images")
    outputs = {}
    for size, calls in ((3, [3, 1]), (1, [1, 1, 1, 1])):
        counting = Counting(Predictor(exported.folder))
        out = tmp_path / f"pred{size}"
        KIT.predict(counting, folder, out, {"batch_size": size, "draw_threshold": 0.0})
        assert counting.batches == calls
        outputs[size] = [
            json.loads(r) for r in (out / "predictions.jsonl").read_text().splitlines()
        ]
        assert len(list(out.glob("*.png"))) == 4
    _same_json(outputs[3], outputs[1])
    with pytest.raises(E2EError, match="--batch-size 0"):
        KIT.predict(
            Counting(Predictor(exported.folder)), folder, tmp_path / "bad", {"batch_size": 0}
        )

    code, out, err = cli(
        "det", "predict", "--model", exported.folder, "--input", folder,
        "--out", tmp_path / "cli", "--batch-size", "2",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["images"] == 4


def _same_json(got: list[dict], want: list[dict]) -> None:
    """Predictions as written (rounded): same images, labels and scores, boxes within rounding."""
    assert [g.get("image") for g in got] == [w.get("image") for w in want]
    for g_row, w_row in zip(got, want, strict=True):
        g_dets, w_dets = g_row["detections"], w_row["detections"]
        assert [d["class_id"] for d in g_dets] == [d["class_id"] for d in w_dets]
        for g, w in zip(g_dets, w_dets, strict=True):
            assert g["score"] == pytest.approx(w["score"], abs=2e-5)
            assert g["box"] == pytest.approx(w["box"], abs=0.011)


def test_server_answers_concurrent_requests_in_one_model_call(exported: Exported) -> None:
    """Four concurrent requests become one model call of four images, answered as four
    requests served one by one are."""
    from fastapi.testclient import TestClient

    from e2ekit.core.imageio import encode_png
    from e2ekit.core.infer import Predictor
    from e2ekit.core.serve import ServeSettings, create_app
    from e2ekit.det.kit import KIT

    bodies = [
        {"image": base64.b64encode(encode_png(im.permute(1, 2, 0).numpy())).decode()}
        for im in exported.images
    ]

    def answers(settings: ServeSettings, concurrent: bool) -> tuple[list[list[dict]], list[int]]:
        counting = Counting(Predictor(exported.folder))
        app = create_app(KIT.endpoints(counting), settings, model_info={"kit": "det"})
        with TestClient(app) as client:
            if concurrent:
                with ThreadPoolExecutor(len(bodies)) as pool:
                    replies = list(pool.map(lambda b: client.post("/predict", json=b), bodies))
            else:
                replies = [client.post("/predict", json=b) for b in bodies]
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        return [{"detections": r.json()["detections"]} for r in replies], counting.batches

    # a long wait: the batch goes when its fourth image arrives, not on a timer
    together, calls = answers(ServeSettings(max_batch_size=4, max_wait_ms=20_000), True)
    assert calls == [4]
    alone, single_calls = answers(ServeSettings(max_batch_size=1), False)
    assert single_calls == [1, 1, 1, 1]
    _same_json(together, alone)
    assert together[0]["detections"] == [] and all(a["detections"] for a in together[1:])


def test_bench_times_the_nms_export_at_several_batch_sizes(exported: Exported, cli) -> None:
    """The padded graph has a dynamic batch: ``det bench`` runs every size asked for."""
    code, out, err = cli(
        "det", "bench", "--model", exported.folder, "--batch-sizes", "1,3", "--seconds", "0.01",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["batch_sizes"] == [1, 3]
    assert set(summary["results"]["onnxruntime_fp32"]) == {"1", "3"}


class PaddedNMS(nn.Module):
    """The export's NMS on given raw outputs, for exact control over what it sees."""

    def __init__(self, score_thresh: float, iou: float, max_det: int) -> None:
        super().__init__()
        self.args = (score_thresh, iou, max_det)

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from e2ekit.det.export import batched_nms_graph

        return batched_nms_graph(boxes, scores, *self.args)


def test_padded_nms_equals_the_detectors_own_postprocess(tmp_path: Path) -> None:
    """On raw outputs with crowded, overlapping boxes: per image what ``multiclass_nms``
    (the detector's eval-mode post-processing) keeps, cut to max_detections; an image under
    the threshold everywhere comes back all padding."""
    from e2ekit.core.engine.task import ExportSpec
    from e2ekit.det.models.base import multiclass_nms

    g = torch.Generator().manual_seed(0)
    batch, anchors, classes, k = 4, 300, 3, 12
    xy = torch.rand(batch, anchors, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 8 + torch.rand(batch, anchors, 2, generator=g) * 30], -1)
    scores = torch.rand(batch, anchors, classes, generator=g)
    scores[2] *= 0.2  # under the threshold everywhere
    module = PaddedNMS(0.3, 0.45, k).eval()
    axes = {n: {0: "batch"} for n in ("boxes", "scores", "b", "s", "l", "n")}
    ExportSpec(
        module=module,
        example_inputs={"boxes": boxes[:2], "scores": scores[:2]},
        output_names=["b", "s", "l", "n"],
        dynamic_axes=axes,
        deploy={"kit": "test"},
        parity_inputs=[{"boxes": boxes, "scores": scores}],
    ).export(tmp_path, opset=17, atol=1e-4)
    got = _session(tmp_path).run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})
    out_boxes, out_scores, out_labels, counts = got
    assert counts.tolist()[2] == 0 and (out_labels[2] == -1).all()
    for b in range(batch):
        want = multiclass_nms(boxes[b], scores[b], 0.3, 0.45, k, pre_nms_topk=10**6)
        n = len(want["labels"])
        assert counts[b] == n and (b == 2 or n == k)  # crowded images are cut at k
        np.testing.assert_array_equal(out_labels[b, :n], want["labels"].numpy())
        np.testing.assert_allclose(out_scores[b, :n], want["scores"].numpy(), atol=SCORE_TOL)
        np.testing.assert_allclose(out_boxes[b, :n], want["boxes"].numpy(), atol=BOX_TOL)


def test_a_detector_tracing_one_image_exports_a_fixed_batch(exported: Exported) -> None:
    """A detector splitting its batch in Python (``raw_export_refused``, e.g. Faster R-CNN)
    is traced at batch 1, outputs still padded; the runner then calls it an image at a time."""
    from e2ekit.core.infer import Predictor
    from e2ekit.det.export import det_export_spec, traces_a_batch
    from e2ekit.det.runner import DetRunner

    det = exported.spec.module.det
    assert traces_a_batch(det)
    det.raw_export_refused = "its rows differ in number per image"
    try:
        spec = det_export_spec(det, exported.cfg, ["a", "b", "c", "d"], exported.images[1:])
        assert not traces_a_batch(det)
    finally:
        del det.raw_export_refused
    assert spec.dynamic_axes == {} and spec.deploy["nms_layout"] == "padded"
    assert spec.output_names == ["boxes", "scores", "labels", "num_detections"]
    cases = [spec.example_inputs, *spec.parity_inputs]
    assert [tuple(c["image"].shape[:2]) for c in cases] == [(1, 3)] * 5

    fixed = Counting(Predictor(exported.folder))
    fixed.deploy = {**fixed.deploy, "inputs": [{"name": "image", "shape": [1, 3, 96, 96]}]}
    runner = DetRunner(fixed)
    assert runner.layout == "padded" and not runner.batched
    got = runner.detect_batch(exported.images)
    assert fixed.batches == [1, 1, 1, 1]
    want = DetRunner(Predictor(exported.folder)).detect_batch(exported.images)
    for g, w in zip(got, want, strict=True):
        _same_detections(g, w)


def test_torch_backend_rebuilds_the_export(exported: Exported) -> None:
    """The export carries weights.pt and the builder: the Predictor's torch backend returns
    the detections onnxruntime does, for a batch in one call."""
    from e2ekit.core.infer import Predictor
    from e2ekit.det.runner import DetRunner

    assert (exported.folder / "weights.pt").is_file()
    by_torch = DetRunner(Predictor(exported.folder, backend="torch")).detect_batch(exported.images)
    by_ort = DetRunner(Predictor(exported.folder)).detect_batch(exported.images)
    assert sum(len(d["labels"]) for d in by_ort) > 0
    for got, want in zip(by_torch, by_ort, strict=True):
        _same_detections(got, want)
