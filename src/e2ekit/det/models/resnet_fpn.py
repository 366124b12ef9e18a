"""ResNet + FPN pieces shared by the FPN detectors (RetinaNet, Faster R-CNN, SSD's tiny body).

Module names follow torchvision (``body.*`` / ``fpn.*`` on a ResNet with ``conv1, bn1,
layer1..4``), so torchvision checkpoints line up; weights are only read from local files.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelP6P7,
)

from e2ekit.core.errors import ConfigError
from e2ekit.core.weights import load_pretrained, read_state_dict

__all__ = [
    "FPNBackbone",
    "NarrowResNet",
    "freeze_resnet_layers",
    "is_detector_checkpoint",
    "load_weights",
    "resnet_c2_c5",
    "resnet_c3_c5",
    "stage_channels",
]

_WRAPPERS = ("", "module.", "_orig_mod.")


def is_detector_checkpoint(path: str | Path, heads: Iterable[str] = ("head.",)) -> bool:
    """True when ``path`` holds a whole detector (keys under one of ``heads``), not a bare
    backbone: the two are loaded into different modules.
    """
    keys = read_state_dict(path, strip_prefixes=False)
    prefixes = tuple(w + h for w in _WRAPPERS for h in heads)
    return any(k.startswith(prefixes) for k in keys)


def load_weights(module: nn.Module, path: str | Path) -> list[str]:
    """Non-strict local load (shape-mismatched tensors skipped, counts logged); raises when
    not a single tensor matches (a checkpoint for something else entirely). Returns the
    keys of ``module`` left unloaded.
    """
    missing, _ = load_pretrained(module, path)
    if missing and len(missing) == len(module.state_dict()):
        raise ConfigError(f"pretrained '{path}': no tensor matches {type(module).__name__}")
    return missing


def freeze_resnet_layers(net: nn.Module, trainable_layers: int) -> None:
    """torchvision's rule: only the last ``trainable_layers`` of layer4..layer1, conv1 train."""
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        train.append("bn1")
    for name, param in net.named_parameters():
        if not any(name.startswith(layer) for layer in train):
            param.requires_grad_(False)


class NarrowResNet(nn.Module):
    """A thin BasicBlock ResNet with torchvision's module names, for tiny models.

    Children are registered in execution order (``conv1, bn1, relu, maxpool, layer1..4``)
    so ``IntermediateLayerGetter`` can slice it, exactly like a torchvision ResNet.
    ``norm_layer`` is the BatchNorm class (``FrozenBatchNorm2d`` to freeze statistics).
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: int = 1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or min(widths) < 1 or blocks < 1:
            raise ConfigError(
                f"NarrowResNet needs 4 positive widths and blocks >= 1, got {widths}, {blocks}"
            )
        self.widths = [int(w) for w in widths]
        self.conv1 = nn.Conv2d(3, self.widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = self.widths[0]
        for i, width in enumerate(self.widths):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != width:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), norm_layer(width)
                )
            layers = [BasicBlock(inplanes, width, stride, downsample, norm_layer=norm_layer)]
            layers += [BasicBlock(width, width, norm_layer=norm_layer) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            inplanes = width
        for m in self.modules():  # torchvision's ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet_c3_c5(net: nn.Module) -> IntermediateLayerGetter:
    """A torchvision-named ResNet returning layer2..layer4 (C3-C5, strides 8/16/32)."""
    return IntermediateLayerGetter(net, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"})


def resnet_c2_c5(net: nn.Module) -> IntermediateLayerGetter:
    """A torchvision-named ResNet returning layer1..layer4 (C2-C5, strides 4/8/16/32)."""
    return IntermediateLayerGetter(
        net, return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)}
    )


def stage_channels(layer: nn.Module) -> int:
    """Output width of a ResNet stage (its last conv: conv2 / conv3 or the downsample)."""
    return [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


class FPNBackbone(nn.Module):
    """``body`` maps (picked by ``indices``) -> torchvision ``FeaturePyramidNetwork``.

    With a torchvision ResNet body this is ``BackboneWithFPN`` with the same module names
    (``body.*``, ``fpn.*``); any backbone returning a list or dict of maps works too.
    ``extra_levels`` adds P6/P7 from P5 (``LastLevelP6P7``, torchvision's RetinaNet v1);
    ``extra_block`` adds any other torchvision ``ExtraFPNBlock`` (``LastLevelMaxPool`` for
    Faster R-CNN's "pool" level).
    """

    def __init__(
        self,
        body: nn.Module,
        indices: Sequence[int],
        in_channels: Sequence[int],
        out_channels: int,
        extra_levels: bool = False,
        extra_block: ExtraFPNBlock | None = None,
    ) -> None:
        super().__init__()
        if extra_levels and extra_block is not None:
            raise ValueError("FPNBackbone takes extra_levels or extra_block, not both")
        self.body = body
        self.indices = [int(i) for i in indices]
        extra = LastLevelP6P7(out_channels, out_channels) if extra_levels else extra_block
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=extra)
        self.out_channels = int(out_channels)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.body(x)
        feats = list(feats.values()) if isinstance(feats, Mapping) else list(feats)
        return self.fpn(OrderedDict((str(k), feats[i]) for k, i in enumerate(self.indices)))
