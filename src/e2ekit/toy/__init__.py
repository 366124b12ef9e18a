"""Toy kit: an MLP on generated tabular data that exercises the whole core end to end.

It is the template for real kits, with the same roles in small: ``data``, ``model``,
``task`` (config and the engine interface), ``runner`` (deploy-side pre/post-processing
for predict and serve) and ``kit`` (CLI wiring).
"""
