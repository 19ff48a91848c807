"""Report text scrubbing: replace the common identifier kinds with typed placeholders and count them.

Kinds and placeholders (in the order of the counts dict):

    name     [NAME]     names the caller gives (header names, values of the manifest's name-like
                        columns, see `name_like_columns`) and names found by their cues:
                        "Dr. Smith", "Patient: Jane Doe", "signed by …", "Jane Roe, MD"
    id       [ID]       the caller's identifier values, labelled ids (MRN, accession, case,
                        specimen, patient/study/encounter id …), pathology accessions (S21-12345),
                        letter+digit ids (AB1234567), dotted UIDs (1.2.840.…), digit runs of 7 or more
    ssn      [SSN]      123-45-6789, 123 45 6789, and "SSN 123456789"
    phone    [PHONE]    (415) 555-0134, 415-555-0134, 415.555.0134, +1 415 555 0134 x12,
                        +44 20 7946 0958, 0044 …, 020 7946 0958, "tel 5551234567"
    email    [EMAIL]
    address  [ADDRESS]  number + street name + suffix (Street/St/Avenue/Ave/Road/Rd/Blvd/Lane/
                        Drive/Court/Way …), an optional unit and ", City, ST 12345"; P.O. boxes
    date     [DATE]     2021-03-04, 03/04/2021, 4.3.21, 4 March 2021, 4-Mar-2021, March 4, 2021,
                        March 2021, 03/2021, 20210304

Clinical text is left alone: measurements (3.2 cm, 12 mm, 3.2 x 2.1 cm), vertebral levels (T12,
L4-L5), ratios (1/2, 120/80, 1:1000), image and series numbers ("series 3 image 45": report-guided
slice selection reads them), percentages, doses, scores (Gleason 3+4=7, BI-RADS 4), years alone and
labelled clinical codes (SNOMED, ICD-10, CPT, LOINC, RadLex: claimed first, left as they are).

Pure Python (`re`), no Beam. Every pattern is compiled once and run once over the text; the
candidate spans are resolved longest first (ties by the kind's priority) and the text is rebuilt in
one pass. Labels stay in the text, only the value is replaced ("MRN: [ID]", "Dr. [NAME]").
A safety net, not a de-identification guarantee: names without a cue that the caller did not pass
(they need a language model), addresses without a street suffix and free-text locations (cities,
hospitals) are not recognized; a caller's name part that is also a word ("Gray") is replaced wherever
the word appears. benchmarks/scrub_eval.py measures recall and precision per kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

KINDS = ("name", "id", "ssn", "phone", "email", "address", "date")
PLACEHOLDERS = {kind: f"[{kind.upper()}]" for kind in KINDS}

# --------------------------------------------------------------------------------------------- names

# Honorifics and post-nominals: never a name part, never replaced on their own.
_TITLES = {"dr", "doctor", "mr", "mrs", "ms", "miss", "mx", "prof", "professor", "sir", "dame"}
_POSTNOMINALS = {
    "md",
    "do",
    "phd",
    "mbbs",
    "mbchb",
    "frcr",
    "frcpc",
    "facr",
    "rn",
    "np",
    "pa",
    "pa-c",
    "dnp",
    "crna",
    "jr",
    "sr",
    "ii",
    "iii",
    "iv",
}
# Capitalized words that follow a name cue in reports but are not names.
_NOT_NAMES = {
    "a",
    "an",
    "the",
    "and",
    "or",
    "of",
    "on",
    "at",
    "in",
    "to",
    "for",
    "with",
    "by",
    "from",
    "is",
    "was",
    "has",
    "had",
    "are",
    "were",
    "be",
    "been",
    "this",
    "that",
    "these",
    "there",
    "he",
    "she",
    "they",
    "it",
    "his",
    "her",
    "their",
    "no",
    "not",
    "none",
    "unknown",
    "anonymous",
    "redacted",
    "withheld",
    "same",
    "male",
    "female",
    "man",
    "woman",
    "boy",
    "girl",
    "child",
    "infant",
    "adult",
    "patient",
    "pt",
    "name",
    "history",
    "findings",
    "finding",
    "impression",
    "impressions",
    "technique",
    "comparison",
    "indication",
    "indications",
    "clinical",
    "exam",
    "examination",
    "study",
    "report",
    "results",
    "result",
    "note",
    "notes",
    "addendum",
    "diagnosis",
    "procedure",
    "specimen",
    "specimens",
    "gross",
    "microscopic",
    "description",
    "comment",
    "comments",
    "recommendation",
    "recommendations",
    "conclusion",
    "summary",
    "signed",
    "reviewed",
    "discussed",
    "dictated",
    "verified",
    "electronically",
    "attending",
    "resident",
    "radiologist",
    "pathologist",
    "physician",
    "referring",
    "ordering",
    "date",
    "time",
    "mrn",
    "dob",
    "age",
    "sex",
    "yes",
    "ok",
    "left",
    "right",
    "bilateral",
    "chest",
    "abdomen",
    "pelvis",
    "head",
    "brain",
    "ct",
    "mr",
    "mri",
    "pet",
    "us",
    "cxr",
    "xr",
    "dx",
    "cr",
    "nm",
    "er",
    "ed",
    "icu",
    "hu",
    "id",
    "acc",
    "via",
    "phone",
    "telephone",
    "tel",
    "page",
    "pager",
    "email",
    "fax",
    "call",
    "contact",
    "today",
    "yesterday",
    "prior",
    "previous",
    "current",
    "see",
    "above",
    "below",
    "please",
    "thank",
    "thanks",
    "team",
    "service",
    "department",
    "dept",
    "clinic",
    "hospital",
    "center",
    "centre",
    "emergency",
    "radiology",
    "pathology",
    "oncology",
    "surgery",
    "medicine",
    "cardiology",
    "neurology",
    "pcp",
    "ent",
    "gi",
    "ob",
    "obgyn",
    "ir",
    "nicu",
    "picu",
    "pacu",
    "ccu",
    "ems",
    "nurse",
    "family",
}
# A capitalized word in any Latin script ("Smith", "O'Brien", "Smith-Jones", "Ekmečić", "DOE").
_UPPER = "A-Z\u00c0-\u00d6\u00d8-\u00de\u0100-\u017f"
_NAME_WORD = rf"(?:[{_UPPER}][^\W\d_]*(?:['\u2019\-][^\W\d_]+)*)"
_NAME_SEQ = rf"(?:[A-Z]\.[ \t]*)?{_NAME_WORD}(?:(?:,[ \t]*|[ \t]+)(?:[A-Z]\.?[ \t]+)?{_NAME_WORD}){{0,2}}"  # one line
_TITLE_CUE = re.compile(rf"\b(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Mx|Prof|Professor)\.?[ \t]+({_NAME_SEQ})")
_CUE_TITLE = r"(?:(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Mx|Prof)\.?[ \t]+)?"
# Noun labels need a colon or dash ("Patient: Jane Doe"; "Patient Education" is no cue) …
_LABEL_CUE = re.compile(
    r"(?=[PpNnRrOoAaFfTtSsCc])"
    r"(?i:\b(?:patient(?:'s)?\s+name|patient|pt|name|referring(?:\s+(?:physician|provider|doctor|clinician))?"
    r"|ordering(?:\s+(?:physician|provider|doctor|clinician))?|attending(?:\s+(?:physician|radiologist))?"
    r"|physician|radiologist|pathologist|resident|fellow|technologist|surgeon|clinician|provider))"
    rf"[ \t]*[:\-][ \t]*{_CUE_TITLE}({_NAME_SEQ})"
)
# … verb phrases do not ("signed by Jane Roe", "discussed with Dr. Smith").
_VERB_CUE = re.compile(
    r"(?=[EeSsDdRrTtVvIiPpCc])"
    r"(?i:\b(?:(?:electronically\s+)?signed(?:\s+out)?\s+by|dictated\s+by|reviewed\s+by|read\s+by"
    r"|transcribed\s+by|verified\s+by|interpreted\s+by|reported\s+by|prepared\s+by|discussed\s+with"
    r"|communicated\s+to|d/w))"
    rf"[ \t]*:?[ \t]*{_CUE_TITLE}({_NAME_SEQ})"
)
_WORD = re.compile(r"[^\W\d_]+(?:['\u2019\-][^\W\d_]+)*")


def _name_parts(names: Iterable[object]) -> set[str]:
    """Name values ("DOE^JANE", "Smith, John A.", "Dr. Alan Roe MD") -> the parts worth matching."""
    parts = set()
    for name in names:
        if not isinstance(name, str):
            continue
        for part in re.split(r"[\^,\s]+", name):
            part = part.strip(".'-")
            if len(part) >= 2 and not part.isdigit() and part.lower() not in _TITLES | _POSTNOMINALS:
                parts.add(part)
    return parts


def _cue_words(span_text: str, start: int) -> list[tuple[int, int]]:
    """The name words of a cue match (titles, initials, stop words dropped) as spans of the text."""
    out = []
    for m in _WORD.finditer(span_text):
        word = m.group()
        if word.endswith(("'s", "\u2019s")):  # possessive: "Smith's" -> "[NAME]'s"
            word = word[:-2]
        if len(word) >= 2 and word.lower() not in _NOT_NAMES | _TITLES | _POSTNOMINALS:
            out.append((start + m.start(), start + m.start() + len(word)))
    return out


# ---------------------------------------------------------------------------------------------- name-like columns

_PERSON_ROLES = {
    "patient",
    "pt",
    "person",
    "subject",
    "physician",
    "doctor",
    "dr",
    "author",
    "radiologist",
    "pathologist",
    "surgeon",
    "clinician",
    "provider",
    "referrer",
    "referring",
    "attending",
    "reader",
    "signer",
    "technologist",
    "technician",
    "operator",
    "operators",
    "nurse",
    "resident",
    "fellow",
    "consultant",
    "practitioner",
    "guardian",
    "kin",
    "parent",
    "mother",
    "father",
    "spouse",
    "requester",
    "requestor",
    "reviewer",
    "interpreter",
    "dictator",
    "performing",
    "ordering",
    "contact",
    "emergency",
}
_NAME_WORDS = {
    "name",
    "names",
    "firstname",
    "lastname",
    "surname",
    "givenname",
    "familyname",
    "middlename",
    "fullname",
    "maidenname",
    "fname",
    "lname",
    "forename",
    "nickname",
}
_NAME_QUALIFIERS = {
    "first",
    "last",
    "given",
    "family",
    "middle",
    "full",
    "maiden",
    "sur",
    "fore",
    "nick",
    "preferred",
    "legal",
    "display",
}
_ROLE_ONLY = {
    "physician",
    "doctor",
    "author",
    "radiologist",
    "pathologist",
    "surgeon",
    "clinician",
    "referrer",
    "attending",
    "reader",
    "signer",
    "technologist",
    "operator",
    "operators",
    "nurse",
    "resident",
    "consultant",
    "practitioner",
    "guardian",
    "reviewer",
    "interpreter",
    "dictator",
    "requester",
    "requestor",
    "provider",
}
_BY_VERBS = {
    "signed",
    "reported",
    "dictated",
    "read",
    "reviewed",
    "ordered",
    "verified",
    "interpreted",
    "performed",
    "prepared",
    "requested",
    "referred",
    "authored",
    "written",
    "transcribed",
    "approved",
}


def _column_words(column: str) -> list[str]:
    """'ReferringPhysicianName' / 'referring-physician name' -> ['referring', 'physician', 'name']."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", column)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def name_like_columns(columns: Iterable[str]) -> list[str]:
    """The manifest columns whose values are person names, in the given order.

    Name-like: `name` itself, person name fields (patient_name, first_name, last_name, surname,
    PatientName, ReferringPhysicianName …), person roles (physician, referring_physician, doctor,
    author, radiologist, operator …) and "by" fields (signed_by, reported_by, dictated_by …).
    Not name-like: names of things (file_name, series_name, study_name, institution_name, label_name).
    """
    out = []
    for column in columns:
        if not isinstance(column, str):
            continue
        words = _column_words(column)
        if not words:
            continue
        is_name = False
        if words[-1] in _NAME_WORDS and words[-1] not in ("name", "names"):
            is_name = True  # first_name, surname, lastname
        elif words[-1] in ("name", "names"):
            before = words[:-1]
            is_name = not before or any(w in _PERSON_ROLES or w in _NAME_QUALIFIERS for w in before)
        elif words[-1] == "by" and len(words) >= 2 and words[-2] in _BY_VERBS:
            is_name = True  # signed_by, reported_by
        elif words[-1] in _ROLE_ONLY or (len(words) >= 2 and words[-1] in ("of", "kin") and "next" in words):
            is_name = True  # physician, referring_physician, next_of_kin
        if is_name:
            out.append(column)
    return out


