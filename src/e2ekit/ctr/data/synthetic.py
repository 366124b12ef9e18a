"""Synthetic Criteo TSV with a known click model, so CTR models can be scored against truth.

Categoricals follow per-slot Zipf laws with cardinalities from a handful to ~10^5, integers
are heavy-tailed with 10-40% missing, and clicks come from a hidden logistic model with
per-value weights on several slots, a few pairwise crosses (models with crosses win) and
dense terms. The true click probability of every row is saved (``probs.npy``) next to the
sampled labels (``labels.npy``), so the Bayes-optimal AUC is known exactly.

An optional :class:`Interaction` plants one strong field-pair interaction: a weight per value
PAIR of two slots, unrelated across pairs, so a lookup table of the pair learns it from data
while low-rank products of per-value embeddings only approximate it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from e2ekit.ctr.data.criteo import N_DENSE, N_SPARSE
from e2ekit.ctr.metrics import roc_auc as auc  # moved; e2ekit.ctr.data.auc still works

BLOCK_ROWS = 100_000  # generated and written a block at a time: memory stays flat
_PARTITION = re.compile(r"^\d{8}/\d{2}$")
_U64 = np.uint64


@dataclass(frozen=True)
class Interaction:
    """A planted pairwise interaction: ``scale * u(a_value, b_value)`` added to the click logit,
    ``u`` a fixed pseudo-random unit-variance weight per value pair (0 when either is missing).

    ``slot_a`` / ``slot_b`` are 0-based slot indices (0 = C1); pick two of moderate
    cardinality (hundreds) so the pair's table is learnable from the data
    (:func:`hidden_world` lists cardinalities and the slots the click model already uses).
    """

    slot_a: int
    slot_b: int
    scale: float = 1.5

    def __post_init__(self) -> None:
        for slot in (self.slot_a, self.slot_b):
            if not 0 <= slot < N_SPARSE:
                raise ValueError(f"interaction slot {slot} is not within [0, {N_SPARSE})")
        if self.slot_a == self.slot_b:
            raise ValueError("interaction slots must differ")
        if not self.scale > 0:
            raise ValueError("interaction scale must be > 0")


@dataclass
class SyntheticCriteo:
    """What the generator wrote: data files, truth side files and the realised CTR."""

    files: list[Path]
    probs_path: Path
    labels_path: Path
    ctr: float

    def bayes_auc(self) -> float:
        return bayes_auc(self.probs_path.parent)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a cheap stateless pseudo-random function of integers."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64) + _U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def _sym_uniform(x: np.ndarray) -> np.ndarray:
    """Deterministic value in [-sqrt3, sqrt3) (unit variance) per integer key."""
    return ((_mix(x) >> _U64(11)).astype(np.float64) / 2.0**53 * 2 - 1) * np.sqrt(3.0)


class _Model:
    """The hidden world: vocabularies, frequency laws and click weights, fixed by seed."""

    def __init__(self, seed: int, ctr: float, interaction: Interaction | None = None) -> None:
        rng = np.random.default_rng([seed, 0])
        self.seed = seed
        self.interaction = interaction  # draws nothing: the default world is unchanged
        self.card = np.unique(np.round(np.logspace(0.5, 5, N_SPARSE)).astype(np.int64))
        self.card = rng.permutation(np.resize(self.card, N_SPARSE))
        self.zipf_a = rng.uniform(0.9, 1.4, N_SPARSE)
        self.cat_missing = rng.choice([0.0, 0.0, 0.0, 0.02, 0.1, 0.4], N_SPARSE)
        self.vocab = [pa.array([f"{v:08x}" for v in rng.integers(0, 2**32, k)]) for k in self.card]
        self.freq = []
        for k, a in zip(self.card, self.zipf_a, strict=True):
            p = 1.0 / np.arange(1, k + 1) ** a
            self.freq.append(np.cumsum(p) / p.sum())
        self.dense_missing = rng.uniform(0.1, 0.4, N_DENSE)
        self.dense_mu = rng.uniform(0.0, 4.0, N_DENSE)
        self.dense_sigma = rng.uniform(0.8, 2.0, N_DENSE)
        self.dense_w = rng.normal(0.0, 0.25, N_DENSE) * (rng.random(N_DENSE) < 0.6)
        self.dense_center = self.dense_mu
        self.slot_w = rng.choice(N_SPARSE, 8, replace=False)
        self.slot_scale = rng.uniform(0.3, 0.8, 8)
        small = np.flatnonzero(self.card <= 1000)
        self.crosses = [tuple(rng.choice(small, 2, replace=False)) for _ in range(3)]
        self.cross_scale = rng.uniform(0.6, 1.0, 3)
        self.bias = 0.0
        pilot = self.sample(min(50_000, BLOCK_ROWS), np.random.default_rng([seed, 1]))[2]
        self.bias = _calibrate(pilot, ctr)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dense float64 with NaN = missing, categorical ranks with -1 = missing, logit)."""
        cats = np.empty((n, N_SPARSE), dtype=np.int64)
        for s in range(N_SPARSE):
            ranks = np.searchsorted(self.freq[s], rng.random(n), side="right")
            ranks = np.minimum(ranks, self.card[s] - 1)
            cats[:, s] = np.where(rng.random(n) < self.cat_missing[s], -1, ranks)
        dense = np.floor(np.exp(rng.normal(self.dense_mu, self.dense_sigma, (n, N_DENSE)))) - 1
        dense[:, 1] -= rng.integers(0, 3, n) * (rng.random(n) < 0.1)  # I2 has small negatives
        dense[rng.random((n, N_DENSE)) < self.dense_missing] = np.nan
        logit = np.full(n, self.bias)
        feat = np.log1p(np.maximum(np.nan_to_num(dense, nan=0.0), 0)) - self.dense_center
        logit += np.where(np.isnan(dense), -0.1, feat * self.dense_w).sum(axis=1)
        for s, scale in zip(self.slot_w, self.slot_scale, strict=True):
            key = cats[:, s] + (self.seed * 131 + int(s)) * 10_000_019
            logit += np.where(cats[:, s] < 0, 0.0, scale * _sym_uniform(key))
        for (a, b), scale in zip(self.crosses, self.cross_scale, strict=True):
            salt = (self.seed * 7919 + int(a) * 31 + int(b)) << 24
            key = (cats[:, a] + 1) * 1_000_003 + cats[:, b] + salt
            missing = (cats[:, a] < 0) | (cats[:, b] < 0)
            logit += np.where(missing, 0.0, scale * _sym_uniform(key))
        if self.interaction is not None:
            logit += self.planted(cats)
        return dense, cats, logit

    def planted(self, cats: np.ndarray) -> np.ndarray:
        """The planted interaction's logit term per row (``(n,)``)."""
        a, b = self.interaction.slot_a, self.interaction.slot_b
        # bit 62 set: apart from the crosses' keys; the rest stays within int64 for any seed
        salt = (((self.seed * 104_729 + a * 37 + b + 1) << 24) % (1 << 61)) + (1 << 62)
        key = (cats[:, a] + 1) * 1_000_003 + cats[:, b] + salt
        missing = (cats[:, a] < 0) | (cats[:, b] < 0)
        return np.where(missing, 0.0, self.interaction.scale * _sym_uniform(key))

    def table(self, dense: np.ndarray, cats: np.ndarray, labels: np.ndarray) -> pa.Table:
        cols: dict[str, pa.Array] = {"label": pa.array(labels.astype(np.int8))}
        for j in range(N_DENSE):
            col = dense[:, j]
            cols[f"I{j + 1}"] = pa.array(np.nan_to_num(col).astype(np.int64), mask=np.isnan(col))
        for s in range(N_SPARSE):
            ranks = cats[:, s]
            idx = pa.array(np.maximum(ranks, 0), mask=ranks < 0)
            cols[f"C{s + 1}"] = self.vocab[s].take(idx)
        return pa.table(cols)


