"""CTR kit: Criteo data, CTR models, async and streaming training, sparse-store export."""