# ---------------------------------------------------------------------------------------------- patterns
# Speed: no pattern carries a global IGNORECASE (it defeats the regex engine's fast scan); labels are
# case-insensitive in a scoped (?i:…) group behind a lookahead on their possible first letters.

_MONTH = (
    r"(?i:January|February|March|April|May|June|July|August|September|October|November|December"
    r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.?"
)
_DATE_PATTERNS = [
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),  # 2021-03-04
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),  # 03/04/2021, 4.3.21
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?(?:\s+of\s+|\s+|-|/){_MONTH}(?:\s*,?\s*|-|/)\d{{2,4}}\b"),
    # ^ 4 March 2021, 4th of March 2021, 4-Mar-21
    re.compile(
        rf"(?=[JFMASONDjfmasond])\b{_MONTH}(?:\s+\d{{1,2}}(?:st|nd|rd|th)?\s*,?\s*\d{{4}}"  # March 4, 2021
        r"|\s*,?\s+(?:19|20)\d{2})\b"
    ),  # March 2021
    re.compile(r"\b(?:0?[1-9]|1[0-2])/(?:19|20)\d{2}\b"),  # 03/2021
    re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"),  # 20210304 (DICOM DA)
]
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b")
_SSN = re.compile(r"\b\d{3}([- ])\d{2}\1\d{4}\b")
_SSN_LABELLED = re.compile(
    r"(?=[Ss])(?i:\b(?:SSN|SS#|SS\s*No\.?|social\s+security(?:\s+(?:number|no\.?|#))?)"
    r"\s*[:#]?\s*)(\d{3}[- ]?\d{2}[- ]?\d{4})\b"
)
_EXTENSION = r"(?:\s*(?:x|ext\.?|extension)\s*\d{1,5}\b)?"
_PHONE_US = re.compile(
    r"(?=[+(\d])(?<![\w+])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}\b" + _EXTENSION
)
_PHONE_INTL = re.compile(r"(?=[+0])(?<![\w+])(?:\+|\b00)\d{1,3}(?:[\s.\-]?\(?\d{1,5}\)?){2,6}\b" + _EXTENSION)
_PHONE_TRUNK = re.compile(r"(?:\b0\d{2,4}[\s\-]|\(0\d{1,4}\)\s?)\d{3,4}[\s\-]?\d{3,4}\b")  # 020 7946 0958
_PHONE_LABELLED = re.compile(
    r"(?=[TtPpMmCcFfBb])(?i:\b(?:tel|telephone|phone|ph|mobile|mob|cell|pager|pgr|fax|beeper|call|contact)\.?\s*"
    r"(?:no\.?|number|#)?\s*[:#]?\s*)(\+?\d{7,15}|\d{3,4}[\s.\-]\d{4})\b"
)
_ADDRESS_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Av|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way"
    r"|Terrace|Ter|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Square|Sq|Trail|Trl|Crescent|Close|Row"
    r"|Alley|Plaza|Pike|Loop|Mews|Gardens"
    r"|STREET|AVENUE|ROAD|BOULEVARD|LANE|DRIVE|COURT|PLACE|TERRACE|PARKWAY|CIRCLE|HIGHWAY)"
)
_CITY_STATE = (
    r"(?:\.?,\s*[A-Z][A-Za-z'.\-]*(?:\s+[A-Z][A-Za-z'.\-]*){0,2},?\s+"  # , City, ST 12345
    r"(?:[A-Z]{2}(?:\s+\d{5}(?:-\d{4})?)?|\d{5}(?:-\d{4})?|[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2})\b)?"
)
_ADDRESS = re.compile(
    r"\b\d{1,6}[A-Za-z]?(?:-\d{1,4})?\s+"  # house number
    r"(?:(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?\s+)?"  # direction
    r"(?!(?:Views?|Phases?|Series|Images?|Slices?|Levels?|Grade|Segments?|Contrast|Weeks?|Months?)\b)"
    r"(?:[A-Z][A-Za-z'\-]*|\d{1,3}(?:st|nd|rd|th))(?:\s+[A-Z][A-Za-z'\-]*){0,3}?"  # street name
    rf"\s+{_ADDRESS_SUFFIX}\b"
    r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
    r"(?:\.?,?\s*(?:Apt|Apartment|Suite|Ste|Unit|Fl|Floor|Rm|Room|#)\.?\s*#?\s*[A-Za-z0-9\-]+)?" + _CITY_STATE  # unit
)
_CAP = r"[A-Z\u00c0-\u00de][^\W\d_]*"
_PARTICLE = r"(?:(?:de|del|della|di|da|do|dos|das|la|le|les|des|du|von|van|der|den)\s+)*"
_STREET_PREFIX = (
    r"(?:Rue|Avenue|Av\.|Avda\.|Avenida|Calle|C/|Via|Viale|Piazza|Corso|Largo|Rua|Travessa|Praça"
    r"|Plaza|ul\.|Ulica|Boulevard|Bd\.?|Chemin|Route|Quai|Place)"
)
_EU_TAIL = r"(?:,?\s*(?:[A-Z]{1,2}-)?\d{4,5}(?:\s?[A-Z]{2})?\s+" + _CAP + r"(?:\s+" + _CAP + r")?)?"
# Continental forms: "Jakobstrasse 89", "Olmstraat 69", "Avenida Noruega 42", "ul. Zamkowa 33",
# "12 Rue de la Paix", each with an optional ", 4943 Oeschenbach".
_ADDRESS_EU = re.compile(
    r"\b(?:" + _CAP + r"(?:strasse|straße|str\.|weg|gasse|platz|allee|damm|laan|straat|plein|gracht|kade|vej|gade"
    r"|gata|gatan|vägen|veien|vegen|gaten|katu|utca|ulica)\s+\d{1,5}[A-Za-z]?\b"
    r"|" + _STREET_PREFIX + r"\s+" + _PARTICLE + _CAP + r"(?:\s+" + _PARTICLE + _CAP + r"){0,3},?\s+\d{1,5}[A-Za-z]?\b"
    r"|\d{1,5}[A-Za-z]?,?\s+"
    + _STREET_PREFIX
    + r"\s+"
    + _PARTICLE
    + _CAP
    + r"(?:\s+"
    + _PARTICLE
    + _CAP
    + r"){0,3})"
    + _EU_TAIL
)
# A city line on its own: "Springfield, IL 62704", "London NW1 6XE".
_CITY_LINE = re.compile(
    r"\b[A-Z][a-z]+(?:[ \t][A-Z][a-z]+){0,2},?[ \t](?:[A-Z]{2}[ \t]\d{5}(?:-\d{4})?"
    r"|[A-Z]{1,2}\d[A-Z\d]?[ \t]\d[A-Z]{2})\b"
)
_PO_BOX = re.compile(r"(?=[Pp])\b(?i:P\.?\s?O\.?\s*Box|Post\s+Office\s+Box)\s+\d+\b" + _CITY_STATE)
_ID_LABELLED = re.compile(
    r"(?=[MmPpAaCcSsEeVvOoRrIiFfNnHh])"
    r"(?i:\b(?:MRN|MR\s*#|MR\s*No\.?|medical\s+record(?:\s+(?:number|no\.?|#))?|(?:patient|pt)\s*(?:id|#|no\.?)"
    r"|accession(?:\s+(?:number|no\.?|#))?|acc\s*(?:#|no\.?)|case(?:\s+(?:number|no\.?|id|#)|\s*#)"
    r"|specimen(?:\s+(?:number|no\.?|id|#))?|(?:surgical\s+)?path(?:ology)?\s+(?:number|no\.?|#)"
    r"|(?:encounter|visit|account|episode|order|requisition|study|exam|admission|member|insurance|policy)"
    r"(?:\s+(?:number|no\.?|id|#)|(?=\s*:))|FIN|CSN|NHS\s+(?:number|no\.?)|health\s+card(?:\s+(?:number|no\.?))?|ID)"
    r"\s*(?:[:#=]|is)?\s*)"
    r"((?=[A-Za-z0-9\-]*\d)[A-Za-z0-9][A-Za-z0-9\-]{2,}[A-Za-z0-9])\b"
)
_ID_PATHOLOGY = re.compile(r"\b[A-Z]{1,3}-?\d{2}-\d{3,7}\b")  # S21-12345, SP-21-0123
_ID_ALNUM = re.compile(r"\b[A-Z]{1,3}\d{6,}\b")  # AB1234567
_LONG_NUMBER = re.compile(r"\b\d{7,}\b")
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")  # DICOM UIDs, IP addresses
# Clinical codes are not identifiers: a labelled code is claimed first and left as it is.
_CODES = re.compile(
    r"(?=[SsCcLlIiRrNn])(?i:\b(?:SNOMED(?:[ \t-]?CT)?|CPT|LOINC|ICD-?(?:9|10|11)(?:-CM)?|RadLex"
    r"|NDC)(?:[ \t]+code)?)[ \t]*[:#]?[ \t]*[A-Za-z]*[0-9][0-9A-Za-z.\-]*"
)
_POSTNOMINAL = re.compile(
    r"(?=[MDPFRNCmdpfrnc])\b(?:M\.?D|D\.?O|Ph\.?D|MBBS|MBChB|FRCR|FRCPC|FACR|RN|NP|PA-C|DNP"
    r"|CRNA)\b(?!-)"
)
_NAME_BEFORE = re.compile(rf"(?<![\w'\u2019\-])({_NAME_SEQ}),?\s+$")
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*")

