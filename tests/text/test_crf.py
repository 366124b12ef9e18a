"""CRF against brute-force enumeration of every tag sequence on tiny sizes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from e2ekit.text.models import CRF, viterbi_decode_numpy

T = 3


def _seq_score(crf: CRF, em: torch.Tensor, seq: tuple[int, ...]) -> torch.Tensor:
    start, end, trans = crf._scores()
    s = start[seq[0]] + em[0, seq[0]]
    for t in range(1, len(seq)):
        s = s + trans[seq[t - 1], seq[t]] + em[t, seq[t]]
    return s + end[seq[-1]]


def _brute(crf: CRF, em: torch.Tensor, n: int) -> tuple[torch.Tensor, list[int]]:
    """(log Z, best path) over all T**n sequences of the first n positions."""
    seqs = list(itertools.product(range(crf.num_tags), repeat=n))
    scores = torch.stack([_seq_score(crf, em, s) for s in seqs])
    return torch.logsumexp(scores, 0), list(seqs[int(scores.argmax())])


def _batch(seed: int, batch: int = 4, length: int = 4):
    g = torch.Generator().manual_seed(seed)
    em = torch.randn(batch, length, T, generator=g) * 2
    lengths = torch.tensor([length, 1, 3, 2][:batch])
    mask = torch.arange(length)[None] < lengths[:, None]
    tags = torch.randint(0, T, (batch, length), generator=g)
    tags = tags.masked_fill(~mask, -100)
    return em, tags, mask, lengths


@pytest.mark.parametrize("masked", [False, True])
def test_nll_and_decode_match_brute_force(masked):
    torch.manual_seed(0)
    crf = CRF(T)
    with torch.no_grad():  # larger transitions make the test sensitive to them
        crf.transitions.mul_(20)
        crf.start_transitions.mul_(10)
        crf.end_transitions.mul_(10)
    em, tags, mask, lengths = _batch(1)
    if not masked:
        mask = torch.ones_like(mask)
        lengths = torch.full_like(lengths, em.size(1))
        tags = tags.clamp(min=0)
    nll = crf(em, tags, mask)
    expected = []
    paths = crf.decode(em, mask)
    for b in range(em.size(0)):
        n = int(lengths[b])
        log_z, best = _brute(crf, em[b], n)
        gold = _seq_score(crf, em[b], tuple(tags[b, :n].tolist()))
        expected.append(log_z - gold)
        assert paths[b] == best
    assert nll.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5, abs=1e-5)


def test_numpy_decode_equals_torch_decode():
    g = torch.Generator().manual_seed(3)
    crf = CRF(5)
    with torch.no_grad():
        crf.transitions.copy_(torch.randn(5, 5, generator=g))
    em = torch.randn(8, 12, 5, generator=g)
    lengths = torch.randint(1, 13, (8,), generator=g)
    mask = torch.arange(12)[None] < lengths[:, None]
    arr = crf.transition_arrays()
    np_paths = viterbi_decode_numpy(em.numpy(), mask.numpy(), **arr)
    assert np_paths == crf.decode(em, mask)
    assert [len(p) for p in np_paths] == lengths.tolist()
    assert viterbi_decode_numpy(np.zeros((0, 3, 5)), np.zeros((0, 3), bool), **arr) == []


def test_gradients_flow_and_training_reduces_nll():
    torch.manual_seed(0)
    # Toy task: tag = (previous tag + 1) % 3 whatever the input; emissions carry only the
    # first tag, so the rest must be learned in the transitions.
    crf = CRF(T)
    batch, length = 16, 6
    first = torch.randint(0, T, (batch,))
    tags = (first[:, None] + torch.arange(length)[None]) % T
    em_param = torch.zeros(batch, length, T)
    em_param[torch.arange(batch), 0, first] = 3.0
    emissions = em_param.requires_grad_(True)
    mask = torch.ones(batch, length, dtype=torch.bool)

    loss0 = crf(emissions, tags, mask)
    loss0.backward()
    assert emissions.grad is not None and emissions.grad.abs().sum() > 0
    for p in crf.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0

    opt = torch.optim.Adam(crf.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        loss = crf(emissions.detach(), tags, mask)
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * loss0.item()
    assert crf.decode(emissions.detach(), mask) == tags.tolist()


def _valid_bio(names: list[str], path: list[int]) -> bool:
    prev = "O"
    for i in path:
        tag = names[i]
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return False
        prev = tag
    return True


def test_constrain_bio_guarantees_valid_sequences():
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    g = torch.Generator().manual_seed(5)
    em = torch.randn(32, 10, 5, generator=g) * 3
    em[:, :, [2, 4]] += 2.0  # push towards I- tags everywhere
    mask = torch.ones(32, 10, dtype=torch.bool)
    mask[::2, 7:] = False
    crf = CRF(5)
    assert not all(_valid_bio(names, p) for p in crf.decode(em, mask))
    crf.constrain_bio(names)
    paths = crf.decode(em, mask)
    assert all(_valid_bio(names, p) for p in paths)
    assert any(names[i].startswith("I-") for p in paths for i in p)  # still used when valid
    # The numpy decoder sees the same constraints through transition_arrays.
    assert viterbi_decode_numpy(em.numpy(), mask.numpy(), **crf.transition_arrays()) == paths
    # Constraints are buffers: they move with .to() and survive a state_dict round trip.
    fresh = CRF(5)
    fresh.load_state_dict(crf.state_dict())
    assert fresh.decode(em, mask) == paths


def test_constrain_iobes():
    names = ["O", "B-X", "I-X", "E-X", "S-X"]
    crf = CRF(5)
    crf.constrain_bio(names)
    em = torch.randn(16, 6, 5, generator=torch.Generator().manual_seed(2)) * 3
    for p in crf.decode(em, torch.ones(16, 6, dtype=torch.bool)):
        tags = ["O", *[names[i] for i in p], "O"]
        for a, b in itertools.pairwise(tags):
            open_ = a[0] in "BI"
            assert open_ == (b[0] in "IE"), tags


def test_input_checks_and_half_precision():
    crf = CRF(T)
    em = torch.randn(2, 3, T)
    with pytest.raises(ValueError, match="mask"):
        crf.decode(em, torch.tensor([[False, True, True], [True, True, False]]))
    with pytest.raises(ValueError):
        crf(torch.randn(2, 3, T + 1), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
    mask = torch.ones(2, 3, dtype=torch.bool)
    tags = torch.zeros(2, 3, dtype=torch.long)
    loss16 = crf(em.to(torch.bfloat16), tags, mask)
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
