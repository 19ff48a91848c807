"""Beam graphs: one per pipeline, and the DoFns, fan-out, dead letters and metrics they share."""
