"""CTR training engine: fused row optimizers, the sync/Hogwild/DDP trainers, streaming."""