@functools.lru_cache(maxsize=4)
def _hidden_world(seed: int, ctr: float, interaction: Interaction | None = None) -> _Model:
    """One hidden world per (seed, ctr, interaction), built once a process (0.5 s): the
    train, val and test splits are draws from the same one. Read-only after construction."""
    return _Model(seed, ctr, interaction)


def hidden_world(seed: int = 0, ctr: float = 0.12) -> dict[str, list]:
    """What the click model of ``seed`` uses, to choose slots for an :class:`Interaction` (or
    a column no weight reads): per-slot cardinality, Zipf exponent and missing rate, the
    slots with per-value weights and the crossed slot pairs (0-based slot indices)."""
    model = _hidden_world(seed, ctr)
    return {
        "cardinality": [int(c) for c in model.card],
        "zipf_a": [round(float(a), 3) for a in model.zipf_a],
        "missing": [float(m) for m in model.cat_missing],
        "weighted_slots": sorted(int(s) for s in model.slot_w),
        "crosses": [[int(a), int(b)] for a, b in model.crosses],
    }


def _calibrate(logit: np.ndarray, ctr: float) -> float:
    """Bias shift making the mean click probability equal ``ctr`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(logit + mid)))) < ctr:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def write_synthetic_criteo(
    out_dir: str | Path,
    *,
    rows: int,
    seed: int = 0,
    partitions: list[str] | None = None,
    ctr: float = 0.12,
    sample: int = 0,
    interaction: Interaction | None = None,
) -> SyntheticCriteo:
    """Write ``rows`` Criteo-format rows; same seed, same bytes.

    Without partitions: ``out_dir/part-0.tsv``. With partitions ('YYYYMMDD/HH'), rows are
    split evenly in order into ``out_dir/YYYYMMDD/HH/part-0.tsv``, each followed by a
    ``_SUCCESS`` donefile (written last, as streaming trainers expect). ``sample`` picks an
    independent draw from the same hidden world (same ``seed``): train 0, validation 1, ...
    ``interaction`` plants a pairwise term (default none: the data is the same bytes as
    without the argument); train and val must be written with the same one.
    """
    if rows < 1:
        raise ValueError("rows must be >= 1")
    if not 0.01 <= ctr <= 0.5:
        raise ValueError("ctr must be within [0.01, 0.5]")
    for part in partitions or []:
        if not _PARTITION.match(part):
            raise ValueError(f"partition {part!r} is not 'YYYYMMDD/HH'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = _hidden_world(seed, ctr, interaction)
    parts = partitions or [None]
    bounds = np.linspace(0, rows, len(parts) + 1).round().astype(int)
    probs_all, labels_all, files = [], [], []
    block = 0
    opts = pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    for part, start, stop in zip(parts, bounds[:-1], bounds[1:], strict=True):
        folder = out / part if part else out
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "part-0.tsv"
        with pa.OSFile(str(path), "wb") as sink:
            for lo in range(start, stop, BLOCK_ROWS):
                n = min(BLOCK_ROWS, stop - lo)
                rng = np.random.default_rng([seed, 2, block] + ([sample] if sample else []))
                block += 1
                dense, cats, logit = model.sample(n, rng)
                prob = 1 / (1 + np.exp(-logit))
                labels = (rng.random(n) < prob).astype(np.int8)
                pcsv.write_csv(model.table(dense, cats, labels), sink, write_options=opts)
                probs_all.append(prob.astype(np.float32))
                labels_all.append(labels)
        files.append(path)
        if part:
            (folder / "_SUCCESS").touch()
    probs = np.concatenate(probs_all)
    labels = np.concatenate(labels_all)
    np.save(out / "probs.npy", probs)
    np.save(out / "labels.npy", labels)
    return SyntheticCriteo(files, out / "probs.npy", out / "labels.npy", float(labels.mean()))


def bayes_auc(out_dir: str | Path) -> float:
    """AUC of the true click probabilities vs the sampled labels: the best any model can do."""
    out = Path(out_dir)
    return auc(np.load(out / "labels.npy"), np.load(out / "probs.npy"))
