"""`medprep verify OUT`: prove an output folder is complete, consistent and free of source identifiers.

Checks: summary.json reconciles (inputs = inputs with examples + error lines); every listed
shard exists, opens and holds the listed number of records; every record matches the schema,
decodes, has one image_info per image and images of the recorded size; both formats hold the
same examples; example ids are unique; no patient spans two splits; no identical image (same
decoded pixels) sits in two splits under different patient keys; no identifier appears in any
record field, image_info, errors/ or summary.json. The identifiers checked are the values of the
source DICOM headers, the manifest's `patient_id` values and the path components of every input
reference (see `path_components` for which components count). `--near_duplicates` also lists
pairs of perceptually similar images (64-bit DCT pHash) in different splits under different
patient keys: findings to review, not failures.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from array import array
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import numpy as np
import pydicom
from PIL import Image

from medprep.pipelines.io.outputs import join
from medprep.schemas.fields import FIELD_BY_NAME, FIELD_NAMES, validate_record
from medprep.schemas.readers import read_arrayrecord_shard, read_parquet_shard
from medprep.transforms.dicom_io import PHI_KEYWORDS, read_header

MIN_PHI_LENGTH = 4  # shorter values ("1", "M", "p1") would match everywhere
MIN_DIGITS = 6  # an all-digit value shorter than this ("2020", "0001", "1792") is a year, counter or coordinate
HEADER_FILES_PER_FOLDER = 4  # a folder reference (one series) shares one patient: read a few headers, not all
KINDS = ("dicom_header", "manifest_patient_id", "path_component", "url_credential")
SPLIT_ORDER = ("train", "val", "test")
DEFAULT_PHASH_DISTANCE = 4  # re-encoded or slightly resized copies differ by 0-2 bits; unrelated images by ~32
MAX_PHASH_DISTANCE = 16  # beyond this the pigeonhole blocks get too small to search quickly
MAX_NEAR_PAIRS = 1000  # collected pairs are capped (reported as truncated) to bound memory
FLAT_STD = 2.0  # grey levels: a 32x32 thumbnail this flat has no structure to compare

# Path components that are not identifiers. A component is skipped when it is
# - shorter than MIN_PHI_LENGTH, or all digits and shorter than MIN_DIGITS;
# - a single alphabetic word ("NORMAL", "PNEUMONIA", "fundus", "images", "Smith"): class and modality folders
#   are report vocabulary and labels are often taken from them, so such words would be flagged in every text
#   (a bare name without digits or separators is missed: the price of no false alarms; --scrub_text's job);
# - a pure file extension (".dcm", "nii.gz") or a DICOM UID ("1.2.840.113619.2.55", with or without extension):
#   UIDs are not identifiers by themselves here;
# - one of GENERIC_COMPONENTS;
# - a component of the manifest's own folder or of the output folder (where the dataset lives, not who);
# - a leading system folder of an absolute path (SYSTEM_ROOTS; after home/Users also the account name);
# - for http(s) references (DICOMweb) the host, everything before `studies` (the service root: project,
#   dataset, store names) and the DICOMweb words; for gs:// the bucket.
# What remains is typically what PACS exports put in names: MRNs, NAME^GIVEN_birthdate, accession numbers.
GENERIC_COMPONENTS = frozenset(
    {
        "data",
        "images",
        "image",
        "img",
        "imgs",
        "tmp",
        "temp",
        "dicom",
        "dcm",
        "nifti",
        "series",
        "study",
        "studies",
        "scans",
        "slides",
        "raw",
        "input",
        "inputs",
        "output",
        "outputs",
        "export",
        "exports",
        "samples",
        "files",
        "train",
        "val",
        "valid",
        "validation",
        "test",
        "dicom-web",
        "dicom_web",
        "wado-rs",
        "qido-rs",
        "stow-rs",
        "dicomdir",
        "manifest.jsonl",
        "manifest.csv",
        "manifest.parquet",
    }
)
SYSTEM_ROOTS = frozenset(
    {
        "tmp",
        "var",
        "mnt",
        "media",
        "opt",
        "srv",
        "scratch",
        "private",
        "data",
        "volumes",
        "content",
        "workspace",
        "root",
        "home",
        "users",
        "gcs",
    }
)
ACCOUNT_ROOTS = frozenset({"home", "users"})
DICOMWEB_WORDS = frozenset(
    {
        "studies",
        "series",
        "instances",
        "frames",
        "rendered",
        "metadata",
        "bulkdata",
        "thumbnail",
        "dicomweb",
        "dicom-web",
        "wado",
        "wado-rs",
        "rs",
    }
)
EXTENSIONS = frozenset(
    {
        "dcm",
        "dicom",
        "ima",
        "png",
        "jpg",
        "jpeg",
        "tif",
        "tiff",
        "svs",
        "ndpi",
        "mrxs",
        "scn",
        "vms",
        "bif",
        "nii",
        "gz",
        "nii.gz",
        "nrrd",
        "mha",
        "mhd",
        "bmp",
        "gif",
        "json",
        "jsonl",
        "csv",
        "parquet",
        "zip",
    }
)
NOT_DICOM = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".nii",
    ".nii.gz",
    ".nrrd",
    ".mha",
    ".mhd",
    ".bmp",
    ".gif",
)
_UID = re.compile(r"\d+(?:\.\d+)+")
_ALNUM_RUN = re.compile(r"[^\W_]+")
_EDGES = re.compile(r"^[\W_]+|[\W_]+$")


# ---------------------------------------------------------------------------------------------- identifiers


def _clean(value: str) -> str:
    """A value as matched: trimmed of non-alphanumeric edges ('(MRN-1)' -> 'MRN-1')."""
    return _EDGES.sub("", str(value or "").strip())


def worth_checking(value: str) -> bool:
    """True when a (cleaned) value is specific enough to look for: 4+ characters, all-digit ones 6+."""
    return len(value) >= MIN_PHI_LENGTH and (not value.isdigit() or len(value) >= MIN_DIGITS)


class IdentifierSet:
    """Identifier values (case-insensitive) with a description each; finds them in text at word edges.

    A value matches where it is not glued to further letters or digits ('JANE' is found in 'DOE^JANE,'
    but not in 'JANET'). Lookup is by the value's first alphanumeric run, intersected with the text's
    runs, so a text is scanned once whatever the number of values.
    """

    def __init__(self):
        self.values: dict[str, tuple[str, str]] = {}  # casefolded value -> (description, kind)
        self._by_run: dict[str, list[str]] = defaultdict(list)
        self._patterns: dict[str, re.Pattern] = {}

    def add(self, value: str, what: str, kind: str) -> None:
        """Add one value (ignored when not worth checking or already known); `what` never holds the value."""
        value = _clean(value)
        key = value.casefold()
        if not worth_checking(value) or key in self.values:
            return
        self.values[key] = (what, kind)
        first_run = cast(re.Match[str], _ALNUM_RUN.match(key))  # a cleaned value starts with a letter or digit
        self._by_run[first_run.group(0)].append(key)

    def counts(self) -> dict[str, int]:
        """How many values of each kind are checked."""
        out = dict.fromkeys(KINDS, 0)
        for _, kind in self.values.values():
            out[kind] += 1
        return out

    def find(self, text: str, skip: frozenset = frozenset(), skip_kinds: tuple = ()) -> list[tuple[str, str]]:
        """(description, kind) of every value in text, except the values in `skip` and kinds in `skip_kinds`."""
        if not text or not self.values:
            return []
        folded = text.casefold()
        found = []
        for run in set(_ALNUM_RUN.findall(folded)) & self._by_run.keys():
            for key in self._by_run[run]:
                what, kind = self.values[key]
                if key in skip or kind in skip_kinds:
                    continue
                pattern = self._patterns.get(key)
                if pattern is None:
                    pattern = self._patterns[key] = re.compile(r"(?<![^\W_])" + re.escape(key) + r"(?![^\W_])")
                if pattern.search(folded):
                    found.append((what, kind))
        return sorted(found)


def _dir_parts(path: str) -> set[str]:
    """Casefolded components of a folder (local or URI), for the skip list."""
    if not path:
        return set()
    if "://" in path:
        path = urlsplit(path).path
    else:
        path = os.path.abspath(path)
    return {p.casefold() for p in re.split(r"[/\\]", path) if p}


def _strip_system_roots(parts: list[str]) -> list[str]:
    parts = list(parts)
    while parts and parts[0].casefold() in SYSTEM_ROOTS:
        parts = parts[2:] if parts[0].casefold() in ACCOUNT_ROOTS else parts[1:]
    return parts


def _raw_components(ref: str, manifest: str) -> list[str]:
    """The path components of a reference that could name a patient, before the word rules."""
    ref = ref.strip()
    if "://" in ref:
        url = urlsplit(ref)
        parts = [unquote(p) for p in url.path.split("/") if p]
        if url.scheme in ("http", "https"):
            folded = [p.casefold() for p in parts]
            if "studies" in folded:
                parts = parts[folded.index("studies") :]
            return [p for p in parts if p.casefold() not in DICOMWEB_WORDS]
        if "://" in manifest:  # gs://bucket/dir/manifest.jsonl: components below the manifest's folder
            base = posixpath.dirname(manifest).rstrip("/") + "/"
            if ref.startswith(base):
                return [p for p in ref[len(base) :].split("/") if p]
        return parts  # the bucket is the URL's host: not a component
    if not os.path.isabs(ref):  # relative to the manifest's folder, as written
        return [p for p in re.split(r"[/\\]", ref) if p not in ("", ".", "..")]
    if manifest and "://" not in manifest:
        base = os.path.dirname(os.path.abspath(manifest))
        if ref.startswith(base.rstrip(os.sep) + os.sep):
            return [p for p in ref[len(base.rstrip(os.sep)) + 1 :].split(os.sep) if p]
    return _strip_system_roots([p for p in ref.split(os.sep) if p])


def _is_generic(component: str) -> bool:
    folded = component.casefold()
    stem = folded
    while "." in stem and stem.rsplit(".", 1)[1] in EXTENSIONS:
        stem = stem.rsplit(".", 1)[0]
    return (
        folded in GENERIC_COMPONENTS
        or folded.lstrip(".") in EXTENSIONS
        or folded.isalpha()
        or not stem
        or bool(_UID.fullmatch(stem))
    )


def path_components(ref: str, manifest: str, skip: set[str]) -> list[str]:
    """The path components of one input reference that verify looks for (rules above GENERIC_COMPONENTS)."""
    out = []
    for part in _raw_components(ref, manifest):
        value = _clean(part)
        if worth_checking(value) and not _is_generic(value) and value.casefold() not in skip:
            out.append(value)
    return out


def url_credentials(ref: str) -> list[str]:
    """The password of a user:password@host URL (outputs must never carry it)."""
    if "://" not in ref or "@" not in ref:
        return []
    try:
        password = urlsplit(ref).password
    except ValueError:
        return []
    return [password] if password else []


def _open_ref(path: str):
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type="uncompressed")


def _folder_files(path: str) -> list[str]:
    """The files under a folder reference (local or gs://), sorted; [] when `path` is not a folder."""
    if path.startswith(("http://", "https://")):
        return []
    if "://" not in path:
        if not os.path.isdir(path):
            return []
        return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files)
    from apache_beam.io.filesystems import FileSystems

    try:
        if FileSystems.exists(path):
            return []
        return sorted(m.path for m in FileSystems.match([path.rstrip("/") + "/**"])[0].metadata_list)
    except Exception:  # unreachable: nothing to list
        return []


