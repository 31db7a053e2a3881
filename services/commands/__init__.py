"""The ``linewatch`` commands and the composition root (``compose.py``) they share.

The only package that wires the others together: commands open adapters by URL, load models and
choose which runtime gets which port; the packages below them (steps, inference, stream, api,
storage, ingest, vision) never import this one.
"""
