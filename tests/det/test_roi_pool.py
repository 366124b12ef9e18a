"""The traced multi-level RoIAlign merges levels by a gather: same values as torchvision's."""

from __future__ import annotations

import torch
from torchvision.ops import MultiScaleRoIAlign

from e2ekit.det.models.roi_pool import GatherRoIAlign, merge_levels


def test_merge_levels_puts_rows_back_in_box_order() -> None:
    levels = torch.tensor([2, 0, 1, 0, 2])
    per_level = [torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0]]), torch.tensor([[0.0], [4.0]])]
    assert merge_levels(levels, per_level).flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_onnx_pooling_equals_torchvisions(tmp_path) -> None:
    """Exported (traced) through onnxruntime: the gather merge gives torchvision's values."""
    import onnx
    import onnxruntime as ort
    from torch import nn

    g = torch.Generator().manual_seed(0)
    names = [str(i) for i in range(4)]
    feats = [torch.randn(1, 8, 64 // 2**i, 64 // 2**i, generator=g) for i in range(4)]
    xy = torch.rand(60, 2, generator=g) * 200
    wh = torch.rand(60, 2, generator=g) ** 2 * 200 + 4  # sizes across all four levels
    boxes = torch.cat([xy, xy + wh], 1)

    class Pool(nn.Module):
        def __init__(self, pooler: nn.Module) -> None:
            super().__init__()
            self.pooler = pooler

        def forward(self, b: torch.Tensor, *levels: torch.Tensor) -> torch.Tensor:
            return self.pooler(dict(zip(names, levels, strict=True)), [b], [(256, 256)])

    want = Pool(MultiScaleRoIAlign(names, 7, 2))(boxes, *feats)
    ours = Pool(GatherRoIAlign(names, 7, 2))
    torch.testing.assert_close(ours(boxes, *feats), want)  # eager: torchvision's own path
    path = tmp_path / "pool.onnx"
    inputs = ["boxes", *(f"p{n}" for n in names)]
    torch.onnx.export(
        ours, (boxes, *feats), str(path), input_names=inputs, output_names=["pooled"],
        dynamic_axes={"boxes": {0: "n"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = dict(zip(inputs, [t.numpy() for t in (boxes, *feats)], strict=True))
    got = torch.from_numpy(session.run(None, feeds)[0])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "ScatterElements" not in ops and "Gather" in ops
