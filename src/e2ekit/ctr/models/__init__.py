"""CTR networks; importing this package registers them in ``MODELS``."""

from e2ekit.ctr.models import embedding, interaction, zoo
from e2ekit.ctr.models.embedding import SlotEmbedding, SlotLinear, sparse_parameters

__all__ = ["SlotEmbedding", "SlotLinear", "embedding", "interaction", "sparse_parameters", "zoo"]
