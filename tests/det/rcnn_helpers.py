"""What the two-stage detector tests share: one torch thread, shapes batches, the eval
contract every R-CNN output keeps."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from e2ekit.det.data.synthetic import render_sample


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small convs on a busy 2-core box: one thread avoids spinning against other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shapes_batch(
    n: int, num_classes: int, size: int = 128
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``n`` built-in shapes images (normalised like the data pipeline) and their targets."""
    rng = np.random.default_rng(0)
    images, targets = [], []
    for i in range(n):
        image, boxes, labels = render_sample(rng, (size, size), num_classes, i % num_classes, 3)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)
        targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)})
    batch = torch.stack(images)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (batch - mean) / std, targets


def assert_eval_contract(model: torch.nn.Module, num_classes: int, max_detections: int) -> None:
    """Raw rows (one class per (proposal, class) row) and final detections of a 2 x 128 x 160
    batch: labels in range, boxes inside the image, scores sorted, at most max_detections."""
    images = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        boxes, scores = model.forward_raw(images)
        dets = model(images)
    proposals = model.rpn.post_nms_top_n()
    assert boxes.shape[0] == 2 and boxes.shape[1] <= proposals * num_classes
    assert scores.shape == (*boxes.shape[:2], num_classes)
    assert ((scores > 0).sum(-1) <= 1).all()
    assert len(dets) == 2
    for det in dets:
        assert {"boxes", "scores", "labels"} <= set(det)
        m = det["scores"].shape[0]
        assert 0 < m <= max_detections
        assert det["boxes"].shape == (m, 4) and det["labels"].shape == (m,)
        assert det["labels"].dtype == torch.int64
        assert ((det["labels"] >= 0) & (det["labels"] < num_classes)).all()
        b = det["boxes"]
        assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= 160).all()
        assert (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= 128).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
