"""Sliding-window and test-time-augmentation inference agree with whole-image inference."""

from __future__ import annotations

import pytest
import torch

from e2ekit.seg.test_time import TestConfig, infer_logits, slide_logits


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """A per-pixel 'network': windows and flips cannot change its answer."""
    return torch.stack([x[:, 0] * 2 - x[:, 1], x[:, 1] + x[:, 2], -x[:, 0]], dim=1)


@pytest.mark.parametrize(("h", "w"), [(70, 100), (32, 40), (64, 64)])
def test_slide_equals_whole_for_pointwise_net(h: int, w: int) -> None:
    x = torch.randn(2, 3, h, w)
    out = slide_logits(pointwise, x, crop=(48, 48), stride=(32, 20))
    torch.testing.assert_close(out, pointwise(x))


def test_slide_calls_overlapping_windows() -> None:
    seen: list[tuple[int, int]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[-2:]))
        return pointwise(x)

    slide_logits(fn, torch.randn(1, 3, 100, 130), crop=(64, 64), stride=(48, 48))
    assert set(seen) == {(64, 64)}
    assert len(seen) == 2 * 3  # rows at 0, 36; columns at 0, 48, 66


def test_flip_and_scale_tta_average_probabilities() -> None:
    x = torch.randn(1, 3, 32, 48)
    cfg = TestConfig(flip_horizontal=True, flip_vertical=True)
    out = infer_logits(pointwise, x, cfg)
    torch.testing.assert_close(out, 3 * pointwise(x).softmax(1))
    cfg = TestConfig(scales=[0.5, 1.0], mode="slide", crop_size=(32, 16), stride=(16, 16))
    out = infer_logits(pointwise, x, cfg)
    assert out.shape == (1, 3, 32, 48)
    agree = (out.argmax(1) == pointwise(x).argmax(1)).float().mean()
    assert agree > 0.8


def test_plain_config_is_passthrough_and_bad_stride_rejected() -> None:
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(infer_logits(pointwise, x, TestConfig()), pointwise(x))
    with pytest.raises(ValueError, match="stride"):
        TestConfig(crop_size=(16, 16), stride=(32, 8))
