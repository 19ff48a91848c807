"""`medprep images`: 2D images (CXR, fundus, skin, other) + text -> records.

Tasks per manifest row: image_text (image + report/caption), longitudinal ([prior, current]),
localization (boxes rendered in MedGemma 1.5's answer format), classification (label).
"""

from __future__ import annotations

import apache_beam as beam

from medprep.pipelines.config import Config
from medprep.pipelines.graphs.dataset_writer import manifest_pipeline
from medprep.pipelines.graphs.row_dofn import ManifestRowDoFn
from medprep.pipelines.io.manifest import resolve_ref
from medprep.pipelines.io.sources.files import read_bytes
from medprep.pipelines.records.example import ExampleParts, build_record, name_values, row_input_key
from medprep.transforms.errors import ItemError, stage
from medprep.transforms.geometry import map_boxes, validate_boxes
from medprep.transforms.image import decode_any, finish_rendered
from medprep.transforms.localization import box_answer


def row_task(row: dict) -> str:
    """The task a manifest row describes."""
    if row["boxes"]:
        return "localization"
    if row["prior"]:
        return "longitudinal"
    if row["label"] and not row["text"]:
        return "classification"
    return "image_text"


class PrepareImageRow(ManifestRowDoFn):
    """Manifest row -> one record (or one error line)."""

    concurrent_items = True  # per-item state lives in locals: rows may be prepared in threads

    def setup(self):
        super().setup()
        self.options = self.config.image_options()

    def outputs(self, row):
        refs = ([row["prior"]] if row["prior"] else []) + list(row["images"])  # [prior, current]
        finished = []
        for ref in refs:
            data = read_bytes(resolve_ref(ref, self.config.input), ref, self.config.max_input_bytes)
            with stage("decode"):
                rendered = decode_any(data, ref, self.options)
            with stage("transform"):
                finished.append(finish_rendered(rendered, self.options))
        current = finished[-1]
        task = row_task(row)
        text, boxes = row["text"], []
        if task == "localization":
            problem = validate_boxes(row["boxes"], current.plan.src_width, current.plan.src_height)
            if problem:
                raise ItemError("transform", problem)
            boxes = map_boxes(row["boxes"], current.plan).tolist()
            if not text.strip():  # a row's own text is the response; the box answer only stands in for none
                text = box_answer(boxes, row["box_labels"])
        elif task == "classification":
            text = row["label"]
        if not text.strip():
            raise ItemError("text", "empty text: the row has no text, label or boxes")
        ids = current.identifiers
        parts = ExampleParts(
            example_key=row["id"] or f"row:{row['row']}:{'|'.join(refs)}",
            modality=row["modality"] or current.info.get("modality") or "photo",
            task=task,
            images=finished,
            sources=refs,
            input_key=row_input_key(row),
            extra_names=name_values(row),
            prompt=row["prompt"],
            text=text,
            patient_id=row["patient_id"] or ids.get("PatientID", ""),
            study_uid=ids.get("StudyInstanceUID", ""),
            boxes=boxes,
            box_labels=row["box_labels"],
            label=row["label"],
            identifiers={k: v for f in finished for k, v in f.identifiers.items() if v},
            burned_in=any(f.info.get("burned_in_annotation") for f in finished),
        )
        with stage("text"):
            yield build_record(parts, self.config, self.tokenizer)


def build(p: beam.Pipeline, config: Config):
    """The images pipeline graph."""
    return manifest_pipeline(p, "images", config, PrepareImageRow(config))
