"""Per-image hashes for leak checks across splits: a pixel digest (identical images whatever the encoding) and
a 64-bit DCT pHash (near duplicates), indexed with only a few bytes per image and per record.

`ImageIndex` keeps, per record, its example id, a split code and a patient number; per image a 16-byte
digest and optionally the 64-bit pHash — never pixels or encoded bytes — so verify and inspect can look for
images shared across splits over any number of records in memory that grows by tens of bytes per image.
"""

from __future__ import annotations

import hashlib
from array import array

import numpy as np
from PIL import Image

SPLIT_ORDER = ("train", "val", "test")
MAX_NEAR_PAIRS = 1000  # collected pairs are capped (reported as truncated) to bound memory
FLAT_STD = 2.0  # grey levels: a 32x32 thumbnail this flat has no structure to compare
PACK = 65536  # a packed image reference is record number * PACK + image index


def split_rank(split: str) -> int:
    """Sort key of a split name: train, val, test, then any other."""
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def _dct_matrix(n: int) -> np.ndarray:
    """DCT-II as a matrix, unnormalized (as scipy.fftpack.dct): C[k, i] = 2 cos(pi k (2i + 1) / 2n)."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT32 = _dct_matrix(32)


def phash(img: Image.Image) -> tuple[int, float]:
    """(64-bit perceptual hash, grey std of its 32x32 thumbnail): the 8x8 lowest frequencies of the 2D DCT of
    the image resized to 32x32 grey (LANCZOS), each bit 1 where the coefficient exceeds their median — the
    pHash of Zauner (2010) as the `imagehash` package computes it; bit 63 is coefficient [0, 0]."""
    grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big"), float(grey.std())


def pixel_digest(img: Image.Image) -> bytes | None:
    """128-bit hash of the decoded pixels and their shape (grey and palette as RGB, so one picture stored either
    way hashes the same); None for a one-colour image (padding, an empty slice: no patient in it)."""
    if img.mode in ("1", "L", "P"):
        img = img.convert("RGB")
    arr = np.ascontiguousarray(np.asarray(img))
    flat = arr.reshape(arr.shape[0] * arr.shape[1], -1) if arr.ndim >= 2 else arr.reshape(-1, 1)
    if flat.size == 0 or bool((flat == flat[0]).all()):
        return None
    h = hashlib.blake2b(f"{arr.dtype.str}{arr.shape}".encode(), digest_size=16)
    h.update(arr.data.cast("B"))
    return h.digest()


class ImageIndex:
    """Per record its example id, a split code and a patient number; per image only hashes (16-byte pixel digest,
    optional 64-bit pHash) under a packed (record, image) number."""

    def __init__(self, near: bool = False):
        self.near = near
        self._ids: list[str] = []  # record no -> example_id
        self._split = bytearray()  # record no -> index in self._split_names
        self._patient = array("I")  # record no -> patient no
        self._split_names: list[str] = []
        self._patients: dict[str, int] = {}
        # digest -> packed ref, or a list of them (distinct split/patient)
        self._exact: dict[bytes, int | list[int]] = {}
        self._phash, self._refs, self._digest64 = array("Q"), array("q"), array("Q")

    def __len__(self) -> int:
        return len(self._ids)

    def add_record(self, example_id: str, split: str, patient_key: str) -> int:
        """Register a record; returns its number for add_image."""
        if split not in self._split_names:
            self._split_names.append(split)
        self._ids.append(example_id)
        self._split.append(self._split_names.index(split))
        self._patient.append(self._patients.setdefault(patient_key, len(self._patients)))
        return len(self._ids) - 1

    def add_image(self, record: int, index: int, img: Image.Image) -> None:
        """Hash one decoded image of a registered record."""
        value, spread = phash(img) if self.near else (None, 0.0)
        self.add_hashes(record, index, pixel_digest(img), value if spread >= FLAT_STD else None)

    def add_hashes(self, record: int, index: int, digest: bytes | None, perceptual: int | None) -> None:
        """Hashes of one image (None: a one-colour image, a flat one for the pHash) of a registered record."""
        packed = record * PACK + index
        if digest is not None:
            held = self._exact.get(digest)
            if held is None:
                self._exact[digest] = packed
            else:
                held = held if isinstance(held, list) else [held]
                if all(self._owner(p) != self._owner(packed) for p in held):
                    self._exact[digest] = held + [packed]
        if self.near and perceptual is not None:
            self._phash.append(perceptual)
            self._refs.append(packed)
            self._digest64.append(int.from_bytes((digest or bytes(8))[:8], "big"))

    def _owner(self, packed: int) -> tuple[int, int]:
        """(split code, patient no) of a packed reference."""
        record = packed // PACK
        return self._split[record], self._patient[record]

    def describe(self, packed: int) -> tuple[str, int, str]:
        """(example_id, image index, split) of a packed reference."""
        record = packed // PACK
        return self._ids[record], packed % PACK, self._split_names[self._split[record]]

    def _sorted_refs(self, packed: list[int]) -> list[tuple[str, int, str]]:
        return sorted((self.describe(p) for p in packed), key=lambda d: (split_rank(d[2]), d[0], d[1]))

    def identical_across_splits(self) -> list[list[tuple[str, int, str]]]:
        """Groups of pixel-identical images that sit in two or more splits under different patient keys."""
        groups = []
        for held in self._exact.values():
            if not isinstance(held, list):
                continue
            owners = [self._owner(p) for p in held]
            if any(a[0] != b[0] and a[1] != b[1] for a in owners for b in owners):
                groups.append(self._sorted_refs(held))
        return sorted(groups)

    def near_pairs(
        self, distance: int, include_identical: bool = False, limit: int = MAX_NEAR_PAIRS
    ) -> tuple[list[tuple], bool]:
        """([(bits apart, (id, index, split), (id, index, split), identical)], truncated): image pairs whose pHashes
        differ in at most `distance` bits, in different splits under different patient keys.

        Pigeonhole search: the 64 bits are cut into distance + 1 blocks; two hashes within `distance` bits agree
        on at least one block, so only images sharing a block value are compared."""
        if not len(self._phash):
            return [], False
        hashes = np.frombuffer(self._phash, dtype=np.uint64)
        refs = np.frombuffer(self._refs, dtype=np.int64)
        digests = np.frombuffer(self._digest64, dtype=np.uint64)
        records = refs // PACK
        splits = np.frombuffer(bytes(self._split), dtype=np.uint8)[records].astype(np.int64)
        patients = np.frombuffer(self._patient, dtype=np.uint32)[records].astype(np.int64)
        bounds = np.linspace(0, 64, distance + 2).astype(int)
        found: dict[tuple[int, int], int] = {}
        truncated = False
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            key = (hashes >> np.uint64(lo)) & np.uint64((1 << int(hi - lo)) - 1)
            order = np.argsort(key, kind="stable")
            for group in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
                if len(group) < 2:
                    continue
                for start in range(0, len(group), 512):
                    a = group[start : start + 512]
                    bits = np.bitwise_count(hashes[a][:, None] ^ hashes[group][None, :])
                    keep = (
                        (bits <= distance)
                        & (a[:, None] < group[None, :])
                        & (splits[a][:, None] != splits[group][None, :])
                        & (patients[a][:, None] != patients[group][None, :])
                    )
                    if not include_identical:
                        keep &= ~((digests[a][:, None] == digests[group][None, :]) & (digests[a][:, None] != 0))
                    for i, j in zip(*np.nonzero(keep)):
                        pair = (int(a[i]), int(group[j]))
                        if pair not in found:
                            if len(found) >= limit:
                                truncated = True
                                break
                            found[pair] = int(bits[i, j])
        pairs = []
        for (i, j), bits in found.items():
            one, two = self._sorted_refs([int(refs[i]), int(refs[j])])
            pairs.append((bits, one, two, bool(digests[i] == digests[j] and digests[i] != 0)))
        return sorted(pairs), truncated


def describe_images(group: list[tuple[str, int, str]]) -> str:
    """'record A image 0 (train), record B image 0 (test)'."""
    return ", ".join(f"record {eid} image {i} ({split})" for eid, i, split in group)
