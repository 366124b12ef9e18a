"""CTR networks; importing this package registers them in ``MODELS``."""

from e2ekit.ctr.models import embedding, zoo
from e2ekit.ctr.models.embedding import SlotEmbedding, SlotLinear, sparse_parameters

__all__ = ["SlotEmbedding", "SlotLinear", "embedding", "sparse_parameters", "zoo"]
