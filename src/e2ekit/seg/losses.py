"""Segmentation losses with PaddleSeg names and semantics, plus the multi-output loss head.

Every loss is built as ``builder(ignore_index=255, **kwargs)`` and called as
``loss(logits (B,K,H,W), label (B,H,W) int64) -> scalar``. Pixels equal to
``ignore_index`` change neither the value nor the gradient, and a batch where every
pixel is ignored gives an exact 0 that is still connected to the graph (so DDP and
``backward`` keep working). Losses are computed in float32 from ``log_softmax``.

K=1 logits are read as a binary problem (sigmoid of the single channel): the
softmax losses see them as the two logits ``[0, x]``, whose softmax is
``[1 - sigmoid(x), sigmoid(x)]``, so labels are {0, 1} and per-class lists
(``weight``, ``alpha``) then have two entries.

References:
- OHEM: Shrivastava et al., "Training Region-based Object Detectors with Online Hard
  Example Mining", CVPR 2016 (pixel-wise variant as in PaddleSeg/PSPNet code).
- Dice: Milletari et al., "V-Net", 3DV 2016.
- Lovasz-Softmax: Berman et al., "The Lovasz-Softmax loss: A tractable surrogate for the
  optimization of the intersection-over-union measure in neural networks", CVPR 2018.
- Focal: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
- Mixed / multi-output coefficients: PaddleSeg's ``loss: {types, coef}`` config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2ekit.core.errors import ConfigError
from e2ekit.seg.registry import LOSSES

__all__ = [
    "BCEDiceLoss",
    "BCELoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszSoftmaxLoss",
    "MixedLoss",
    "OhemCrossEntropyLoss",
    "SegLossHead",
    "build_loss",
    "build_seg_losses",
    "lovasz_grad",
]

_EPS = 1e-8


# -- helpers ----------------------------------------------------------------------------
def _at_least_fp32(x: Tensor) -> Tensor:
    """Half/bfloat16 (AMP) logits are upcast; float64 stays float64 (gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _as_multiclass(logits: Tensor) -> Tensor:
    """Float32 (B,K,H,W) logits; K=1 becomes ``[0, x]`` so softmax = [1-sigmoid, sigmoid]."""
    if logits.dim() != 4:
        raise ValueError(f"expected logits of shape (B,K,H,W), got {tuple(logits.shape)}")
    logits = _at_least_fp32(logits)
    if logits.shape[1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)  # (B,2,H,W)
    return logits


def _check_label(logits: Tensor, label: Tensor) -> None:
    if label.dim() != 3 or label.shape[0] != logits.shape[0] or label.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"label shape {tuple(label.shape)} does not match logits {tuple(logits.shape)}; "
            "expected (B,H,W) with the logits' spatial size"
        )


