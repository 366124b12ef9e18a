"""Toy kit: an MLP on generated tabular data that exercises the whole core end to end.

It is the template for real kits (same shape: data, model, task, kit) and what
``make demo`` runs until the first real kit lands.
"""
