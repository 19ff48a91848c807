"""Patient-level train/val/test assignment from the salted patient key."""
from __future__ import annotations

from pipelines.privacy import unit_interval

SPLITS = ("train", "val", "test")


def assign_split(patient_key: str, val_fraction: float, test_fraction: float) -> str:
    """'test' if u < test_fraction, 'val' if u < test+val, else 'train'; u from the key."""
    u = unit_interval(patient_key)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"
