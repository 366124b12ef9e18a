"""Distillation: a fine-tuned teacher taught to tiny, fast students."""
