"""--scrub_text judged on a labelled set of synthetic reports: medprep's rules against Presidio's.

    .venv/bin/python -m benchmarks.scrub_eval [--n 240] [--seed 13] [--json OUT.json] [--no-presidio]

The set is generated here, deterministically: radiology and pathology reports whose identifiers
(names, ids, SSNs, phone numbers, e-mail and street addresses, dates) are planted at known character
spans, mixed with clinical sentences that must come through unchanged (measurements, vertebral
levels, ratios, series/image numbers, percentages, doses, scores). Every value is made up.

Systems:
- medprep, rules only: `medprep.transforms.scrub.find_identifiers(text)`, nothing from the caller (a PNG with
  no name column in its manifest);
- medprep with the caller's names: the same, given the manifest's name-column values (patient and
  referring physician), as the pipelines pass them. The signing doctor's name is never given;
- Presidio: presidio-analyzer's predefined recognizers behind a blank spaCy pipeline (no model to
  download, so no NER), offline. Its entity types are mapped to medprep's kinds (PERSON -> name,
  LOCATION -> address, US_SSN -> ssn, PHONE_NUMBER -> phone, EMAIL_ADDRESS -> email,
  DATE_TIME -> date, every other type -> id); a result inside another result is dropped, as
  Presidio's anonymizer merges them.

Measures, per kind:
- recall: planted identifiers whose every token (digit runs, words of 2+ letters) is covered by
  some detection of any kind, i.e. would not survive in the scrubbed text;
- typed recall: the same, counting only detections of the planted kind;
- precision: detections of a kind that overlap a planted identifier of that kind;
and over all kinds: detections on clinical text (overlapping no planted identifier) and clinical
sentences altered, of all clinical sentences.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from dataclasses import dataclass, field

from medprep.transforms.scrub import KINDS, find_identifiers

# ------------------------------------------------------------------------------------------- the labelled set

FIRST = [
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "Michael",
    "Jennifer",
    "David",
    "Linda",
    "Thomas",
    "Susan",
    "Daniel",
    "Margaret",
    "Mary-Ann",
    "Jean-Luc",
    "Aisha",
    "Mohammed",
    "Wei",
    "Priya",
    "Olumide",
    "Svetlana",
    "Hiroshi",
    "Fatima",
    "Carlos",
    "Ingrid",
    "Rajesh",
    "Siobhan",
    "Dmitri",
    "Lucia",
    "Kwame",
    "Anneliese",
    "Tomasz",
    "Mei",
    "Yusuf",
    "Chiara",
    "Arjun",
    "Eleanor",
    "Mateo",
    "Nkechi",
    "Bjorn",
    "Camille",
]
LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Jackson",
    "Martin",
    "Thompson",
    "O'Brien",
    "McDonald",
    "Smith-Jones",
    "Nguyen",
    "Okafor",
    "Kowalski",
    "Patel",
    "Yamamoto",
    "Haddad",
    "Ivanova",
    "Fitzgerald",
    "Schneider",
    "Rossi",
    "Chen",
    "Mensah",
    "Lindqvist",
    "Dubois",
    "Novak",
    "Abernathy",
    "Castellanos",
    "Whitfield",
]
STREETS = [
    "Main",
    "Oak",
    "Maple",
    "Cedar",
    "Elm",
    "Washington",
    "Lake",
    "Hill",
    "Park",
    "Pine",
    "Sunset",
    "Old Mill",
    "Martin Luther King Jr",
    "N Main",
    "West Elm",
    "5th",
    "42nd",
    "Harbor View",
    "Baker",
    "Kingsley",
    "Riverside",
    "Mulberry",
    "Chestnut",
    "Highland",
]
SUFFIXES = [
    "Street",
    "St",
    "Avenue",
    "Ave",
    "Road",
    "Rd",
    "Boulevard",
    "Blvd",
    "Lane",
    "Ln",
    "Drive",
    "Dr",
    "Court",
    "Ct",
    "Place",
    "Way",
    "Terrace",
    "Parkway",
    "Circle",
]
CITIES = [
    ("Springfield", "IL", "62704"),
    ("Boston", "MA", "02115"),
    ("Houston", "TX", "77030"),
    ("Rochester", "MN", "55905"),
    ("San Francisco", "CA", "94143"),
    ("Ann Arbor", "MI", "48109"),
    ("Baltimore", "MD", "21287"),
    ("Salt Lake City", "UT", "84132"),
    ("Portland", "OR", "97239"),
    ("Nashville", "TN", "37232"),
]
UK_CITIES = [("London", "NW1 6XE"), ("Manchester", "M13 9PL"), ("Leeds", "LS1 3EX"), ("Oxford", "OX3 9DU")]
DOMAINS = [
    "example.org",
    "mail.example.com",
    "hospital.example.net",
    "uni-klinik.example.de",
    "clinic.example.co.uk",
    "example.edu",
]
AREA_CODES = [
    "212",
    "312",
    "415",
    "617",
    "713",
    "206",
    "303",
    "404",
    "503",
    "602",
    "702",
    "919",
    "860",
    "507",
    "734",
    "410",
    "801",
    "615",
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def _ssn(r: random.Random) -> str:
    area = r.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}", f"{r.randint(1, 99):02d}", f"{r.randint(1, 9999):04d}"


def _us_number(r: random.Random) -> tuple[str, str, str]:
    return r.choice(AREA_CODES), str(r.randint(200, 999)), f"{r.randint(0, 9999):04d}"


def make_phone(r: random.Random) -> str:
    a, b, c = _us_number(r)
    forms = [
        f"({a}) {b}-{c}",
        f"{a}-{b}-{c}",
        f"{a}.{b}.{c}",
        f"+1 {a} {b} {c}",
        f"1-{a}-{b}-{c}",
        f"{a}-{b}-{c} ext. {r.randint(100, 9999)}",
        f"+1 ({a}) {b}-{c}",
        f"+44 20 7946 0{r.randint(0, 999):03d}",
        f"+44 7700 900{r.randint(0, 999):03d}",
        f"+49 30 {r.randint(1000000, 9999999)}",
        f"+33 1 {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)}",
        f"+91 9{r.randint(1000, 9999)} {r.randint(10000, 99999)}",
        f"+61 2 {r.randint(8000, 9999)} {r.randint(1000, 9999)}",
        f"0044 20 7946 0{r.randint(0, 999):03d}",
        f"020 7946 0{r.randint(0, 999):03d}",
        f"{a} {b} {c}",
        f"+1.{a}.{b}.{c}",
        f"+1-{a}-{b}-{c}",
        f"(020) 7946 0{r.randint(0, 999):03d}",
        f"+353 1 {r.randint(200, 999)} {r.randint(1000, 9999)}",
    ]
    return r.choice(forms)


def _ordinal(d: int) -> str:
    return "th" if 10 <= d % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")


def make_date(r: random.Random) -> str:
    y, m, d = r.randint(1940, 2025), r.randint(1, 12), r.randint(1, 28)
    forms = [
        f"{m:02d}/{d:02d}/{y}",
        f"{y}-{m:02d}-{d:02d}",
        f"{d} {MONTHS[m - 1]} {y}",
        f"{MONTHS[m - 1]} {d}, {y}",
        f"{MONTHS[m - 1][:3]} {d}, {y}",
        f"{d:02d}.{m:02d}.{y % 100:02d}",
        f"{m}/{d}/{y}",
        f"{MONTHS[m - 1]} {y}",
        f"{d}-{MONTHS[m - 1][:3]}-{y}",
        f"{y}/{m:02d}/{d:02d}",
        f"{d}{_ordinal(d)} of {MONTHS[m - 1]} {y}",
        f"{MONTHS[m - 1]} {d}{_ordinal(d)}, {y}",
        f"{d} {MONTHS[m - 1][:3]} {y % 100:02d}",
        f"{y}{m:02d}{d:02d}",
    ]
    return r.choice(forms)


def make_address(r: random.Random) -> str:
    if r.random() < 0.12:
        city, post = r.choice(UK_CITIES)
        number = f"{r.randint(1, 250)}{r.choice(['', 'B'])}"
        street = f"{r.choice(STREETS)} {r.choice(['Street', 'Road', 'Lane'])}"
        return f"{number} {street}, {city} {post}"
    if r.random() < 0.05:
        return f"PO Box {r.randint(1, 9999)}, {' '.join(r.choice(CITIES)[:2])}"
    if r.random() < 0.05:  # no street suffix: rules cannot tell
        return f"{r.randint(1, 999)} {r.choice(STREETS)}, {r.choice(CITIES)[0]}"
    street = f"{r.randint(1, 99999)} {r.choice(STREETS)} {r.choice(SUFFIXES)}{r.choice(['', '', '.'])}"
    unit = r.choice(
        [
            "",
            "",
            f", Apt {r.randint(1, 40)}{r.choice('ABCD')}",
            f", Suite {r.randint(100, 900)}",
            f" #{r.randint(1, 30)}",
        ]
    )
    city, state, zipc = r.choice(CITIES)
    tail = r.choice(["", f", {city}, {state} {zipc}", f", {city}, {state} {zipc}", f", {city} {state} {zipc}"])
    return street + unit + tail


def make_email(r: random.Random, first: str, last: str) -> str:
    f, s = re.sub(r"[^a-z]", "", first.lower()), re.sub(r"[^a-z]", "", last.lower())
    local = r.choice(
        [
            f"{f}.{s}",
            f"{f[0]}{s}",
            f"{f[0]}{s}{r.randint(1, 99)}",
            f"{s}_{f}",
            f"{f}.{s}+radiology",
            f"dr.{s}",
            "radiology.reports",
            f"{s}{r.randint(1950, 2005)}",
            f"{first[0]}.{re.sub('[^A-Za-z]', '', last)}",
        ]
    )
    return f"{local}@{r.choice(DOMAINS)}"


def make_id(r: random.Random) -> tuple[str, str]:
    """(label, value) of a record identifier."""
    year = r.randint(15, 25)
    return r.choice(
        [
            ("MRN: ", f"{r.randint(1000000, 99999999)}"),
            ("MRN ", f"{r.choice(['A', 'MR', 'AB'])}{r.randint(100000, 9999999)}"),
            ("Medical record number ", f"{r.randint(100000, 9999999)}"),
            ("Accession: ", f"{r.choice(['A', 'RAD', 'CT'])}{r.randint(10000000, 99999999)}"),
            ("Acc #: ", f"20{year}{r.randint(1000, 9999)}-{r.randint(1, 99):04d}"),
            ("Case #: ", f"{r.choice(['S', 'SP', 'CH', 'NS'])}{year}-{r.randint(100, 99999):05d}"),
            ("Patient ID: ", f"{r.randint(1000, 9999)}-{r.randint(10, 99)}-{r.randint(100, 999)}"),
            ("Specimen #: ", f"SP-{year}-{r.randint(1000, 999999):06d}"),
            ("Encounter number ", f"{r.randint(10000000, 999999999)}"),
            ("", f"{r.randint(10000000, 99999999)}"),  # an unlabelled number in a header line
            ("MRN#", f"{r.randint(1000000, 99999999)}"),
            ("mrn ", f"{r.randint(1000000, 99999999)}"),
            ("Accession number: ", f"20{year}-{r.randint(1000000, 9999999)}"),
            ("Encounter: ", f"E{r.randint(100000, 9999999)}"),
        ]
    )


CLINICAL = [
    "There is a {a}.{b} x {c}.{d} cm spiculated nodule in the right upper lobe (series {s} image {i}).",
    "Compression deformity of T{t} with {p}% loss of height; mild disc bulge at L4-L5.",
    "Degenerative changes at C5-C6 and C6-C7 with mild foraminal narrowing.",
    "The liver measures {n} cm in craniocaudal dimension. No focal lesion.",
    "Left ventricular ejection fraction estimated at {p}%.",
    "CTDIvol {a}.{b} mGy, DLP {z} mGy-cm; 100 mL Omnipaque 350 at 3 mL/s.",
    "Stable {n} mm hypodensity in segment 7 (image {i} of {j}).",
    "The lumen is narrowed by about 1/2; ratio 3/4 at the origin.",
    "Blood pressure 120/80, heart rate {h}.",
    "Prostatic adenocarcinoma, Gleason score 3+4=7 (Grade Group 2), involving {k} of 12 cores.",
    "Tumor size {a}.{b} cm; margins negative (closest 0.{d} cm); pT2 N0 (0/{q} lymph nodes).",
    "ER positive ({p}%), PR positive ({p}%), HER2 2+ by IHC; Ki-67 {k}%.",
    "BI-RADS 4: suspicious abnormality. Biopsy recommended.",
    "Antibody dilution 1:1000. Stains performed on block A3.",
    "Radiation dose 2.5 Gy per fraction, 45 Gy total in 18 fractions.",
    "Sections submitted in cassettes A1-A4 and B1-B6.",
    "Follow-up CT in 3-6 months is recommended per Fleischner 2017 guidelines.",
    "Slice thickness 0.625 mm, 120 kVp; 1.5 T magnet.",
    "Series {s} images {i}-{j} show the lesion.",
    "The patient is a {age} year old with a {k} pack-year smoking history.",
    "Heart size normal. Lungs are clear. No pleural effusion or pneumothorax.",
    "Attenuation {h} HU before and {z} HU after contrast.",
    "Mass at the 10:30 position, {n} cm from the nipple.",
    "Right kidney {n}.{b} cm, left kidney {n}.{d} cm.",
    "White matter hyperintensities, Fazekas grade 2.",
    "Aorta {n}.{b} cm at the level of the right pulmonary artery (image {i}).",
    "Weight {h} kg, height 175 cm, BMI 23.5.",
    "Hemoglobin 12.5 g/dL, WBC 7.2 x 10^9/L, platelets 250.",
    "{m} of 12 lymph nodes positive ({m}/12).",
    "Fractures of the 5th and 6th ribs on the left.",
    "Lymph node 1.4 x 1.1 cm at station 4R and 10L.",
    "SUVmax 8.4 (previously 12.1).",
    "In 2019 the patient underwent right upper lobectomy.",
    "Metformin 500 mg twice daily; heparin 5000 units.",
    "Series 3 image 45 and series {s} slice {i} are the key images.",
    "Impression: Findings are consistent with pneumonia. No change since the prior study.",
    "Main pulmonary artery 2.9 cm. St. Jude valve in place.",
    "Emphysema, upper lobe predominant (Goddard score {k}).",
    "Baker cyst measuring {a}.{b} cm; Schmorl node at L2.",
    "Small amount of free fluid in Morison pouch. Crohn disease of the terminal ileum.",
    "Chiari I malformation with tonsillar descent of {n} mm.",
    "Hodgkin lymphoma, nodular sclerosis type; Virchow node enlarged.",
    "Biopsy performed at 14:25 under ultrasound guidance, {k} passes with an 18 G needle.",
    "Reviewed at the Thoracic Tumor Board on day {k}.",
    "Parkinson disease; DaTscan uptake reduced in the left putamen.",
]


@dataclass
class Report:
    text: str = ""
    entities: list = field(default_factory=list)  # (start, end, kind)
    protected: list = field(default_factory=list)  # (start, end) of clinical sentences
    names: list = field(default_factory=list)  # manifest name-column values (patient, referrer)

    def add(self, s: str) -> None:
        self.text += s

    def ent(self, kind: str, value: str) -> None:
        self.entities.append((len(self.text), len(self.text) + len(value), kind))
        self.text += value

    def clinical(self, sentence: str) -> None:
        self.protected.append((len(self.text), len(self.text) + len(sentence)))
        self.text += sentence


def _fill(r: random.Random, template: str) -> str:
    v = dict(
        a=r.randint(1, 9),
        b=r.randint(0, 9),
        c=r.randint(1, 9),
        d=r.randint(1, 9),
        s=r.randint(2, 12),
        i=r.randint(5, 240),
        j=r.randint(241, 400),
        t=r.randint(1, 12),
        p=r.randint(5, 95),
        n=r.randint(2, 30),
        z=r.randint(100, 900),
        h=r.randint(50, 110),
        k=r.randint(1, 40),
        q=r.randint(8, 24),
        m=r.randint(0, 12),
        age=r.randint(20, 88),
    )
    return template.format(**v)


def _person(r: random.Random) -> tuple[str, str]:
    return r.choice(FIRST), r.choice(LAST)


def make_report(r: random.Random) -> Report:
    rep = Report()
    pf, pl = _person(r)
    rf, rl = _person(r)
    sf, sl = _person(r)
    rep.names = [f"{pl.upper()}^{pf.upper()}" if r.random() < 0.3 else f"{pf} {pl}", f"{rf} {rl}"]
    pathology = r.random() < 0.4
    titles = ["CT CHEST WITH CONTRAST\n", "MRI BRAIN\n", "CHEST X-RAY, 2 VIEWS\n", "CT ABDOMEN/PELVIS\n"]
    rep.add("SURGICAL PATHOLOGY REPORT\n" if pathology else r.choice(titles))
    # header: patient name, id, date of birth
    style = r.randint(0, 3)
    if style == 0:
        rep.add("Patient: ")
        rep.ent("name", f"{pf} {pl}")
    elif style == 1:
        rep.add("Patient name: ")
        rep.ent("name", f"{pl.upper()}, {pf.upper()}")
    elif style == 2:
        rep.add("Name: ")
        rep.ent("name", f"{pl}, {pf}")
    else:
        rep.ent("name", f"{pf} {pl}")  # no cue: only the caller's names help
    label, value = make_id(r)
    rep.add(f". {label}") if label else rep.add(". ")
    rep.ent("id", value)
    rep.add(". DOB: ")
    rep.ent("date", make_date(r))
    rep.add(".\n")
    if r.random() < 0.5:
        label, value = make_id(r)
        rep.add(label or "Ref: ")
        rep.ent("id", value)
        rep.add(". ")
    rep.add(r.choice(["Referring physician: Dr. ", "Ordering: Dr. ", "Referred by Dr. ", "Requested by Dr. "]))
    rep.ent("name", f"{rf} {rl}" if r.random() < 0.6 else rl)
    rep.add(".\n")
    if r.random() < 0.6:
        rep.add(r.choice(["Exam date: ", "Date of service: ", "Received: ", "Collected on "]))
        rep.ent("date", make_date(r))
        rep.add(".\n")
    # body: clinical sentences, with identifiers in between
    kinds = ["ssn", "phone", "email", "address", "date", "phone", "phone_name", "name_mention"]
    r.shuffle(kinds)
    extras = kinds[: r.randint(2, 5)]
    sentences = [("clinical", _fill(r, t)) for t in r.sample(CLINICAL, r.randint(3, 6))] + [(k, None) for k in extras]
    r.shuffle(sentences)
    rep.add("FINDINGS: " if not pathology else "DIAGNOSIS: ")
    for kind, sentence in sentences:
        if kind == "clinical":
            rep.clinical(sentence)
        elif kind == "ssn":
            a, b, c = _ssn(r)
            label, value = r.choice(
                [
                    ("SSN: ", f"{a}-{b}-{c}"),
                    ("SS# ", f"{a} {b} {c}"),
                    ("Social security number ", f"{a}{b}{c}"),
                    ("Insurance holder ", f"{a}-{b}-{c}"),
                ]
            )
            rep.add(label)
            rep.ent("ssn", value)
            rep.add(" on file.")
        elif kind == "phone":
            pre, post = r.choice(
                [
                    ("Please call ", " with questions."),
                    ("Pager: ", "."),
                    ("Callback number ", "."),
                    ("Patient's daughter can be reached at ", "."),
                    ("Results faxed to ", "."),
                    ("Tel. ", " (office)."),
                ]
            )
            rep.add(pre)
            rep.ent("phone", make_phone(r))
            rep.add(post)
        elif kind == "phone_name":
            rep.add(
                r.choice(
                    ["Findings discussed with Dr. ", "Critical result communicated to Dr. ", "Results phoned to Dr. "]
                )
            )
            rep.ent("name", r.choice([rl, f"{rf} {rl}"]))
            rep.add(" at ")
            rep.ent("phone", make_phone(r))
            rep.add(" on ")
            rep.ent("date", make_date(r))
            rep.add(".")
        elif kind == "name_mention":  # the patient again, in running text
            first_word = r.choice(
                [
                    f"{pf} {pl} is",
                    f"Mrs. {pl}'s daughter is",
                    f"Per {pf} {pl}, she is",
                    f"Mr {pl} is",
                    f"{pl.upper()}, {pf.upper()} is",
                ]
            )
            start = len(rep.text)
            rep.add(first_word + " aware of the findings.")
            for m in re.finditer(re.escape(pf) + "|" + re.escape(pl), first_word, re.IGNORECASE):
                rep.entities.append((start + m.start(), start + m.end(), "name"))
        elif kind == "email":
            rep.add(r.choice(["Images sent to ", "Contact: ", "Copy to "]))
            rep.ent("email", make_email(r, *r.choice([(pf, pl), (rf, rl), (sf, sl)])))
            rep.add(".")
        elif kind == "address":
            rep.add(r.choice(["Patient resides at ", "Home address: ", "Transferred from the clinic at "]))
            rep.ent("address", make_address(r))
            rep.add(".")
        elif kind == "date":
            rep.add(r.choice(["Comparison: CT of ", "Compared with the study from ", "Prior biopsy on "]))
            rep.ent("date", make_date(r))
            rep.add(".")
        rep.add(" ")
    rep.text = rep.text.rstrip(" ")
    rep.add("\n")
    # signature: a name the caller never passes
    sig = r.randint(0, 2)
    if sig == 0:
        rep.add("Electronically signed by ")
        rep.ent("name", f"{sf} {sl}")
        rep.add(", MD on ")
        rep.ent("date", make_date(r))
        rep.add(".")
    elif sig == 1:
        rep.add("Dictated by: Dr. ")
        rep.ent("name", f"{sf} {sl}")
        rep.add(".")
    else:
        rep.ent("name", f"{sf} {sl}")
        rep.add(", MD, Attending Pathologist" if pathology else ", MD, Radiologist")
    return rep


def make_reports(n: int = 240, seed: int = 13) -> list[Report]:
    """n synthetic reports, the same for the same (n, seed)."""
    r = random.Random(seed)
    return [make_report(r) for _ in range(n)]


# ------------------------------------------------------------------- a cross-check on values written by others


def fng_reports(csv_path: str, seed: int = 13) -> list[Report]:
    """Short report headers built from presidio-evaluator's FakeNameGenerator.com_3000.csv (3,000 made-up
    people from 30 countries: their names, street addresses, postcodes, phone numbers, birthdays,
    e-mail addresses, US SSNs). The sentence frames are ours; the values and their formats are not,
    which is the point: our own set only has the formats we thought of.

    Get the file with `pip download --no-deps presidio-evaluator` and unzip the wheel
    (presidio_evaluator/data_generator/raw_data/FakeNameGenerator.com_3000.csv).
    """
    import csv

    r = random.Random(seed)
    out = []
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:

        def clean(v):
            return re.sub(r"\s+", " ", re.sub(r"\[\[w:[^|\]]*\|([^\]]*)\]", r"\1", v)).strip()

        name = f"{clean(row['GivenName'])} {clean(row['Surname'])}"
        street = clean(row["StreetAddress"])
        city = clean(f"{row['City']} {row['State']} {row['ZipCode']}")
        phone = f"+{row['TelephoneCountryCode']} {clean(row['TelephoneNumber'])}"
        rep = Report()
        style = r.randint(0, 2)
        if style == 0:
            rep.add("Patient: ")
            rep.ent("name", name)
            rep.add(". DOB: ")
            rep.ent("date", row["Birthday"])
            rep.add(".\nAddress: ")
            rep.ent("address", street)
            rep.add(", ")
            rep.ent("address", city)
            rep.add(".\nPhone: ")
            rep.ent("phone", phone)
            rep.add(". E-mail: ")
            rep.ent("email", row["EmailAddress"])
            rep.add(".")
        elif style == 1:
            rep.add(f"{row['Title']} ")
            rep.ent("name", name)
            rep.add(" (born ")
            rep.ent("date", row["Birthday"])
            rep.add(") of ")
            rep.ent("address", street)
            rep.add(", ")
            rep.ent("address", city)
            rep.add(" was seen today; contact ")
            rep.ent("phone", phone)
            rep.add(" or ")
            rep.ent("email", row["EmailAddress"])
            rep.add(".")
        else:
            rep.add("Referred by Dr. ")
            rep.ent("name", name)
            rep.add(", ")
            rep.ent("address", street)
            rep.add(", ")
            rep.ent("address", city)
            rep.add(", tel. ")
            rep.ent("phone", phone)
            rep.add(".")
        if re.fullmatch(r"\d{3}-\d{2}-\d{4}", row["NationalID"]):
            rep.add(" SSN ")
            rep.ent("ssn", row["NationalID"])
            rep.add(".")
        rep.add(" ")
        rep.clinical(_fill(r, r.choice(CLINICAL)))
        out.append(rep)
    return out


# --------------------------------------------------------------------------------------------------- systems


def medprep_detect(reports: list[Report], with_names: bool) -> list[list[tuple[int, int, str]]]:
    return [find_identifiers(rep.text, (), rep.names if with_names else ()) for rep in reports]


PRESIDIO_KINDS = {
    "PERSON": "name",
    "LOCATION": "address",
    "US_SSN": "ssn",
    "PHONE_NUMBER": "phone",
    "EMAIL_ADDRESS": "email",
    "DATE_TIME": "date",
}


def presidio_analyzer():
    """Presidio's AnalyzerEngine with its predefined recognizers behind a blank spaCy pipeline, offline.

    Raises ImportError when presidio-analyzer (or spaCy) is not installed.
    """
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    # The e-mail recognizer asks tldextract, whose default first fetches the public-suffix list from
    # the internet; the snapshot bundled with tldextract answers the same offline.
    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    tldextract.extract = offline
    import presidio_analyzer.predefined_recognizers.generic.email_recognizer as email_recognizer

    email_recognizer.tldextract.extract = offline

    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank:en"}])
    engine.nlp = {"en": spacy.blank("en")}  # no model: tokens only, no NER, no lemmas
    return AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])


def presidio_detect(analyzer, reports: list[Report], threshold: float = 0.0) -> list[list[tuple[int, int, str]]]:
    out = []
    for rep in reports:
        results = [x for x in analyzer.analyze(rep.text, language="en") if x.score >= threshold]
        spans = []
        for x in results:
            inside = any(
                y is not x and y.start <= x.start and x.end <= y.end and (y.end - y.start) > (x.end - x.start)
                for y in results
            )
            if not inside:
                spans.append((x.start, x.end, PRESIDIO_KINDS.get(x.entity_type, "id")))
        out.append(sorted(set(spans)))
    return out


# -------------------------------------------------------------------------------------------------- measuring

_TOKEN = re.compile(r"\d+|[A-Za-z]{2,}")


def _covered(taken: bytearray, text: str, s: int, e: int) -> bool:
    return all(all(taken[s + m.start() : s + m.end()]) for m in _TOKEN.finditer(text[s:e]))


def covered(reports: list[Report], detections: list[list[tuple[int, int, str]]]) -> list[tuple[str, bool]]:
    """(kind, removed?) for every planted identifier, in order."""
    out = []
    for rep, spans in zip(reports, detections):
        taken = bytearray(len(rep.text))
        for s, e, _ in spans:
            taken[s:e] = b"\x01" * (e - s)
        out.extend((kind, _covered(taken, rep.text, s, e)) for s, e, kind in rep.entities)
    return out


def evaluate(reports: list[Report], detections: list[list[tuple[int, int, str]]]) -> dict:
    """Per kind: planted, recall, typed_recall, detected, precision; overall clinical false positives."""
    planted = dict.fromkeys(KINDS, 0)
    found_any = dict.fromkeys(KINDS, 0)
    found_typed = dict.fromkeys(KINDS, 0)
    detected = dict.fromkeys(KINDS, 0)
    correct = dict.fromkeys(KINDS, 0)
    on_clinical = 0
    altered = 0
    sentences = 0
    for rep, spans in zip(reports, detections):
        taken = bytearray(len(rep.text))
        typed = {k: bytearray(len(rep.text)) for k in KINDS}
        for s, e, kind in spans:
            taken[s:e] = b"\x01" * (e - s)
            typed[kind][s:e] = b"\x01" * (e - s)
        for s, e, kind in rep.entities:
            planted[kind] += 1
            found_any[kind] += _covered(taken, rep.text, s, e)
            found_typed[kind] += _covered(typed[kind], rep.text, s, e)
        for s, e, kind in spans:
            detected[kind] += 1
            hits = [k for (ps, pe, k) in rep.entities if ps < e and s < pe]
            correct[kind] += kind in hits
            on_clinical += not hits
        for s, e in rep.protected:
            sentences += 1
            altered += any(ds < e and s < de for ds, de, _ in spans)
    per_kind = {}
    for k in KINDS:
        per_kind[k] = {
            "planted": planted[k],
            "recall": round(found_any[k] / planted[k], 3) if planted[k] else None,
            "typed_recall": round(found_typed[k] / planted[k], 3) if planted[k] else None,
            "detected": detected[k],
            "precision": round(correct[k] / detected[k], 3) if detected[k] else None,
        }
    total_planted = sum(planted.values())
    return {
        "kinds": per_kind,
        "all": {
            "planted": total_planted,
            "recall": round(sum(found_any.values()) / total_planted, 3),
            "detected": sum(detected.values()),
            "precision": round(sum(correct.values()) / max(1, sum(detected.values())), 3),
        },
        "detections_on_clinical_text": on_clinical,
        "clinical_sentences": sentences,
        "clinical_sentences_altered": altered,
    }


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def table(results: dict) -> str:
    systems = list(results)
    lines = [
        "| kind | planted | " + " | ".join(f"{s}: recall / precision" for s in systems) + " |",
        "|---|---|" + "---|" * len(systems),
    ]
    first = results[systems[0]]
    for k in KINDS + ("all",):
        row = first["kinds"][k] if k != "all" else first["all"]
        cells = []
        for s in systems:
            m = results[s]["kinds"][k] if k != "all" else results[s]["all"]
            cells.append(f"{_fmt(m['recall'])} / {_fmt(m['precision'])}")
        lines.append(f"| {k} | {row['planted']} | " + " | ".join(cells) + " |")
    lines.append(
        "| clinical sentences altered | "
        + str(first["clinical_sentences"])
        + " | "
        + " | ".join(f"{results[s]['clinical_sentences_altered']}" for s in systems)
        + " |"
    )
    lines.append(
        "| detections on clinical text | | "
        + " | ".join(f"{results[s]['detections_on_clinical_text']}" for s in systems)
        + " |"
    )
    return "\n".join(lines)


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=240, help="reports in the labelled set")
    ap.add_argument("--seed", type=int, default=13, help="seed of the labelled set")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--no-presidio", action="store_true", help="measure medprep's rules only")
    ap.add_argument("--fng", metavar="CSV", help="also measure on presidio-evaluator's FakeNameGenerator.com_3000.csv")
    args = ap.parse_args(argv)
    reports = make_reports(args.n, args.seed)
    chars = sum(len(r.text) for r in reports)
    results, timings, spans = {}, {}, {}
    for label, with_names in (("medprep rules", False), ("medprep + names", True)):
        timings[label] = _best_time(lambda w=with_names: medprep_detect(reports, w), 3) / len(reports)
        spans[label] = medprep_detect(reports, with_names)
        results[label] = evaluate(reports, spans[label])
    presidio_note = None
    if not args.no_presidio:
        try:
            analyzer = presidio_analyzer()
        except ImportError as e:
            presidio_note = f"Presidio not measured: {e} (pip install presidio-analyzer)"
        else:
            presidio_detect(analyzer, reports[:5])
            for threshold in (0.0, 0.5):
                label = f"Presidio ≥{threshold:g}"
                spans[label] = presidio_detect(analyzer, reports, threshold)
                timings[label] = _best_time(lambda t=threshold: presidio_detect(analyzer, reports, t), 2) / len(reports)
                results[label] = evaluate(reports, spans[label])
            from importlib.metadata import version

            presidio_note = f"presidio-analyzer {version('presidio-analyzer')}, spaCy {version('spacy')} (blank 'en')"
    print(f"{len(reports)} reports, {chars} characters, seed {args.seed}")
    print(table(results))
    print()
    print(
        "typed recall (the right placeholder): "
        + "; ".join(
            f"{s}: " + ", ".join(f"{k} {_fmt(results[s]['kinds'][k]['typed_recall'])}" for k in KINDS) for s in results
        )
    )
    print("time per report (best of 2-3, one core): " + ", ".join(f"{s} {t * 1000:.2f} ms" for s, t in timings.items()))
    if presidio_note:
        print(presidio_note)
    for label in [s for s in spans if s.startswith("Presidio")]:
        ours, theirs = covered(reports, spans["medprep rules"]), covered(reports, spans[label])
        extra = [k for (k, a), (_, b) in zip(ours, theirs) if b and not a]
        print(
            f"planted identifiers {label} removes that medprep's rules miss: {len(extra)} "
            f"{dict(sorted((k, extra.count(k)) for k in set(extra)))}"
        )
    figures = {
        "n": len(reports),
        "seed": args.seed,
        "results": results,
        "ms_per_report": {s: round(t * 1000, 3) for s, t in timings.items()},
    }
    if args.fng:
        others = fng_reports(args.fng, args.seed)
        fng = {"medprep rules": evaluate(others, medprep_detect(others, False))}
        if "Presidio ≥0" in results:
            fng["Presidio ≥0"] = evaluate(others, presidio_detect(analyzer, others, 0.0))
        print(f"\nFakeNameGenerator cross-check: {len(others)} headers, values from presidio-evaluator's data")
        print(table(fng))
        figures["fng"] = fng
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
