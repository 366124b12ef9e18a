"""Linear-chain CRF over word-level emissions, with a torch-free Viterbi for deployment.

ERNIE's NER fine-tune optionally puts a CRF on top of the encoder so that the predicted tag
sequence is scored jointly (a tag depends on its neighbour) instead of token by token. The
task gathers the first sub-token of every word into a compact, left-aligned (B, W, T)
tensor before calling this module, so masks here are always a prefix of True values.

Exported models output emissions only; ``transition_arrays`` gives the (constraint-applied)
start/end/transition matrices for ``deploy.yaml`` and ``viterbi_decode_numpy`` decodes with
them at predict/serve time without torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["CRF", "viterbi_decode_numpy"]

_IMPOSSIBLE = -1e4


def _split_tag(name: str) -> tuple[str, str]:
    """("B", "PER") for "B-PER"; ("O", "") for "O" or any tag without a B/I/E/S prefix."""
    if len(name) > 2 and name[1] == "-" and name[0] in "BIES":
        return name[0], name[2:]
    return "O", ""


class CRF(nn.Module):
    """Linear-chain CRF: ``forward`` gives the mean NLL, ``decode`` the Viterbi paths.

    ``transitions[i, j]`` scores moving from tag ``i`` to tag ``j``. The log-partition and
    Viterbi recursions are vectorised over the batch and loop only over time; scores are
    computed in float32 even under autocast, since fp16 log-sum-exp over long sentences
    loses the gold-path margin.
    """

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = num_tags
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        # Hard constraints (0 or -1e4) added to the learned scores; zeros until constrain_bio.
        self.register_buffer("start_constraint", torch.zeros(num_tags))
        self.register_buffer("end_constraint", torch.zeros(num_tags))
        self.register_buffer("transition_constraint", torch.zeros(num_tags, num_tags))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.start_transitions, -0.1, 0.1)
        nn.init.uniform_(self.end_transitions, -0.1, 0.1)
        nn.init.uniform_(self.transitions, -0.1, 0.1)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"

    # ------------------------------------------------------------------ constraints

    def constrain_bio(self, tag_names: list[str]) -> None:
        """Forbid transitions that make an invalid tag sequence, so decode is always valid.

        BIO: no ``I-X`` after start, ``O`` or a tag of another type. If any tag starts with
        ``E-``/``S-`` the IOBES rules apply as well (``I-X``/``E-X`` only after ``B-X``/
        ``I-X``, and ``B-X``/``I-X`` must be followed by ``I-X``/``E-X``). Tags without a
        B/I/E/S prefix act as ``O``. The penalty also enters the NLL, so gold sequences
        must themselves be valid.
        """
        if len(tag_names) != self.num_tags:
            raise ValueError(f"{len(tag_names)} tag names for a CRF with {self.num_tags} tags")
        iobes = any(_split_tag(t)[0] in ("E", "S") for t in tag_names)
        start = torch.zeros(self.num_tags)
        end = torch.zeros(self.num_tags)
        trans = torch.zeros(self.num_tags, self.num_tags)
        for j, nxt in enumerate(tag_names):
            n_pre, n_type = _split_tag(nxt)
            if n_pre in ("I", "E"):
                start[j] = _IMPOSSIBLE
            for i, prev in enumerate(tag_names):
                p_pre, p_type = _split_tag(prev)
                continues = n_pre == "I" or (iobes and n_pre == "E")
                if continues:
                    ok = p_pre in ("B", "I") and p_type == n_type
                elif iobes:  # O, B-, S- (and E- handled above) may not follow an open entity
                    ok = p_pre not in ("B", "I")
                else:
                    ok = True
                if not ok:
                    trans[i, j] = _IMPOSSIBLE
        if iobes:
            for i, prev in enumerate(tag_names):
                if _split_tag(prev)[0] in ("B", "I"):
                    end[i] = _IMPOSSIBLE
        dev = self.transitions.device
        self.start_constraint.copy_(start.to(dev))
        self.end_constraint.copy_(end.to(dev))
        self.transition_constraint.copy_(trans.to(dev))

    def _scores(self) -> tuple[Tensor, Tensor, Tensor]:
        """Learned scores plus hard constraints, in float32."""
        return (
            self.start_transitions.float() + self.start_constraint,
            self.end_transitions.float() + self.end_constraint,
            self.transitions.float() + self.transition_constraint,
        )

    def transition_arrays(self) -> dict[str, np.ndarray]:
        """Constraint-applied start/end/transitions as float32 numpy, for deploy files."""
        start, end, trans = (t.detach().cpu().numpy().astype(np.float32) for t in self._scores())
        return {"start": start, "end": end, "transitions": trans}

    # ------------------------------------------------------------------ checks

    def _check(self, emissions: Tensor, mask: Tensor, tags: Tensor | None = None) -> Tensor:
        if emissions.dim() != 3 or emissions.size(-1) != self.num_tags:
            raise ValueError(
                f"emissions must be (B, L, {self.num_tags}), got {tuple(emissions.shape)}"
            )
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} vs emissions {tuple(emissions.shape)}")
        if tags is not None and tags.shape != emissions.shape[:2]:
            raise ValueError(f"tags {tuple(tags.shape)} vs emissions {tuple(emissions.shape)}")
        mask = mask.bool()
        if emissions.size(1) == 0 or not bool(mask[:, 0].all()):
            raise ValueError("mask[:, 0] must be True for every sequence (no empty sequences)")
        return mask

    # ------------------------------------------------------------------ training

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Mean negative log-likelihood of ``tags`` over the batch.

        Tags under ``mask == False`` are ignored (they may hold -100).
        """
        mask = self._check(emissions, mask, tags)
        if emissions.size(0) == 0:
            return emissions.sum() * 0.0
        em = emissions.float()
        start, end, trans = self._scores()
        tags = tags.long().masked_fill(~mask, 0)
        maskf = mask.to(em.dtype)

        # Gold path score, vectorised over time (the mask is a left-aligned prefix).
        emit = em.gather(2, tags.unsqueeze(-1)).squeeze(-1)  # (B, L)
        gold = start[tags[:, 0]] + (emit * maskf).sum(1)
        if tags.size(1) > 1:
            gold = gold + (trans[tags[:, :-1], tags[:, 1:]] * maskf[:, 1:]).sum(1)
        last = mask.long().sum(1) - 1
        gold = gold + end[tags.gather(1, last.unsqueeze(1)).squeeze(1)]

        # Log-partition by the forward algorithm.
        alpha = start + em[:, 0]  # (B, T)
        for t in range(1, em.size(1)):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans + em[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
        log_z = torch.logsumexp(alpha + end, dim=1)
        return (log_z - gold).mean()

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor) -> list[list[int]]:
        """Best tag sequence per item, each as long as its mask."""
        mask = self._check(emissions, mask)
        batch, length, num_tags = emissions.shape
        if batch == 0:
            return []
        em = emissions.float()
        start, end, trans = self._scores()
        identity = torch.arange(num_tags, device=em.device).expand(batch, num_tags)

        score = start + em[:, 0]
        history = []
        for t in range(1, length):
            best, idx = (score.unsqueeze(2) + trans + em[:, t].unsqueeze(1)).max(dim=1)
            m = mask[:, t].unsqueeze(1)
            score = torch.where(m, best, score)
            # Past a sequence's end the back-pointer is the identity, so backtracking from
            # the last column walks unchanged to the sequence's true last tag.
            history.append(torch.where(m, idx, identity))
        tag = (score + end).argmax(dim=1)  # (B,)
        path = [tag]
        for idx in reversed(history):
            tag = idx.gather(1, tag.unsqueeze(1)).squeeze(1)
            path.append(tag)
        paths = torch.stack(path[::-1], dim=1).cpu().tolist()
        lengths = mask.long().sum(1).cpu().tolist()
        return [p[:n] for p, n in zip(paths, lengths, strict=True)]


