"""Segmentation losses: values against independent references, ignore handling, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from e2ekit.core.errors import ConfigError
from e2ekit.seg.losses import (
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    build_seg_losses,
)
from e2ekit.seg.registry import LOSSES

IGNORE = 255
MULTICLASS = ["cross_entropy", "ohem_cross_entropy", "dice", "lovasz_softmax", "focal"]
MIXED_SPEC = {
    "type": "mixed",
    "losses": [{"type": "cross_entropy"}, {"type": "lovasz_softmax"}],
    "coef": [0.8, 0.2],
}
BINARY = ["bce", "bce_dice"]


def build(spec: str | dict) -> torch.nn.Module:
    spec = {"type": spec} if isinstance(spec, str) else dict(spec)
    return LOSSES.build({"ignore_index": IGNORE, **spec})


def make_batch(k: int = 4, seed: int = 0, ignore_frac: float = 0.2, binary: bool = False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 16, 16, generator=g) * 2.0
    n_cls = 2 if binary or k == 1 else k
    label = torch.randint(0, n_cls, (2, 16, 16), generator=g)
    ignored = torch.rand(2, 16, 16, generator=g) < ignore_frac
    label[ignored] = IGNORE
    return logits, label


def perfect_logits(label: torch.Tensor, k: int, scale: float = 30.0) -> torch.Tensor:
    safe = torch.where(label == IGNORE, 0, label)
    if k == 1:
        return (scale * (2.0 * safe - 1.0)).unsqueeze(1).float()
    return scale * F.one_hot(safe, k).permute(0, 3, 1, 2).float()


ALL_CASES = (
    [(name, 4) for name in MULTICLASS]
    + [(MIXED_SPEC, 4)]
    + [(name, k) for name in BINARY for k in (1, 2)]
    + [(name, 1) for name in MULTICLASS]
)


def case_id(case) -> str:
    spec, k = case
    return f"{spec if isinstance(spec, str) else spec['type']}-K{k}"


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_random_logits_finite_positive_with_finite_grads(case) -> None:
    spec, k = case
    logits, label = make_batch(k, binary=spec in BINARY)
    logits.requires_grad_(True)
    loss = build(spec)(logits, label)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 1e-3
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_perfect_prediction_gives_near_zero(case) -> None:
    spec, k = case
    _, label = make_batch(k, binary=spec in BINARY)
    loss = build(spec)(perfect_logits(label, k), label)
    assert 0.0 <= loss.item() < 1e-4


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_ignored_pixels_change_neither_value_nor_gradient(case) -> None:
    spec, k = case
    logits, label = make_batch(k, seed=3, ignore_frac=0.3, binary=spec in BINARY)
    ignored = (label == IGNORE).unsqueeze(1).expand_as(logits)
    other = logits.clone()
    other[ignored] = torch.randn(int(ignored.sum())) * 50.0
    loss_fn = build(spec)
    a = logits.clone().requires_grad_(True)
    b = other.clone().requires_grad_(True)
    la, lb = loss_fn(a, label), loss_fn(b, label)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    la.backward()
    lb.backward()
    assert a.grad[ignored].abs().max() == 0
    assert b.grad[ignored].abs().max() == 0
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_all_ignored_gives_connected_zero(case) -> None:
    spec, k = case
    logits = torch.randn(2, k, 16, 16, requires_grad=True)
    label = torch.full((2, 16, 16), IGNORE)
    loss = build(spec)(logits, label)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_stable_for_huge_logits() -> None:
    logits, label = make_batch()
    logits = logits * 1e4
    for spec in [*MULTICLASS, MIXED_SPEC]:
        x = logits.clone().requires_grad_(True)
        loss = build(spec)(x, label)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all(), spec


# -- cross entropy ----------------------------------------------------------------------
def test_cross_entropy_matches_torch() -> None:
    logits, label = make_batch()
    expected = F.cross_entropy(logits, label, ignore_index=IGNORE)
    torch.testing.assert_close(build("cross_entropy")(logits, label), expected)
    weight = [0.5, 2.0, 1.0, 3.0]
    expected_w = F.cross_entropy(logits, label, weight=torch.tensor(weight), ignore_index=IGNORE)
    got_w = build({"type": "cross_entropy", "weight": weight})(logits, label)
    torch.testing.assert_close(got_w, expected_w)
    assert not torch.allclose(got_w, expected)


def test_cross_entropy_legacy_mean_and_top_k() -> None:
    logits, label = make_batch()
    per_px = F.cross_entropy(logits, label, ignore_index=IGNORE, reduction="none")
    legacy = build({"type": "cross_entropy", "avg_non_ignore": False})(logits, label)
    torch.testing.assert_close(legacy, per_px.sum() / label.numel())
    valid = per_px[label != IGNORE]
    k = math.ceil(0.25 * valid.numel())
    expected = valid.sort(descending=True).values[:k].mean()
    got = build({"type": "cross_entropy", "top_k_percent_pixels": 0.25})(logits, label)
    torch.testing.assert_close(got, expected)


# -- OHEM -------------------------------------------------------------------------------
def test_ohem_keeps_hard_pixels_and_at_least_min_kept() -> None:
    logits, label = make_batch(seed=5)
    valid = label != IGNORE
    prob = logits.softmax(1).gather(1, torch.where(valid, label, 0).unsqueeze(1)).squeeze(1)
    n_hard = int(((prob < 0.7) & valid).sum())
    n_valid = int(valid.sum())
    assert 50 < n_hard < n_valid - 20  # the case exercises both branches below

    # few hard pixels needed: exactly the hard ones are kept
    loss_fn = OhemCrossEntropyLoss(thresh=0.7, min_kept=10, ignore_index=IGNORE)
    keep = loss_fn.kept_mask(logits, label)
    assert torch.equal(keep, (prob < 0.7) & valid)
    per_px = F.cross_entropy(logits, label, ignore_index=IGNORE, reduction="none")
    torch.testing.assert_close(loss_fn(logits, label), per_px[keep].mean())

    # min_kept above the hard count: the min_kept lowest-probability pixels are kept
    min_kept = n_hard + 15
    keep = OhemCrossEntropyLoss(0.7, min_kept, IGNORE).kept_mask(logits, label)
    assert int(keep.sum()) >= min_kept and not keep[~valid].any()
    kth = prob[valid].sort().values[min_kept - 1]
    assert torch.equal(keep, (prob <= kth) & valid)

    # more than the valid pixels requested: every valid pixel is kept (plain CE)
    big = OhemCrossEntropyLoss(0.7, 10**6, IGNORE)
    assert torch.equal(big.kept_mask(logits, label), valid)
    torch.testing.assert_close(
        big(logits, label), F.cross_entropy(logits, label, ignore_index=IGNORE)
    )


# -- dice -------------------------------------------------------------------------------
def test_dice_matches_formula_with_weights() -> None:
    logits, label = make_batch(k=3, seed=7)
    valid = label != IGNORE
    prob = logits.softmax(1)
    terms = []
    for c in range(3):
        p = prob[:, c][valid]
        y = (label[valid] == c).float()
        terms.append(1 - (2 * (p * y).sum() + 1.0) / (p.sum() + y.sum() + 1.0))
    weight = [1.0, 2.0, 0.5]
    expected = sum(w * t for w, t in zip(weight, terms, strict=True)) / 3
    got = build({"type": "dice", "weight": weight})(logits, label)
    torch.testing.assert_close(got, expected)


# -- Lovasz -----------------------------------------------------------------------------
def jaccard_loss_of_set(errors_set: set[int], fg: set[int]) -> float:
    """Delta_J(M) = |M| / |F u M| (Berman et al. 2018, Eq. 3 rewritten with M)."""
    union = fg | errors_set
    return len(errors_set) / len(union) if union else 0.0


def lovasz_reference(prob: list[list[float]], label: list[int], num_classes: int) -> float:
    """By the definition: sort the errors, sum m_(i) * (Delta(S_i) - Delta(S_{i-1}))."""
    losses = []
    pixels = [i for i, y in enumerate(label) if y != IGNORE]
    for c in range(num_classes):
        fg = {i for i in pixels if label[i] == c}
        if not fg:
            continue  # classes="present"
        err = {i: abs((1.0 if label[i] == c else 0.0) - prob[i][c]) for i in pixels}
        order = sorted(pixels, key=lambda i: -err[i])
        total, prev = 0.0, 0.0
        for n in range(1, len(order) + 1):
            cur = jaccard_loss_of_set(set(order[:n]), fg)
            total += err[order[n - 1]] * (cur - prev)
            prev = cur
        losses.append(total)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("shape,seed", [((1, 2, 2, 2), 0), ((1, 3, 3, 3), 1), ((2, 3, 3, 4), 2)])
def test_lovasz_matches_brute_force_definition(shape, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    b, k, h, w = shape
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    label = torch.randint(0, k, (b, h, w), generator=g)
    if h * w > 4:
        label[0, 0, 1] = IGNORE
    prob = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, k).tolist()
    expected = lovasz_reference(prob, label.flatten().tolist(), k)
    got = LovaszSoftmaxLoss(IGNORE)(logits, label)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_lovasz_of_hard_predictions_is_one_minus_iou() -> None:
    """The Lovasz extension equals the Jaccard loss at 0/1 errors."""
    _, label = make_batch(k=3, seed=9)
    g = torch.Generator().manual_seed(10)
    pred = torch.randint(0, 3, label.shape, generator=g)
    logits = 40.0 * F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    valid = label != IGNORE
    ious = []
    for c in range(3):
        t, p = (label == c) & valid, (pred == c) & valid
        if t.any():
            ious.append((t & p).sum() / (t | p).sum())
    expected = 1 - torch.stack(ious).float().mean()
    torch.testing.assert_close(build("lovasz_softmax")(logits, label), expected)


def test_lovasz_per_image_is_mean_of_images() -> None:
    logits, label = make_batch(seed=11)
    per_image = LovaszSoftmaxLoss(IGNORE, per_image=True)(logits, label)
    single = LovaszSoftmaxLoss(IGNORE)
    expected = (single(logits[:1], label[:1]) + single(logits[1:], label[1:])) / 2
    torch.testing.assert_close(per_image, expected)


# -- focal / binary ---------------------------------------------------------------------
def test_focal_matches_formula() -> None:
    logits, label = make_batch(seed=12)
    valid = label != IGNORE
    logpt = logits.log_softmax(1).gather(1, torch.where(valid, label, 0).unsqueeze(1)).squeeze(1)
    base = -((1 - logpt.exp()) ** 2) * logpt
    torch.testing.assert_close(build("focal")(logits, label), 0.25 * base[valid].mean())
    alpha = [0.1, 0.2, 0.3, 0.4]
    a = torch.tensor(alpha)[torch.where(valid, label, 0)]
    got = build({"type": "focal", "alpha": alpha, "gamma": 2.0})(logits, label)
    torch.testing.assert_close(got, (a * base)[valid].mean())


def test_bce_two_channel_equals_one_channel_and_torch() -> None:
    logits, label = make_batch(k=2, seed=13)
    diff = (logits[:, 1] - logits[:, 0]).unsqueeze(1)
    valid = label != IGNORE
    target = (label == 1).float()
    expected = F.binary_cross_entropy_with_logits(
        diff[:, 0][valid], target[valid], pos_weight=torch.tensor(3.0)
    )
    loss_fn = build({"type": "bce", "pos_weight": 3.0})
    torch.testing.assert_close(loss_fn(logits, label), expected)
    torch.testing.assert_close(loss_fn(diff, label), expected)
    with pytest.raises(ValueError, match="1 or 2 channels"):
        loss_fn(torch.randn(2, 3, 16, 16), label)


def test_bce_dice_is_weighted_sum() -> None:
    logits, label = make_batch(k=1, seed=14)
    valid = label != IGNORE
    p = torch.sigmoid(logits[:, 0])[valid]
    y = (label[valid] == 1).float()
    dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    bce = F.binary_cross_entropy_with_logits(logits[:, 0][valid], y)
    got = build({"type": "bce_dice", "bce_weight": 0.3, "dice_weight": 2.0})(logits, label)
    torch.testing.assert_close(got, 0.3 * bce + 2.0 * dice)


# -- composition ------------------------------------------------------------------------
def test_mixed_is_weighted_sum() -> None:
    logits, label = make_batch(seed=15)
    got = build(MIXED_SPEC)(logits, label)
    expected = 0.8 * build("cross_entropy")(logits, label) + 0.2 * build("lovasz_softmax")(
        logits, label
    )
    torch.testing.assert_close(got, expected)
    with pytest.raises(ConfigError, match="coef"):
        build({"type": "mixed", "losses": ["dice"], "coef": [1.0, 2.0]})


def test_build_seg_losses_names_and_coefs_with_aux_outputs() -> None:
    main, label = make_batch(seed=16)
    aux, _ = make_batch(seed=17)
    ce = build("cross_entropy")
    head = build_seg_losses([{"type": "cross_entropy"}], [1.0, 0.4], IGNORE)
    terms = head([main, aux], label)
    assert list(terms) == ["loss_ce", "loss_ce_aux1"]
    torch.testing.assert_close(terms["loss_ce"], ce(main, label))
    torch.testing.assert_close(terms["loss_ce_aux1"], 0.4 * ce(aux, label))
    # eval mode: only the main output
    assert list(head([main], label)) == ["loss_ce"]

    head2 = build_seg_losses([MIXED_SPEC, "ohem_cross_entropy", "dice"], [1.0, 0.5, 0.25])
    terms2 = head2([main, aux, main], label)
    assert list(terms2) == ["loss_mixed", "loss_ohem_aux1", "loss_dice_aux2"]
    torch.testing.assert_close(terms2["loss_dice_aux2"], 0.25 * build("dice")(main, label))
    main.requires_grad_(True)
    sum(head2([main, aux, main], label).values()).backward()
    assert torch.isfinite(main.grad).all() and main.grad.abs().sum() > 0

    with pytest.raises(ConfigError, match="coef"):
        build_seg_losses(["cross_entropy", "dice"], [1.0, 0.4, 0.4])
    with pytest.raises(ConfigError, match="outputs"):
        head([main, aux, aux], label)


def test_registry_names_and_kwargs() -> None:
    for name in [*MULTICLASS, *BINARY, "mixed"]:
        assert name in LOSSES
    with pytest.raises(ConfigError, match="thresh"):
        LOSSES.build({"type": "ohem_cross_entropy", "treshold": 0.5})


def test_class_weight_length_is_checked() -> None:
    logits, label = make_batch()
    with pytest.raises(ValueError, match="3 entries"):
        build({"type": "cross_entropy", "weight": [1, 1, 1]})(logits, label)
    with pytest.raises(ConfigError, match="per-class"):
        build({"type": "dice", "weight": 2.0})


def test_gradient_matches_finite_differences_for_small_case() -> None:
    g = torch.Generator().manual_seed(18)
    logits = torch.randn(1, 3, 2, 3, generator=g, dtype=torch.float64)
    label = torch.tensor([[[0, 1, 2], [2, IGNORE, 1]]])
    for spec in ["cross_entropy", "dice", "focal", "lovasz_softmax"]:
        fn = build(spec)
        x = logits.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t, fn=fn: fn(t, label), (x,)), spec


def test_k1_softmax_losses_equal_their_two_channel_form() -> None:
    logits, label = make_batch(k=1, seed=19)
    two = torch.cat([torch.zeros_like(logits), logits], 1)
    for name in MULTICLASS:
        fn = build(name)
        torch.testing.assert_close(fn(logits, label), fn(two, label))


def test_cases_cover_every_registered_loss() -> None:
    covered = {c[0] if isinstance(c[0], str) else c[0]["type"] for c in ALL_CASES}
    expected = {"cross_entropy", "ohem_cross_entropy", "dice", "lovasz_softmax", "focal"}
    assert expected | {"bce", "bce_dice", "mixed"} <= covered


@pytest.mark.parametrize("ignored", [True, False])
def test_dice_gradient_matches_one_hot_formula(ignored: bool) -> None:
    """The gather/histogram form gives the one-hot formula's value and gradient."""
    logits, label = make_batch(k=4, seed=11)
    if not ignored:
        label = torch.where(label == IGNORE, torch.zeros_like(label), label)
    logits.requires_grad_(True)
    valid = (label != IGNORE).unsqueeze(1).float()
    onehot = F.one_hot(torch.where(label == IGNORE, 0, label), 4).permute(0, 3, 1, 2) * valid
    prob = logits.softmax(1) * valid
    inter, card = (prob * onehot).sum((0, 2, 3)), (prob + onehot).sum((0, 2, 3))
    expected = (1 - (2 * inter + 1.0) / (card + 1.0)).mean()
    (g_expected,) = torch.autograd.grad(expected, logits)
    got = build("dice")(logits, label)
    (g_got,) = torch.autograd.grad(got, logits)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g_got, g_expected)
