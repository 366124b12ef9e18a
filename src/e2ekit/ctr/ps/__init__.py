"""Asynchronous parameter-server training on Ray (``train.mode: ps``)."""
