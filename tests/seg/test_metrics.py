"""Confusion-matrix metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from e2ekit.core.errors import DataError
from e2ekit.seg.metrics import ConfusionMatrix
from e2ekit.seg.registry import METRICS

IGNORE = 255

# 3 classes used (0, 1, 2); the matrix has 4 so class 3 is absent from label and pred.
LABEL = torch.tensor(
    [
        [0, 0, 1, 1],
        [0, 2, 2, IGNORE],
        [1, 1, 2, IGNORE],
    ]
)
PRED = torch.tensor(
    [
        [0, 1, 1, 1],
        [0, 2, 1, 0],  # the pred under the ignored pixel (0) must not count
        [1, 0, 2, 2],  # nor this 2
    ]
)
# (label, pred) pairs of the 10 valid pixels:
#   label 0: (0,0) (0,1) (0,0)        -> row [2, 1, 0]
#   label 1: (1,1) (1,1) (1,1) (1,0)  -> row [1, 3, 0]
#   label 2: (2,2) (2,1) (2,2)        -> row [0, 1, 2]
# tp = [2, 3, 2], label pixels = [3, 4, 3], predicted pixels = [3, 5, 2], total 10
# IoU = tp / (label + pred - tp) = [2/4, 3/6, 2/3]; acc = 7/10
# chance agreement pe = (3*3 + 4*5 + 3*2) / 100 = 0.35; kappa = (0.7 - 0.35) / 0.65 = 7/13
# dice = 2 tp / (label + pred) = [4/6, 6/9, 4/5]; recall = [2/3, 3/4, 2/3]
EXPECTED_MAT = [[2, 1, 0, 0], [1, 3, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]


def test_hand_made_example() -> None:
    cm = ConfusionMatrix(4, IGNORE)
    cm.update(PRED[None], LABEL[None])
    assert cm.mat.tolist() == EXPECTED_MAT
    m = cm.compute()
    iou = m["per_class_iou"]
    assert iou[:3] == pytest.approx([0.5, 0.5, 2 / 3])
    assert math.isnan(iou[3])  # absent from label and pred: undefined
    assert m["mIoU"] == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)  # mean over present classes
    assert m["mIoU_all"] == pytest.approx((0.5 + 0.5 + 2 / 3) / 4)  # PaddleSeg: absent = 0
    assert m["acc"] == pytest.approx(0.7)
    assert m["kappa"] == pytest.approx(7 / 13)
    assert m["dice"] == pytest.approx((4 / 6 + 6 / 9 + 4 / 5) / 3)
    assert m["per_class_acc"][:3] == pytest.approx([2 / 3, 3 / 4, 2 / 3])
    assert math.isnan(m["per_class_acc"][3])
    assert m["per_class_precision"][:3] == pytest.approx([2 / 3, 3 / 5, 1.0])
    assert m["class_pixels"] == [3, 4, 3, 0]


def test_class_only_in_prediction_counts_with_iou_zero() -> None:
    label = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 2, 1, 1]]])
    cm = ConfusionMatrix(3)
    cm.update(pred, label)
    m = cm.compute()
    assert m["per_class_iou"] == pytest.approx([0.5, 1.0, 0.0])
    assert m["mIoU"] == pytest.approx(0.5)
    assert math.isnan(m["per_class_acc"][2])


def test_update_accepts_logits_and_other_int_dtypes() -> None:
    logits = torch.nn.functional.one_hot(PRED, 4).permute(2, 0, 1)[None].float()
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(logits, LABEL[None])
    b.update(PRED[None].to(torch.uint8), LABEL[None].to(torch.int32))
    assert a.mat.tolist() == EXPECTED_MAT == b.mat.tolist()
    assert a.mat.dtype == torch.int64


def test_merge_of_two_halves_equals_whole() -> None:
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (4, 32, 32), generator=g)
    label[torch.rand(4, 32, 32, generator=g) < 0.1] = IGNORE
    noise = torch.randint(0, 5, label.shape, generator=g)
    pred = torch.where(torch.rand(4, 32, 32, generator=g) < 0.6, label.clamp(max=4), noise)
    whole, first, second = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    whole.update(pred, label)
    first.update(pred[:2], label[:2])
    second.update(pred[2:], label[2:])
    merged = first.merge(second)
    assert torch.equal(merged.mat, whole.mat)
    assert merged.compute() == whole.compute()
    assert int(whole.mat.sum()) == int((label != IGNORE).sum())
    # plain-Python reference for the counts
    valid = label != IGNORE
    ref = torch.zeros(5, 5, dtype=torch.int64)
    for t, p in zip(label[valid].tolist(), pred[valid].tolist(), strict=True):
        ref[t, p] += 1
    assert torch.equal(whole.mat, ref)
    with pytest.raises(ValueError, match="classes"):
        whole.merge(ConfusionMatrix(4))


def test_perfect_prediction() -> None:
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 3, (2, 8, 8), generator=g)
    cm = ConfusionMatrix(3)
    cm.update(label.clone(), label)
    m = cm.compute()
    assert m["mIoU"] == 1.0 and m["acc"] == 1.0 and m["kappa"] == 1.0 and m["dice"] == 1.0


def test_empty_and_reset() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), IGNORE))
    m = cm.compute()
    assert m["mIoU"] == 0.0 and m["acc"] == 0.0 and m["class_pixels"] == [0, 0, 0]
    cm.update(PRED[None] % 3, LABEL[None])
    assert cm.mat.sum() > 0
    cm.reset()
    assert cm.mat.sum() == 0


def test_out_of_range_label_is_a_data_error() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(DataError, match=r"outside 0\.\.2"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 1], [7, 2]]]))
    assert cm.mat.sum() == 0  # nothing half-added


def test_all_reduce_sums_over_a_single_rank_group() -> None:
    cm = ConfusionMatrix(4)
    cm.update(PRED[None], LABEL[None])
    cm.all_reduce()  # no process group: unchanged
    assert cm.mat.tolist() == EXPECTED_MAT
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        cm.all_reduce()
    finally:
        dist.destroy_process_group()
    assert cm.mat.tolist() == EXPECTED_MAT


def test_registered() -> None:
    cm = METRICS.build({"type": "confusion_matrix", "num_classes": 3, "ignore_index": 0})
    assert isinstance(cm, ConfusionMatrix) and cm.ignore_index == 0


def test_eval_scores_the_original_label_pixels() -> None:
    """Val transforms that resize: mIoU is computed on each image's own label, the logits
    resized back (PaddleSeg's evaluation), not on a resized label."""
    import torch.nn.functional as F
    from torch import nn

    from e2ekit.core.config import load_config
    from e2ekit.core.engine.trainer import eval_loader
    from e2ekit.seg.config import SegConfig
    from e2ekit.seg.metrics import ConfusionMatrix
    from e2ekit.seg.task import SegTask

    from ..conftest import ROOT

    cfg = load_config(
        ROOT / "configs" / "seg" / "tiny.yaml",
        SegConfig,
        ["data.val_transforms=[{type: Resize, target_size: [40, 40]}, {type: Normalize}]"],
    )
    task = SegTask(cfg)
    sample = task.build_dataset("val")[0]
    assert sample["label"].shape == (40, 40) and sample["label_orig"].shape == (64, 64)
    batch = next(iter(eval_loader(task, "val")))
    k = cfg.data.num_classes
    logits = F.one_hot(batch["label"].clamp(0, k - 1), k).permute(0, 3, 1, 2).float()
    logits = logits + 0.3 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (logits,)

    got = task.evaluate(Fixed(), [batch], torch.device("cpu"))
    want = ConfusionMatrix(k, cfg.data.ignore_index)
    for i, label in enumerate(batch["label_orig"]):
        up = F.interpolate(logits[i : i + 1], size=label.shape, mode="bilinear")
        want.update(up.argmax(1), label[None])
    assert got["mIoU"] == pytest.approx(want.compute()["mIoU"])
    resized = ConfusionMatrix(k, cfg.data.ignore_index)
    resized.update(logits.argmax(1), batch["label"])
    assert got["mIoU"] != pytest.approx(resized.compute()["mIoU"])  # not the resized score