# (pattern, kind, group, priority): lower priority number wins a tie between spans of one length.
_PATTERNS = [
    (_EMAIL, "email", 0, 0),
    (_SSN, "ssn", 0, 1),
    (_SSN_LABELLED, "ssn", 1, 1),
    (_PHONE_US, "phone", 0, 2),
    (_PHONE_INTL, "phone", 0, 2),
    (_PHONE_TRUNK, "phone", 0, 3),
    (_ADDRESS, "address", 0, 4),
    (_PO_BOX, "address", 0, 4),
    (_ADDRESS_EU, "address", 0, 4),
    (_CITY_LINE, "address", 0, 4),
    *[(p, "date", 0, 5) for p in _DATE_PATTERNS],
    (_ID_LABELLED, "id", 1, 6),
    (_PHONE_LABELLED, "phone", 1, 7),
    (_ID_PATHOLOGY, "id", 0, 8),
    (_ID_ALNUM, "id", 0, 8),
    (_UID, "id", 0, 8),
    (_LONG_NUMBER, "id", 0, 12),
]


def _digits(s: str) -> int:
    return sum(c.isdigit() for c in s)


def _identifier_spans(text: str, identifiers: Iterable[object]) -> list[tuple[int, int]]:
    """Where the caller's identifier values occur, ignoring case (str.find: no pattern to compile per item)."""
    values = {v.strip() for v in identifiers if isinstance(v, str) and len(v.strip()) >= 3}
    if not values:
        return []
    lowered = text.lower()
    same_length = len(lowered) == len(text)
    out = []
    for value in values:
        if same_length and len(value.lower()) == len(value):
            needle, at = value.lower(), lowered.find(value.lower())
            while at >= 0:
                out.append((at, at + len(needle)))
                at = lowered.find(needle, at + len(needle))
        else:  # rare: lower() changes lengths (e.g. "İ"); match with re
            out.extend(m.span() for m in re.finditer(re.escape(value), text, re.IGNORECASE))
    return out