def _header_values(path: str, found: IdentifierSet) -> None:
    """Add the identifier values of one DICOM file's header (nothing for other files or unreadable ones)."""
    if path.lower().endswith(NOT_DICOM) or path.startswith(("http://", "https://")):
        return
    try:
        with _open_ref(path) as fh:
            ds = read_header(fh)
    except Exception:  # missing, a folder, or not DICOM: nothing to scan
        return
    name = posixpath.basename(path.rstrip("/"))
    for keyword in PHI_KEYWORDS:
        try:
            value = ds.get(keyword)
        except Exception:  # a malformed element: nothing usable
            continue
        values = value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
        for v in values:
            text = str(v or "").strip()
            found.add(text, f"{keyword} of {name}", "dicom_header")
            if keyword.endswith("Name") and "^" in text:
                for part in text.split("^"):
                    found.add(part, f"{keyword} part of {name}", "dicom_header")


class Inputs:
    """Identifier values of a run's inputs, and per error line the values its own input may show."""

    def __init__(self, summary: dict):
        self.config = summary["config"]
        self.manifest = self.config.get("input", "") or ""
        self.skip = _dir_parts(
            os.path.dirname(self.manifest) if "://" not in self.manifest else posixpath.dirname(self.manifest)
        ) | _dir_parts(self.config.get("output_dir", ""))
        self.identifiers = IdentifierSet()
        self.own: dict[int, frozenset] = {}  # error row -> casefolded components of its own references

    def _ref_values(self, ref: str, what: str) -> set[str]:
        """Add a reference's components, credentials and header values; returns its casefolded components."""
        from medprep.pipelines.io.manifest import resolve_ref

        ids = self.identifiers
        mine = set()
        for c in path_components(ref, self.manifest, self.skip):
            mine.add(c.casefold())
            ids.add(c, f"path component of {what}", "path_component")
        for secret in url_credentials(ref):
            ids.add(secret, f"password in the URL of {what}", "url_credential")
        resolved = resolve_ref(ref, self.manifest) if self.manifest and "://" not in ref else ref
        files = _folder_files(resolved)
        for n, path in enumerate(files):
            inner = ref.rstrip("/\\") + "/" + path[len(resolved.rstrip("/\\")) + 1 :].replace(os.sep, "/")
            for c in path_components(inner, self.manifest, self.skip):
                mine.add(c.casefold())
                ids.add(c, f"path component of a file in {what}", "path_component")
            if n < HEADER_FILES_PER_FOLDER:
                _header_values(path, ids)
        if not files:
            _header_values(resolved, ids)
        return mine

    def collect(self, error_rows: set[int]) -> str:
        """Read the inputs named by summary.json; returns a problem ('' when the inputs could be read)."""
        from medprep.pipelines.io.manifest import read_manifest

        if self.config.get("dicomweb_url"):  # discovery on a DICOMweb service: UIDs only, nothing to read here
            return ""
        if not self.manifest:
            return "summary.json names no input (config.input): identifiers not checked"
        if self._is_folder():
            for path in _folder_files(self.manifest):
                inner = path[len(self.manifest.rstrip("/\\")) + 1 :].replace(os.sep, "/")
                for c in path_components(inner, "", self.skip):
                    self.identifiers.add(c, "path component under the input folder", "path_component")
                _header_values(path, self.identifiers)
            return ""
        try:
            for row in read_manifest(self.manifest):
                refs = [(r, "image" if len(row["images"]) == 1 else f"image[{i}]") for i, r in enumerate(row["images"])]
                refs += [(row["prior"], "prior")] if row["prior"] else []
                mine: set[str] = set()
                for ref, column in refs:
                    mine |= self._ref_values(ref, f"manifest row {row['row']} {column}")
                self.identifiers.add(
                    row["patient_id"], f"patient_id of manifest row {row['row']}", "manifest_patient_id"
                )
                if row["row"] in error_rows:
                    self.own[row["row"]] = frozenset(mine)
        except Exception as exc:  # moved, deleted or unreadable: say so rather than pass with nothing checked
            return (
                f"cannot read the manifest {self.manifest} (summary.json config.input) to check identifiers: "
                f"{exc} — verify where the inputs are readable, or pass --no_phi_scan"
            )
        return ""

    def _is_folder(self) -> bool:
        from medprep.pipelines.io.discovery import is_folder_input

        return is_folder_input(self.manifest)

    def own_values(self, line: dict) -> frozenset:
        """What an error line may show: the components of its own input (naming it is its job)."""
        ref = str(line.get("ref", ""))
        mine = {c.casefold() for c in path_components(ref, self.manifest, self.skip)}
        row: Any = line.get("row")
        return frozenset(mine) | self.own.get(row, frozenset())