def _split_label(label: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(valid mask (B,H,W) bool, label with ignored pixels set to class 0 (safe to gather))."""
    valid = label != ignore_index
    return valid, torch.where(valid, label, torch.zeros_like(label)).long()


def _zero_like_graph(logits: Tensor) -> Tensor:
    """An exact 0 that still depends on ``logits`` (backward works, grads are 0)."""
    return logits.sum() * 0.0


def _masked_mean(values: Tensor, mask: Tensor, logits: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; 0 connected to the graph when the mask is empty."""
    mask_f = mask.to(values.dtype)
    total = (values * mask_f).sum()
    count = mask_f.sum()
    return total / count.clamp_min(1.0) + _zero_like_graph(logits)


def _class_vector(values: float | Sequence[float] | None, name: str) -> Tensor | None:
    if values is None or (isinstance(values, (int, float)) and name == "focal.alpha"):
        return None  # focal's scalar alpha is kept as a float
    if isinstance(values, (int, float, str)):
        raise ConfigError(f"loss '{name}' must be a list of per-class numbers, got {values!r}")
    vec = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if vec.dim() != 1 or vec.numel() == 0:
        raise ConfigError(f"loss '{name}' must be a list of per-class numbers")
    return vec


def _check_classes(vec: Tensor | None, num_classes: int, what: str) -> None:
    if vec is not None and vec.numel() != num_classes:
        raise ValueError(
            f"{what} has {vec.numel()} entries but the logits have {num_classes} classes"
        )


def _binary_logit(logits: Tensor) -> Tensor:
    """(B,H,W) foreground logit from K=1 logits, or logit difference for K=2."""
    if logits.dim() != 4 or logits.shape[1] not in (1, 2):
        raise ValueError(
            f"binary losses need logits with 1 or 2 channels, got shape {tuple(logits.shape)}"
        )
    logits = _at_least_fp32(logits)
    if logits.shape[1] == 1:
        return logits[:, 0]
    return logits[:, 1] - logits[:, 0]  # sigmoid(l1 - l0) == softmax(l)[1]


# -- cross entropy ----------------------------------------------------------------------
class CrossEntropyLoss(nn.Module):
    """Pixel-wise softmax cross entropy (PaddleSeg ``CrossEntropyLoss``).

    ``weight``: per-class weights. ``avg_non_ignore=True`` divides by the summed weight
    of the valid pixels (== ``F.cross_entropy(weight=..., reduction='mean')``); False
    divides by every pixel, ignored ones included (PaddleSeg's legacy mean).
    ``top_k_percent_pixels < 1`` keeps only the hardest fraction of the valid pixels
    (bootstrapped CE, as in DeepLab), normalised by their summed weight.
    """

    def __init__(
        self,
        weight: Sequence[float] | None = None,
        ignore_index: int = 255,
        top_k_percent_pixels: float = 1.0,
        avg_non_ignore: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < top_k_percent_pixels <= 1.0:
            raise ConfigError(
                f"cross_entropy top_k_percent_pixels must be in (0, 1], got {top_k_percent_pixels}"
            )
        self.ignore_index = ignore_index
        self.top_k_percent_pixels = float(top_k_percent_pixels)
        self.avg_non_ignore = avg_non_ignore
        self.register_buffer("weight", _class_vector(weight, "cross_entropy.weight"))

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        _check_label(logits, label)
        x = _as_multiclass(logits)
        _check_classes(self.weight, x.shape[1], "cross_entropy weight")
        valid, safe = _split_label(label, self.ignore_index)
        nll = -x.log_softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)  # (B,H,W)
        coef = valid.to(x.dtype)  # (B,H,W) weight of each pixel
        if self.weight is not None:
            coef = coef * self.weight.to(x.device, x.dtype)[safe]
        loss = nll * coef
        zero = _zero_like_graph(logits)
        if self.top_k_percent_pixels < 1.0:
            flat = torch.where(valid, loss, torch.full_like(loss, -1.0)).flatten()
            n_valid = int(valid.sum())
            k = max(1, math.ceil(self.top_k_percent_pixels * n_valid)) if n_valid else 0
            if k == 0:
                return zero
            top, idx = flat.topk(k)
            return top.sum() / coef.flatten()[idx].sum().clamp_min(_EPS) + zero
        if self.avg_non_ignore:
            return loss.sum() / coef.sum().clamp_min(_EPS) + zero
        return loss.sum() / label.numel() + zero


@LOSSES.register("cross_entropy")
def cross_entropy(
    ignore_index: int = 255,
    weight: Sequence[float] | None = None,
    top_k_percent_pixels: float = 1.0,
    avg_non_ignore: bool = True,
) -> CrossEntropyLoss:
    return CrossEntropyLoss(weight, ignore_index, top_k_percent_pixels, avg_non_ignore)


# -- OHEM cross entropy -----------------------------------------------------------------
class OhemCrossEntropyLoss(nn.Module):
    """Cross entropy over hard pixels only (PaddleSeg ``OhemCrossEntropyLoss``).

    A valid pixel is hard when its softmax probability for the true class is below
    ``thresh``; if fewer than ``min_kept`` are hard, the ``min_kept`` lowest-probability
    pixels (ties included) are kept instead, so at least ``min(min_kept, valid)`` pixels
    always contribute. The selection is computed without gradient.
    """

    def __init__(
        self,
        thresh: float = 0.7,
        min_kept: int = 10000,
        ignore_index: int = 255,
        weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if min_kept < 0:
            raise ConfigError(f"ohem_cross_entropy min_kept must be >= 0, got {min_kept}")
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self.ignore_index = ignore_index
        self.register_buffer("weight", _class_vector(weight, "ohem_cross_entropy.weight"))

    def kept_mask(self, logits: Tensor, label: Tensor) -> Tensor:
        """(B,H,W) bool mask of the pixels that contribute to the loss."""
        x = _as_multiclass(logits)
        valid, safe = _split_label(label, self.ignore_index)
        with torch.no_grad():
            prob = x.softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)  # (B,H,W)
            prob = torch.where(valid, prob, torch.full_like(prob, math.inf))
            keep = prob < self.thresh
            if self.min_kept > 0:
                flat = prob.flatten()
                k = min(self.min_kept, flat.numel())
                kth = flat.kthvalue(k).values  # inf when fewer than k valid pixels
                keep = keep | (prob <= kth)
        return keep & valid

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        _check_label(logits, label)
        x = _as_multiclass(logits)
        _check_classes(self.weight, x.shape[1], "ohem_cross_entropy weight")
        keep = self.kept_mask(logits, label)
        _, safe = _split_label(label, self.ignore_index)
        nll = -x.log_softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)  # (B,H,W)
        coef = keep.to(x.dtype)
        if self.weight is not None:
            coef = coef * self.weight.to(x.device, x.dtype)[safe]
        return (nll * coef).sum() / coef.sum().clamp_min(_EPS) + _zero_like_graph(logits)


