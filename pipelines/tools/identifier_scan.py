"""What verify looks for in an output, without opening any input: identifier values from the manifest, and
identifier patterns.

- Values (`Inputs`): the manifest's `patient_id`s, URL passwords, and the path components of every
  reference (and of the files found by listing a folder reference; see `path_components` for which
  components count). The manifest named by summary.json is the only file read; references are never
  opened (the pipeline already checked each record against its own headers: records/identifiers.py).
- Patterns (`TEXT_PATTERNS`): text that is an identifier by its form wherever it comes from — a DICOM
  person name (`DOE^JANE`), a labelled record number (`MRN: 1234567`, `accession # A-991`), a US social
  security number, a labelled birth date (`DOB 1970-01-01`), an e-mail address. Looked for in records only
  (an error line names its own input). Kept to forms that ordinary report text does not have, so a clean
  dataset passes; dates, phone numbers and free names are `--scrub_text`'s job.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from medprep.pipelines.records.identifiers import (
    IdentifierSet,
    clean_value,
    json_value_strings,
    record_strings,
    worth_checking,
)

KINDS = ("manifest_patient_id", "path_component", "url_credential")
MAX_FINDINGS = 1000  # identifier findings listed one by one; beyond, they are counted

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
_UID = re.compile(r"\d+(?:\.\d+)+")


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
        value = clean_value(part)
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


def _looks_like_a_file(ref: str) -> bool:
    """The last component ends with a known file extension ('x.svs', 'a.nii.gz'): not a folder to list."""
    last = ref.rstrip("/").rsplit("/", 1)[-1].casefold()
    return "." in last and last.rsplit(".", 1)[1] in EXTENSIONS


def folder_files(path: str) -> Iterator[str]:
    """The files under a folder reference (local or gs://), in sorted order; nothing when `path` is not a
    folder. Lists names only: no file is opened, and a FIFO, device or missing path yields nothing."""
    if path.startswith(("http://", "https://")):
        return
    if "://" not in path:
        if not os.path.isdir(path):
            return
        for folder, subfolders, files in os.walk(path):
            subfolders.sort()
            yield from (os.path.join(folder, f) for f in sorted(files))
        return
    if _looks_like_a_file(path):  # one object: a prefix listing per file reference would cost a request each
        return
    from apache_beam.io.filesystems import FileSystems

    try:
        listed = FileSystems.match([path.rstrip("/") + "/**"])[0].metadata_list
    except Exception:  # unreachable: nothing to list
        return
    yield from sorted(m.path for m in listed)


def unreadable_manifest(path: str) -> str:
    """Why a local manifest must not be opened ('' when it may): a FIFO or device would block or never end."""
    if "://" in path or not os.path.exists(path) or os.path.isfile(path):
        return ""
    return f"{path} (summary.json config.input) is not a regular file: not read"


class Inputs:
    """Identifier values of a run's inputs from its manifest (never from the files it names), and per error
    line the values its own input may show."""

    def __init__(self, summary: dict[str, Any]):
        self.config = summary["config"]
        self.manifest = self.config.get("input", "") or ""
        self.skip = _dir_parts(
            os.path.dirname(self.manifest) if "://" not in self.manifest else posixpath.dirname(self.manifest)
        ) | _dir_parts(self.config.get("output_dir", ""))
        self.identifiers = IdentifierSet(KINDS)
        self.own: dict[int, frozenset[str]] = {}  # error row -> casefolded components of its own references

    def _ref_values(self, ref: str, what: str) -> set[str]:
        """Add a reference's components and credentials, and those of the files listed under a folder
        reference; returns its casefolded components."""
        from medprep.pipelines.io.manifest import resolve_ref

        ids = self.identifiers
        mine = set()
        for c in path_components(ref, self.manifest, self.skip):
            mine.add(c.casefold())
            ids.add(c, f"path component of {what}", "path_component")
        for secret in url_credentials(ref):
            ids.add(secret, f"password in the URL of {what}", "url_credential")
        resolved = resolve_ref(ref, self.manifest) if self.manifest and "://" not in ref else ref
        for path in folder_files(resolved):
            inner = ref.rstrip("/\\") + "/" + path[len(resolved.rstrip("/\\")) + 1 :].replace(os.sep, "/")
            for c in path_components(inner, self.manifest, self.skip):
                mine.add(c.casefold())
                ids.add(c, f"path component of a file in {what}", "path_component")
        return mine

    def collect(self, error_rows: set[int]) -> str:
        """Read the manifest named by summary.json; returns a problem ('' when it could be read)."""
        from medprep.pipelines.io.discovery import is_folder_input
        from medprep.pipelines.io.manifest import read_manifest

        if self.config.get("dicomweb_url"):  # discovery on a DICOMweb service: UIDs only, nothing to read here
            return ""
        if not self.manifest:
            return "summary.json names no input (config.input): identifiers not checked"
        if is_folder_input(self.manifest):
            for path in folder_files(self.manifest):
                inner = path[len(self.manifest.rstrip("/\\")) + 1 :].replace(os.sep, "/")
                for c in path_components(inner, "", self.skip):
                    self.identifiers.add(c, "path component under the input folder", "path_component")
            return ""
        refused = unreadable_manifest(self.manifest)
        if refused:
            return refused
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
                f"{exc} — verify where the manifest is readable, or pass --no_phi_scan"
            )
        return ""

    def own_values(self, line: dict[str, Any]) -> frozenset[str]:
        """What an error line may show: the components of its own input (naming it is its job)."""
        ref = str(line.get("ref", ""))
        mine = {c.casefold() for c in path_components(ref, self.manifest, self.skip)}
        row: Any = line.get("row")
        return frozenset(mine) | self.own.get(row, frozenset())


_NAME_PART = r"[^\W\d_][^\W_]*(?:['\-][^\W_]+)*"
TEXT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("DICOM person name", re.compile(rf"(?<![^\W_]){_NAME_PART}\^[^\W_]")),
    (
        "labelled record number",
        re.compile(
            r"(?i)(?<![^\W_])(?:MRN|medical\s+record\s+(?:number|no\.?|\#)|patient\s+(?:id|number|no\.?|\#)"
            r"|accession(?:\s+(?:number|no\.?))?)\s*(?:[:\#=\-]|is)?\s*(?=[\w\-]*\d)[^\W_][\w\-]{2,}"
        ),
    ),
    ("social security number", re.compile(r"(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d\-])")),
    (
        "labelled birth date",
        re.compile(
            r"(?i)(?<![^\W_])(?:DOB|date\s+of\s+birth|birth\s*date|born(?:\s+on)?)\s*[:=]?\s*"
            r"(?:\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|\d{8})(?!\d)"
        ),
    ),
    ("e-mail address", re.compile(r"(?<![\w.%+\-])[\w.%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")),
)


def pattern_names(text: str) -> list[str]:
    """The names of the TEXT_PATTERNS that occur in text (in TEXT_PATTERNS order)."""
    return [name for name, pattern in TEXT_PATTERNS if pattern.search(text)] if text else []


def is_source_field(field: str) -> bool:
    """`source[i]` or `image_info[i].source`: the references, which --keep_source writes by the user's choice."""
    return field.startswith("source[") or (field.startswith("image_info[") and field.endswith("].source"))


class Scan:
    """Looks for identifiers in the outputs; each finding is one problem naming where it is (once). Findings
    past MAX_FINDINGS are counted, not listed."""

    def __init__(self, inputs: Inputs):
        self.inputs = inputs
        self.keep_source = bool(inputs.config.get("keep_source"))
        self.found: dict[str, None] = {}
        self.unlisted = 0

    def __len__(self) -> int:
        return len(self.found) + self.unlisted

    def _add(self, finding: str) -> None:
        if finding in self.found:
            return
        if len(self.found) < MAX_FINDINGS:
            self.found[finding] = None
        else:
            self.unlisted += 1

    def _look(
        self, text: str, where: str, skip: frozenset[str] = frozenset(), skip_kinds: tuple[str, ...] = ()
    ) -> None:
        for what, _ in self.inputs.identifiers.find(text, skip, skip_kinds):
            self._add(f"identifier '{what}' found in {where}")

    def record(self, rec: dict[str, Any]) -> None:
        """A record's fields: values and patterns; with --keep_source the references in `source` are the user's
        choice (their path components and patterns are not findings there)."""
        for field, text in record_strings(rec):
            kept = self.keep_source and is_source_field(field)
            where = f"record {rec['example_id']} field {field}"
            self._look(text, where, skip_kinds=("path_component",) if kept else ())
            for name in [] if kept else pattern_names(text):
                self._add(f"identifier pattern '{name}' found in {where}")

    def error_line(self, file: str, n: int, entry: dict[str, Any]) -> None:
        """An errors/ line may name its own input, never another input's components or any other value."""
        own = self.inputs.own_values(entry)
        for field, text in json_value_strings(entry, ""):
            self._look(text, f"{file} line {n} field {field}", skip=own)

    def summary(self, summary: dict[str, Any]) -> None:
        for field, text in json_value_strings(summary, ""):
            self._look(text, f"summary.json field {field}")

    def problems(self) -> list[str]:
        more = [f"… and {self.unlisted} more identifier finding(s)"] if self.unlisted else []
        return list(self.found) + more
