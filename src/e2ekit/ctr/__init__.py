"""CTR kit: Criteo data, CTR models, async and streaming training (issue #5)."""
