"""Shared core of every e2ekit kit: config, registry, engine, export, runtime, serving, CLI."""