def viterbi_decode_numpy(
    emissions: np.ndarray,
    mask: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    transitions: np.ndarray,
) -> list[list[int]]:
    """``CRF.decode`` in numpy, for exported models that output emissions only.

    Pass the matrices from ``CRF.transition_arrays`` (constraints already added).
    """
    em = np.asarray(emissions, dtype=np.float32)
    mask = np.asarray(mask).astype(bool)
    start = np.asarray(start, dtype=np.float32)
    end = np.asarray(end, dtype=np.float32)
    trans = np.asarray(transitions, dtype=np.float32)
    if em.ndim != 3 or mask.shape != em.shape[:2]:
        raise ValueError(f"emissions {em.shape} must be (B, L, T) with mask (B, L)")
    batch, length, num_tags = em.shape
    if batch == 0:
        return []
    if length == 0 or not mask[:, 0].all():
        raise ValueError("mask[:, 0] must be True for every sequence (no empty sequences)")
    identity = np.broadcast_to(np.arange(num_tags), (batch, num_tags))

    score = start + em[:, 0]
    history = []
    for t in range(1, length):
        cand = score[:, :, None] + trans[None] + em[:, t, None, :]
        idx = cand.argmax(axis=1)
        best = np.take_along_axis(cand, idx[:, None, :], axis=1)[:, 0]
        m = mask[:, t, None]
        score = np.where(m, best, score)
        history.append(np.where(m, idx, identity))
    tag = (score + end).argmax(axis=1)
    path = [tag]
    for idx in reversed(history):
        tag = np.take_along_axis(idx, tag[:, None], axis=1)[:, 0]
        path.append(tag)
    paths = np.stack(path[::-1], axis=1)
    lengths = mask.sum(1)
    return [paths[b, : lengths[b]].tolist() for b in range(batch)]