@LOSSES.register("ohem_cross_entropy")
def ohem_cross_entropy(
    ignore_index: int = 255,
    thresh: float = 0.7,
    min_kept: int = 10000,
    weight: Sequence[float] | None = None,
) -> OhemCrossEntropyLoss:
    return OhemCrossEntropyLoss(thresh, min_kept, ignore_index, weight)


# -- dice -------------------------------------------------------------------------------
class DiceLoss(nn.Module):
    """Multi-class soft dice over softmax probabilities (PaddleSeg ``DiceLoss``).

    Per class c, summed over the whole batch: ``1 - (2 * sum(p_c * y_c) + smooth) /
    (sum(p_c) + sum(y_c) + smooth)``; the loss is ``sum_c weight_c * dice_c / K``
    (weight 1 by default). Ignored pixels are masked out of every sum.
    """

    def __init__(
        self, smooth: float = 1.0, weight: Sequence[float] | None = None, ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.smooth = float(smooth)
        self.ignore_index = ignore_index
        self.register_buffer("weight", _class_vector(weight, "dice.weight"))

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        _check_label(logits, label)
        x = _as_multiclass(logits)
        k = x.shape[1]
        _check_classes(self.weight, k, "dice weight")
        valid, safe = _split_label(label, self.ignore_index)
        # Per-class sums without a (B,K,H,W) one-hot: the intersection gathers each pixel's
        # probability of its own class and scatters it into that class; the label's own
        # cardinality is a histogram. Half the time and memory of the one-hot form.
        prob = x.softmax(1)
        p_own = prob.gather(1, safe.unsqueeze(1)).squeeze(1)  # (B,H,W)
        if bool(valid.all()):
            p_sum = prob.sum((0, 2, 3))
        else:
            p_own = p_own * valid
            p_sum = (prob * valid.unsqueeze(1)).sum((0, 2, 3))
        inter = x.new_zeros(k).index_add(0, safe.flatten(), p_own.flatten())  # (K,)
        # Ignored pixels count in an extra bin (boolean indexing would cost a nonzero() pass).
        counts = torch.bincount(torch.where(valid, safe, k).flatten(), minlength=k + 1)
        card = p_sum + counts[:k].to(x.dtype)
        dice = 1.0 - (2.0 * inter + self.smooth) / (card + self.smooth + _EPS)
        if self.weight is not None:
            dice = dice * self.weight.to(x.device, x.dtype)
        return dice.sum() / k + _zero_like_graph(logits)


@LOSSES.register("dice")
def dice(
    ignore_index: int = 255, smooth: float = 1.0, weight: Sequence[float] | None = None
) -> DiceLoss:
    return DiceLoss(smooth, weight, ignore_index)


# -- Lovasz-Softmax ---------------------------------------------------------------------
def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors.

    ``gt_sorted`` (P, C): 0/1 ground truth of each class column, sorted by decreasing
    error. Returns (P, C): ``J(i) - J(i-1)`` where ``J(i)`` is the Jaccard loss of
    predicting the first ``i`` pixels as foreground (Berman et al. 2018, Eq. 8).
    """
    gts = gt_sorted.sum(0, keepdim=True)  # (1,C)
    inter = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - inter / union.clamp_min(_EPS)  # (P,C)
    if gt_sorted.shape[0] > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)
    return jaccard


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-Softmax: a convex surrogate of the per-class IoU loss (Berman et al. 2018).

    ``classes``: "present" averages over classes present in the (valid) label, "all"
    over every class, or a list of class ids. ``per_image`` computes the loss per image
    and averages it. All classes are processed at once (memory ~ a few x B*H*W*K
    floats); ignored pixels get error -1 so they sort last and contribute nothing.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        classes: str | Sequence[int] = "present",
        per_image: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(classes, str) and classes not in ("present", "all"):
            raise ConfigError(
                f"lovasz_softmax classes must be 'present', 'all' or a list of ids, got {classes!r}"
            )
        self.ignore_index = ignore_index
        self.classes = classes if isinstance(classes, str) else [int(c) for c in classes]
        self.per_image = per_image

    def _flat_loss(self, prob: Tensor, label: Tensor) -> Tensor:
        """prob (P,K) softmax, label (P,) -> scalar loss over valid pixels."""
        k = prob.shape[1]
        valid, safe = _split_label(label, self.ignore_index)
        fg = F.one_hot(safe, k).to(prob.dtype) * valid.unsqueeze(1)  # (P,K)
        errors = (fg - prob).abs()
        errors = torch.where(valid.unsqueeze(1), errors, torch.full_like(errors, -1.0))
        errors_sorted, perm = errors.sort(dim=0, descending=True)  # (P,K) per class column
        fg_sorted = fg.gather(0, perm)
        errors_sorted = torch.where(errors_sorted < 0, 0.0, errors_sorted)  # ignored -> 0
        per_class = (errors_sorted * lovasz_grad(fg_sorted)).sum(0)  # (K,)
        if self.classes == "present":
            use = (fg.sum(0) > 0).to(per_class.dtype)
        elif self.classes == "all":
            use = torch.ones_like(per_class)
        else:
            use = torch.zeros_like(per_class)
            use[[c for c in self.classes if 0 <= c < k]] = 1.0
        return (per_class * use).sum() / use.sum().clamp_min(1.0)

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        _check_label(logits, label)
        x = _as_multiclass(logits)
        prob = x.softmax(1)
        k = prob.shape[1]
        zero = _zero_like_graph(logits)
        if self.per_image:
            losses = [
                self._flat_loss(p.permute(1, 2, 0).reshape(-1, k), lab.reshape(-1))
                for p, lab in zip(prob, label, strict=True)
            ]
            return torch.stack(losses).mean() + zero
        # (B,K,H,W) -> (B*H*W, K)
        flat = prob.permute(0, 2, 3, 1).reshape(-1, k)
        return self._flat_loss(flat, label.reshape(-1)) + zero


@LOSSES.register("lovasz_softmax")
def lovasz_softmax(
    ignore_index: int = 255, classes: str | Sequence[int] = "present", per_image: bool = False
) -> LovaszSoftmaxLoss:
    return LovaszSoftmaxLoss(ignore_index, classes, per_image)


# -- focal ------------------------------------------------------------------------------
class FocalLoss(nn.Module):
    """Softmax focal loss ``-alpha_t * (1 - p_t)^gamma * log p_t`` (Lin et al. 2017).

    ``alpha`` is one number (PaddleSeg ``FocalLoss``) or a per-class list
    (PaddleSeg ``MultiClassFocalLoss``'s class weights). Averaged over valid pixels.
    """

    def __init__(
        self,
        alpha: float | Sequence[float] = 0.25,
        gamma: float = 2.0,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.ignore_index = ignore_index
        self.alpha_scalar = float(alpha) if isinstance(alpha, (int, float)) else None
        self.register_buffer("alpha", _class_vector(alpha, "focal.alpha"))

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        _check_label(logits, label)
        x = _as_multiclass(logits)
        _check_classes(self.alpha, x.shape[1], "focal alpha")
        valid, safe = _split_label(label, self.ignore_index)
        logpt = x.log_softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)  # (B,H,W)
        pt = logpt.exp()
        # clamp keeps d/dp (1-p)^gamma finite at p == 1 when gamma < 1
        focal = (1.0 - pt).clamp_min(1e-12).pow(self.gamma) * -logpt
        if self.alpha is not None:
            focal = focal * self.alpha.to(x.device, x.dtype)[safe]
        else:
            focal = focal * self.alpha_scalar
        return _masked_mean(focal, valid, logits)


@LOSSES.register("focal")
def focal(
    ignore_index: int = 255, alpha: float | Sequence[float] = 0.25, gamma: float = 2.0
) -> FocalLoss:
    return FocalLoss(alpha, gamma, ignore_index)


# -- binary losses ----------------------------------------------------------------------
class BCELoss(nn.Module):
    """Binary cross entropy on a foreground logit (PaddleSeg ``BCELoss``).

    Accepts K=1 logits (sigmoid) or K=2 logits (sigmoid of ``l1 - l0``, identical to
    the softmax probability of class 1). Labels: 0 = background, any other valid id =
    foreground. ``pos_weight``: a number, or "dynamic" (negatives / positives of the
    batch, as PaddleSeg). Averaged over valid pixels.
    """

    def __init__(self, pos_weight: float | str | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        if isinstance(pos_weight, str) and pos_weight != "dynamic":
            raise ConfigError(f"bce pos_weight must be a number or 'dynamic', got {pos_weight!r}")
        self.pos_weight = pos_weight
        self.ignore_index = ignore_index

    def pixel_losses(self, logits: Tensor, label: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(per-pixel BCE (B,H,W), valid mask, float target) for reuse by ``bce_dice``."""
        _check_label(logits, label)
        z = _binary_logit(logits)
        valid = label != self.ignore_index
        target = ((label > 0) & valid).to(z.dtype)
        pw: Tensor | None = None
        if self.pos_weight == "dynamic":
            pos = target.sum()
            neg = valid.sum() - pos
            pw = (neg / pos.clamp_min(1.0)).clamp_min(1.0).detach()
        elif self.pos_weight is not None:
            pw = torch.tensor(float(self.pos_weight), device=z.device, dtype=z.dtype)
        bce = F.binary_cross_entropy_with_logits(z, target, reduction="none", pos_weight=pw)
        return bce, valid, target

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        bce, valid, _ = self.pixel_losses(logits, label)
        return _masked_mean(bce, valid, logits)


@LOSSES.register("bce")
def bce(ignore_index: int = 255, pos_weight: float | str | None = None) -> BCELoss:
    return BCELoss(pos_weight, ignore_index)


class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * foreground soft dice`` for binary segmentation."""

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        pos_weight: float | str | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.bce = BCELoss(pos_weight, ignore_index)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        bce_px, valid, target = self.bce.pixel_losses(logits, label)
        bce_term = _masked_mean(bce_px, valid, logits)
        prob = torch.sigmoid(_binary_logit(logits)) * valid  # (B,H,W), ignored -> 0
        inter = (prob * target).sum()
        dice_term = 1.0 - (2.0 * inter + self.smooth) / (
            prob.sum() + target.sum() + self.smooth + _EPS
        )
        return self.bce_weight * bce_term + self.dice_weight * dice_term


@LOSSES.register("bce_dice")
def bce_dice(
    ignore_index: int = 255,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = 1.0,
    pos_weight: float | str | None = None,
) -> BCEDiceLoss:
    return BCEDiceLoss(bce_weight, dice_weight, smooth, pos_weight, ignore_index)


# -- composition ------------------------------------------------------------------------
def build_loss(spec: dict[str, Any] | str | nn.Module, ignore_index: int = 255) -> nn.Module:
    """A loss from a ``{"type": name, **kwargs}`` spec; ``ignore_index`` is filled in
    unless the spec sets its own. A built ``nn.Module`` is returned as is."""
    if isinstance(spec, nn.Module):
        return spec
    spec = {"type": spec} if isinstance(spec, str) else dict(spec)
    spec.setdefault("ignore_index", ignore_index)
    return LOSSES.build(spec)


class MixedLoss(nn.Module):
    """Weighted sum of several losses on the same logits (PaddleSeg ``MixedLoss``)."""

    def __init__(
        self,
        losses: Sequence[dict[str, Any] | str | nn.Module],
        coef: Sequence[float] | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if not losses:
            raise ConfigError("mixed loss needs a non-empty 'losses' list")
        coef = [1.0] * len(losses) if coef is None else [float(c) for c in coef]
        if len(coef) != len(losses):
            raise ConfigError(
                f"mixed loss has {len(losses)} losses but {len(coef)} coef values; "
                "give one coefficient per loss"
            )
        self.losses = nn.ModuleList(build_loss(s, ignore_index) for s in losses)
        self.coef = coef

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        return sum(c * loss(logits, label) for c, loss in zip(self.coef, self.losses, strict=True))  # type: ignore[return-value]


@LOSSES.register("mixed")
def mixed(
    ignore_index: int = 255,
    losses: Sequence[dict[str, Any] | str] = (),
    coef: Sequence[float] | None = None,
) -> MixedLoss:
    return MixedLoss(list(losses), coef, ignore_index)


# -- multi-output head ------------------------------------------------------------------
_SHORT_NAMES = {
    "cross_entropy": "ce",
    "ohem_cross_entropy": "ohem",
    "lovasz_softmax": "lovasz",
}


def _term_name(spec: dict[str, Any] | str | nn.Module) -> str:
    if isinstance(spec, nn.Module):
        name = type(spec).__name__
    else:
        name = spec if isinstance(spec, str) else str(spec.get("type", "loss"))
    name = name.replace(":", ".").rsplit(".", 1)[-1]
    name = _SHORT_NAMES.get(name, name)
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()) or "loss"


class SegLossHead(nn.Module):
    """PaddleSeg's ``loss: {types: [...], coef: [...]}``: ``coef[i] * loss_i(outputs[i])``.

    ``outputs`` is the network's list of logits (main head first, then auxiliary
    heads). One spec with several coefficients applies the same loss to every output.
    Returns named, already weighted terms (``loss_ce``, ``loss_ce_aux1``, ...) whose sum
    is the total loss. In eval mode a network returns only the main output; extra
    coefficients are then simply unused.
    """

    def __init__(
        self,
        specs: Sequence[dict[str, Any] | str | nn.Module],
        coefs: Sequence[float] | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        specs = list(specs)
        if not specs:
            raise ConfigError("loss.types is empty: give at least one loss, e.g. cross_entropy")
        if coefs is None:
            coefs = [1.0] * len(specs)
        coefs = [float(c) for c in coefs]
        if len(specs) == 1 and len(coefs) > 1:
            specs = specs * len(coefs)
        if len(specs) != len(coefs):
            raise ConfigError(
                f"loss has {len(specs)} types but {len(coefs)} coef values; give one "
                "coefficient per network output (main head first, then auxiliary heads)"
            )
        self.coefs = coefs
        self.names = [
            f"loss_{_term_name(s)}" + (f"_aux{i}" if i else "") for i, s in enumerate(specs)
        ]
        self.losses = nn.ModuleList(build_loss(s, ignore_index) for s in specs)

    def forward(self, outputs: Sequence[Tensor] | Tensor, label: Tensor) -> dict[str, Tensor]:
        if isinstance(outputs, Tensor):
            outputs = [outputs]
        if len(outputs) > len(self.losses):
            raise ConfigError(
                f"the network returned {len(outputs)} outputs but loss.coef has "
                f"{len(self.coefs)} values; give one coefficient per output"
            )
        return {
            name: coef * loss(out, label)
            for name, coef, loss, out in zip(
                self.names, self.coefs, self.losses, outputs, strict=False
            )
        }


def build_seg_losses(
    specs: Sequence[dict[str, Any] | str | nn.Module],
    coefs: Sequence[float] | None = None,
    ignore_index: int = 255,
) -> SegLossHead:
    """``SegLossHead(specs, coefs, ignore_index)``; call it as ``head(outputs, label)``."""
    return SegLossHead(specs, coefs, ignore_index)
