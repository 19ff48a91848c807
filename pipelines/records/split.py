"""Patient-level train/val/test assignment from the salted patient key."""

from __future__ import annotations

from medprep.pipelines.records.privacy import unit_interval

SPLITS = ("train", "val", "test")


def assign_split(patient_key: str, val_fraction: float, test_fraction: float) -> str:
    """'test' if u < test_fraction, 'val' if u < test+val, else 'train'; u from the key."""
    u = unit_interval(patient_key)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def split_fractions(val_fraction: float, test_fraction: float) -> dict[str, float]:
    """The expected share of patients in each split that can receive examples."""
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    return {split: f for split, f in fractions.items() if f > 0}
