"""Connectors that turn image references into bytes."""