def _strings(value, path: str) -> Iterator[tuple[str, str]]:
    """(field path, text) of every string inside a JSON value ('config.input', 'messages[0].content[1].text')."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def _json_strings(text: str, path: str) -> Iterator[tuple[str, str]]:
    """A JSON text's strings (decoded, so escaped names match), or the text itself when it is not JSON."""
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    yield from _strings(value, path)


def record_strings(rec: dict) -> Iterator[tuple[str, str]]:
    """(field, text) of every text a record holds: str fields, list items, and the strings inside JSON fields."""
    for name in FIELD_NAMES:
        kind = FIELD_BY_NAME[name].kind
        if kind == "str":
            yield from (_json_strings(rec[name], name) if name == "messages" else [(name, rec[name])])
        elif kind == "str_list":
            for i, item in enumerate(rec[name]):
                yield from (_json_strings(item, f"{name}[{i}]") if name == "image_info" else [(f"{name}[{i}]", item)])


def _is_source_field(field: str) -> bool:
    return field.startswith("source[") or (field.startswith("image_info[") and field.endswith("].source"))


# ---------------------------------------------------------------------------------------------- image hashes


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
    """Per image only hashes (16-byte pixel digest, optional 64-bit pHash) and a packed (record, image) number."""

    def __init__(self, near: bool = False):
        self.near = near
        self.records: list[tuple[str, str, int]] = []  # record no -> (example_id, split, patient no)
        self._patients: dict[str, int] = {}
        # digest -> packed ref, or a list of them (distinct split/patient)
        self._exact: dict[bytes, int | list[int]] = {}
        self._phash, self._refs, self._digest64 = array("Q"), array("q"), array("Q")

    def add_record(self, example_id: str, split: str, patient_key: str) -> int:
        """Register a record; returns its number for add_image."""
        patient = self._patients.setdefault(patient_key, len(self._patients))
        self.records.append((example_id, split, patient))
        return len(self.records) - 1

    def add_image(self, record: int, index: int, img: Image.Image) -> None:
        """Hash one decoded image of a registered record."""
        value, spread = phash(img) if self.near else (None, 0.0)
        self.add_hashes(record, index, pixel_digest(img), value if spread >= FLAT_STD else None)

    def add_hashes(self, record: int, index: int, digest: bytes | None, perceptual: int | None) -> None:
        """Hashes of one image (None: a one-colour image, a flat one for the pHash) of a registered record."""
        packed = record * 65536 + index
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

    def _owner(self, packed: int) -> tuple[str, int]:
        _, split, patient = self.records[packed // 65536]
        return split, patient

    def describe(self, packed: int) -> tuple[str, int, str]:
        """(example_id, image index, split) of a packed reference."""
        example_id, split, _ = self.records[packed // 65536]
        return example_id, packed % 65536, split

    def identical_across_splits(self) -> list[list[tuple[str, int, str]]]:
        """Groups of pixel-identical images that sit in two or more splits under different patient keys."""
        groups = []
        for held in self._exact.values():
            if not isinstance(held, list):
                continue
            owners = [self._owner(p) for p in held]
            if any(a[0] != b[0] and a[1] != b[1] for a in owners for b in owners):
                groups.append(
                    sorted(
                        (self.describe(p) for p in held),
                        key=lambda d: (SPLIT_ORDER.index(d[2]) if d[2] in SPLIT_ORDER else 9, d[0], d[1]),
                    )
                )
        return sorted(groups)

    def near_pairs(
        self, distance: int, include_identical: bool = False, limit: int = MAX_NEAR_PAIRS
    ) -> tuple[list[tuple], bool]:
        """([(bits apart, (id, index, split), (id, index, split), identical)], truncated): image pairs whose pHashes
        differ in at most `distance` bits, in different splits under different patient keys.

        Pigeonhole search: the 64 bits are cut into distance + 1 blocks; two hashes within `distance` bits agree
        on at least one block, so only images sharing a block value are compared."""
        hashes = np.frombuffer(self._phash, dtype=np.uint64) if len(self._phash) else np.zeros(0, np.uint64)
        refs = np.frombuffer(self._refs, dtype=np.int64) if len(self._refs) else np.zeros(0, np.int64)
        digests = np.frombuffer(self._digest64, dtype=np.uint64) if len(self._digest64) else np.zeros(0, np.uint64)
        split_of = {s: i for i, s in enumerate(SPLIT_ORDER)}
        owners = [self._owner(int(r)) for r in refs]
        splits = np.array([split_of.get(s, 9) for s, _ in owners], dtype=np.int64)
        patients = np.array([p for _, p in owners], dtype=np.int64)
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
            one, two = sorted(
                [self.describe(int(refs[i])), self.describe(int(refs[j]))],
                key=lambda d: (SPLIT_ORDER.index(d[2]) if d[2] in SPLIT_ORDER else 9, d[0], d[1]),
            )
            pairs.append((bits, one, two, bool(digests[i] == digests[j] and digests[i] != 0)))
        return sorted(pairs), truncated


def describe_images(group: list[tuple[str, int, str]]) -> str:
    """'record A image 0 (train), record B image 0 (test)'."""
    return ", ".join(f"record {eid} image {i} ({split})" for eid, i, split in group)


# ---------------------------------------------------------------------------------------------- verify


def _listed_files(summary: dict, output_dir: str, key: str, what: str, problems: list[str]):
    """(entry, local path) of summary.json's files that have `key` and exist; a missing one is a problem."""
    for f in summary["files"]:
        if key not in f:
            continue
        path = join(output_dir, f["path"])
        if os.path.isfile(path):
            yield f, path
        else:
            problems.append(f"missing {what} {f['path']}")


def _read_error_lines(summary: dict, output_dir: str, problems: list[str]) -> list[tuple[str, int, dict]]:
    """(file, line number, entry) of every valid errors/ line; invalid lines are problems."""
    lines = []
    for f, path in _listed_files(summary, output_dir, "lines", "error file", problems):
        for n, line in enumerate(open(path, encoding="utf-8").read().splitlines(), start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and {"ref", "row", "stage", "error", "message"} <= set(entry):
                lines.append((f["path"], n, entry))
            else:
                problems.append(f"{f['path']} line {n} is not a valid error line")
    return lines


class _Scan:
    """Looks for identifiers in the outputs; each finding is one problem naming where it is (once)."""

    def __init__(self, inputs: Inputs | None):
        self.inputs = inputs
        self.keep_source = bool(inputs and inputs.config.get("keep_source"))
        self.found: dict[str, None] = {}

    def _look(self, text: str, where: str, skip: frozenset = frozenset(), skip_kinds: tuple = ()) -> None:
        inputs = cast(Inputs, self.inputs)  # the callers return first when there are none
        for what, _ in inputs.identifiers.find(text, skip, skip_kinds):
            self.found.setdefault(f"identifier '{what}' found in {where}")

    def record(self, rec: dict) -> None:
        """A record's fields; with --keep_source the references in `source` are the user's choice."""
        if self.inputs is None:
            return
        for field, text in record_strings(rec):
            kinds = ("path_component",) if self.keep_source and _is_source_field(field) else ()
            self._look(text, f"record {rec['example_id']} field {field}", skip_kinds=kinds)

    def error_line(self, file: str, n: int, entry: dict) -> None:
        """An errors/ line may name its own input, never another input's components or any other value."""
        if self.inputs is None:
            return
        own = self.inputs.own_values(entry)
        for field, text in _strings(entry, ""):
            self._look(text, f"{file} line {n} field {field}", skip=own)

    def summary(self, summary: dict) -> None:
        if self.inputs is None:
            return
        for field, text in _strings(summary, ""):
            self._look(text, f"summary.json field {field}")


def verify(
    output_dir: str, phi_scan: bool = True, near_duplicates: bool = False, phash_distance: int = DEFAULT_PHASH_DISTANCE
) -> tuple[list[str], dict]:
    """(problems, facts) for an output folder (local or gs://); no problems means it verifies.

    facts["near_duplicate_pairs"] (with near_duplicates) lists (bits apart, (id, image, split), (id, image,
    split)) of similar, not identical, images in different splits under different patient keys."""
    if "://" in output_dir:
        import shutil

        from medprep.pipelines.io.outputs import localize

        folder = localize(output_dir)
        try:
            return verify(folder, phi_scan, near_duplicates, phash_distance)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    problems: list[str] = []
    summary_path = join(output_dir, "summary.json")
    if not os.path.isfile(summary_path):
        return [f"no summary.json in {output_dir}: the run did not complete"], {}
    summary = json.load(open(summary_path, encoding="utf-8"))
    inputs, ok, nerr = summary["inputs"], summary["inputs_with_examples"], summary["errors"]
    if inputs != ok + nerr or not summary.get("reconciled"):
        problems.append(f"summary does not reconcile: inputs {inputs} != inputs with examples {ok} + errors {nerr}")
    error_lines = _read_error_lines(summary, output_dir, problems)
    if len(error_lines) != nerr:
        problems.append(f"summary counts {nerr} errors, errors/ holds {len(error_lines)} lines")
    sources = None
    if phi_scan:
        sources = Inputs(summary)
        unread = sources.collect({e["row"] for _, _, e in error_lines if isinstance(e["row"], int)})
        if unread:
            problems.append(unread)
    scan = _Scan(sources)
    scan.summary(summary)
    for file, n, entry in error_lines:
        scan.error_line(file, n, entry)
    by_format: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    images_by_format: dict[str, int] = defaultdict(int)
    index = ImageIndex(near_duplicates)
    primary = next((f["format"] for f in summary["files"] if "format" in f), None)
    for f, path in _listed_files(summary, output_dir, "format", "shard", problems):
        reader = read_arrayrecord_shard if f["format"] == "arrayrecord" else read_parquet_shard
        count = 0
        try:
            for rec in reader(path):
                count += 1
                valid = _check_record(
                    rec, f, problems, by_format[f["format"]], index if f["format"] == primary else None
                )
                images_by_format[f["format"]] += len(rec["images"])
                if valid:
                    scan.record(rec)
        except Exception as exc:
            problems.append(f"{f['path']}: cannot read record {count}: {type(exc).__name__}: {exc}")
        if count != f["records"]:
            problems.append(f"{f['path']}: summary lists {f['records']} records, the shard holds {count}")
    formats = list(by_format)
    for fmt in formats:
        if len(by_format[fmt]) != summary["examples"]:
            problems.append(f"{fmt}: {len(by_format[fmt])} distinct examples, summary says {summary['examples']}")
        if images_by_format[fmt] != summary["images"]:
            problems.append(f"{fmt}: {images_by_format[fmt]} images, summary says {summary['images']}")
    if len(formats) == 2 and set(by_format[formats[0]]) != set(by_format[formats[1]]):
        problems.append("ArrayRecord and Parquet hold different examples")
    splits_of: dict[str, set] = defaultdict(set)
    for split, patient_key in by_format[formats[0]].values() if formats else []:
        splits_of[patient_key].add(split)
    crossing = [k for k, s in splits_of.items() if len(s) > 1]
    if crossing:
        problems.append(f"{len(crossing)} patient(s) appear in more than one split")
    identical = index.identical_across_splits()
    for group in identical:
        splits = sorted({s for _, _, s in group}, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 9)
        problems.append(
            f"identical image in splits {', '.join(splits)} under different patient keys: " + describe_images(group)
        )
    problems += list(scan.found)
    counts = sources.identifiers.counts() if sources else None
    facts = {
        "examples": summary["examples"],
        "errors": nerr,
        "inputs": inputs,
        "formats": formats,
        "shards": sum(1 for f in summary["files"] if "format" in f),
        "phi_values_checked": sum(counts.values()) if counts is not None else None,
        "phi_values_by_kind": counts,
        "phi_hits": len(scan.found),
        "identical_images_across_splits": len(identical),
    }
    if near_duplicates:
        pairs, truncated = index.near_pairs(phash_distance)
        facts.update(
            near_duplicates=len(pairs),
            near_duplicates_truncated=truncated,
            phash_distance=phash_distance,
            near_duplicate_pairs=[(bits, one, two) for bits, one, two, _ in pairs],
        )
    return problems, facts


def _check_record(rec: dict, shard: dict, problems: list[str], seen: dict, index: ImageIndex | None = None) -> bool:
    """Schema, uniqueness, split and image checks of one record; `seen` keeps (split, patient_key) per id and
    `index` (for one format) the hashes of its images. False when the record does not match the schema."""
    where = f"{shard['path']} example {rec.get('example_id', '?')}"
    try:
        validate_record({k: rec[k] for k in rec if k in rec})
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return False
    if rec["example_id"] in seen:
        problems.append(f"{where}: duplicate example_id")
    seen[rec["example_id"]] = (rec["split"], rec["patient_key"])
    if rec["split"] != shard["split"]:
        problems.append(f"{where}: split {rec['split']} in a {shard['split']} shard")
    if len(rec["images"]) != len(rec["image_info"]) or not rec["images"]:
        problems.append(f"{where}: {len(rec['images'])} images but {len(rec['image_info'])} image_info entries")
        return True
    number = index.add_record(rec["example_id"], rec["split"], rec["patient_key"]) if index is not None else None
    for i, (data, info_json) in enumerate(zip(rec["images"], rec["image_info"])):
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
            out = json.loads(info_json)["pad_resize"]["out"]
            if img.size != (out, out):
                problems.append(f"{where}: image {i} is {img.size}, image_info says {out}x{out}")
            if index is not None and number is not None:
                index.add_image(number, i, img)
        except Exception as exc:
            problems.append(f"{where}: image {i} does not decode: {type(exc).__name__}: {exc}")
    return True


def phash_distance_option(text: str) -> int:
    """argparse type for --phash_distance: an integer 0..MAX_PHASH_DISTANCE."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_PHASH_DISTANCE:
        raise argparse.ArgumentTypeError(f"expected a number of bits from 0 to {MAX_PHASH_DISTANCE}, got {text!r}")
    return value


def add_duplicate_options(ap: Any, near_help: str) -> None:
    """--near_duplicates and --phash_distance, as verify and inspect take them."""
    ap.add_argument("--near_duplicates", action="store_true", help=near_help)
    ap.add_argument(
        "--phash_distance",
        type=phash_distance_option,
        default=DEFAULT_PHASH_DISTANCE,
        help=f"with --near_duplicates: at most this many of 64 pHash bits differ "
        f"(default {DEFAULT_PHASH_DISTANCE}, at most {MAX_PHASH_DISTANCE})",
    )


def _pipeline_of(output_dir: str) -> str:
    """summary.json's `pipeline`, or '' when it cannot be read (verify then reports that)."""
    try:
        with _open_ref(join(output_dir, "summary.json")) as fh:
            return str(json.loads(fh.read()).get("pipeline", ""))
    except Exception:  # missing or unreadable: verify() names the problem
        return ""


def main(argv: list[str]) -> int:
    """CLI entry: prints the problems (exit 1) or a one-line OK (exit 0); near-duplicates as NEAR lines."""
    import argparse

    ap = argparse.ArgumentParser(prog="medprep verify", description=__doc__.splitlines()[0])
    ap.add_argument("output_dir", help="a medprep output folder")
    ap.add_argument(
        "--no_phi_scan",
        action="store_true",
        help="skip looking for identifiers (header values, manifest patient ids, path components)",
    )
    add_duplicate_options(
        ap, "also list perceptually similar images (pHash) in different splits under different patients"
    )
    args = ap.parse_args(argv)
    if _pipeline_of(args.output_dir) == "embed":  # a `medprep embed` output has its own checks
        from medprep.pipelines.tools.embed_verify import main as verify_embeddings_main

        return verify_embeddings_main([args.output_dir])
    problems, facts = verify(args.output_dir, not args.no_phi_scan, args.near_duplicates, args.phash_distance)
    for p in problems:
        print("FAIL", p)
    for bits, one, two in facts.get("near_duplicate_pairs", []):
        print(f"NEAR {bits} bits: {describe_images([one, two])}")
    if facts.get("near_duplicates_truncated"):
        print(f"NEAR list stops at {MAX_NEAR_PAIRS} pairs")
    if facts.get("phi_values_checked") == 0:
        print("WARN no identifier values to look for (no DICOM headers, patient ids or specific path components)")
    if problems:
        print(f"{args.output_dir}: {len(problems)} problem(s)")
        return 1
    shown = {k: v for k, v in facts.items() if k != "near_duplicate_pairs"}
    print(f"OK {args.output_dir}: {json.dumps(shown)}")
    return 0