def _token_spans(text: str, known: set[str], found: set[str]) -> list[tuple[int, int]]:
    """Words of `text` that are a known name part (ignoring case) or a name found by a cue (as written).

    One pass over the words; a hyphenated or possessive word is also looked at piece by piece
    ("Smith-Jones", "Smith's")."""
    out = []
    for m in _TOKEN.finditer(text):
        word = m.group()
        if word.lower() in known or word in found:
            out.append(m.span())
            continue
        if "-" in word or "'" in word or "\u2019" in word:
            for piece in re.finditer(r"[^'\u2019\-]+", word):
                w = piece.group()
                if len(w) >= 2 and (w.lower() in known or w in found):
                    out.append((m.start() + piece.start(), m.start() + piece.end()))
    return out


def find_identifiers(
    text: str, identifiers: Iterable[object] = (), names: Iterable[object] = ()
) -> list[tuple[int, int, str]]:
    """The identifier spans of `text` as sorted, non-overlapping (start, end, kind) triples.

    `identifiers`: the item's own identifier values (PatientID, AccessionNumber …), matched anywhere,
    ignoring case (values shorter than 3 characters are ignored). `names`: person names (header names
    such as "DOE^JANE", values of the manifest's name-like columns); each part of 2+ characters is
    matched as a whole word, ignoring case. Overlapping candidates: the longest wins, then the kind
    listed first in `_PATTERNS`; names (given or found by a cue) fill what is left.
    """
    if not text:
        return []
    candidates: list[tuple[int, int, str, int]] = []
    has_at = "@" in text
    for pattern, kind, group, priority in _PATTERNS:
        if pattern is _EMAIL and not has_at:
            continue
        for m in pattern.finditer(text):
            s, e = m.span(group)
            if pattern is _PHONE_INTL and not 8 <= _digits(m.group()) <= 15:
                continue
            candidates.append((s, e, kind, priority))
    candidates.extend((s, e, "id", 9) for s, e in _identifier_spans(text, identifiers))
    for pattern in (_TITLE_CUE, _LABEL_CUE, _VERB_CUE):
        for m in pattern.finditer(text):
            candidates.extend((s, e, "name", 11) for s, e in _cue_words(m.group(1), m.start(1)))
    for m in _POSTNOMINAL.finditer(text):  # "Jane Roe, MD": find the title, then look back
        before = _NAME_BEFORE.search(text, max(0, m.start() - 80), m.start())
        if before:
            candidates.extend((s, e, "name", 11) for s, e in _cue_words(before.group(1), before.start(1)))

    taken = bytearray(len(text))
    for m in _CODES.finditer(text):
        taken[m.start() : m.end()] = b"\x01" * (m.end() - m.start())
    accepted: list[tuple[int, int, str]] = []

    def accept(items: list[tuple[int, int, str, int]]) -> None:
        for s, e, kind, _ in sorted(items, key=lambda c: (c[0] - c[1], c[3], c[0])):
            if e > s and not any(taken[s:e]):
                taken[s:e] = b"\x01" * (e - s)
                accepted.append((s, e, kind))

    accept(candidates)
    # The caller's name parts anywhere, and a name found by a cue ("Dr. Smith") wherever else it is
    # written the same way ("Smith agreed").
    known = {p.lower() for p in _name_parts(names)}
    found = {text[s:e] for s, e, kind in accepted if kind == "name"}
    if known or found:
        accept([(s, e, "name", 13) for s, e in _token_spans(text, known, found)])
    accepted.sort()
    return accepted


def scrub_text(
    text: str, identifiers: Iterable[object] = (), names: Iterable[object] = ()
) -> tuple[str, dict[str, int]]:
    """text -> (scrubbed text, counts per kind: {'name', 'id', 'ssn', 'phone', 'email', 'address', 'date'}).

    `identifiers` and `names` as in `find_identifiers`: the item's own header identifier values, and
    the person names from its header and the manifest's name-like columns (`name_like_columns`).
    """
    counts = dict.fromkeys(KINDS, 0)
    if not text:
        return text, counts
    spans = find_identifiers(text, list(identifiers), list(names))
    if not spans:
        return text, counts
    pieces = []
    at = 0
    for s, e, kind in spans:
        pieces.append(text[at:s])
        pieces.append(PLACEHOLDERS[kind])
        counts[kind] += 1
        at = e
    pieces.append(text[at:])
    return "".join(pieces), counts
