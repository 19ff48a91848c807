"""Beam pipelines, options, connectors and sinks of medprep."""
