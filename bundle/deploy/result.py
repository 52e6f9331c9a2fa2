"""The deployed model's result: class probabilities -> decision at the bundle's operating point -> JSON and a
DICOM Basic Text SR (pydicom) that references the source radiograph's study."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from custom.io import atomic_path, write_json
from custom.models.trained_model import (
    DEFAULT_CHECKPOINT,
    OperatingPoint,
    load_checkpoint,
)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
DISCLAIMER = "Research use only. Not a medical device; not for clinical diagnosis."
STUDY_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
              "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def read_operating_point(bundle_root: str | os.PathLike) -> OperatingPoint:
    """The validation-picked threshold stored with the weights in `models/model.pt`; 0.5 (method "default") when
    there is none (e.g. a bundle that ships only `models/model.ts`)."""
    path = Path(bundle_root) / DEFAULT_CHECKPOINT
    return OperatingPoint.from_checkpoint(load_checkpoint(path) if path.is_file() else None)


def classify(probabilities, class_names: list[str], operating_point: OperatingPoint) -> dict:
    """(C,) softmax probabilities -> result dict with the operating point's decision (`OperatingPoint.decide`)."""
    probs = np.asarray(torch.as_tensor(probabilities).detach().float().cpu()).reshape(-1)
    if probs.shape[0] != len(class_names):
        raise ValueError(f"expected {len(class_names)} class probabilities, got shape {probs.shape}")
    index = int(operating_point.decide(probs[None])[0])
    return {"predicted_class": class_names[index], "predicted_index": index,
            "probabilities": {name: round(float(p), 6) for name, p in zip(class_names, probs)},
            "threshold": operating_point.threshold, "threshold_method": operating_point.method,
            "disclaimer": DISCLAIMER}


def result_text(result: dict) -> str:
    """One-paragraph text of a result, as put in the SR."""
    probs = ", ".join(f"P({k})={v:.4f}" for k, v in result["probabilities"].items())
    return (f"Predicted class: {result['predicted_class']} ({probs}; decision threshold "
            f"{result['threshold']:.4f} on the positive class). {DISCLAIMER}")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _text_item(concept: Dataset, text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = Sequence([concept])
    item.TextValue = text
    return item


def text_sr(result: dict, source: Dataset, model_name: str, model_version: str) -> Dataset:
    """A Basic Text SR in the source image's study: the predicted class, each class probability and the summary text."""
    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for tag in STUDY_TAGS:
        if tag in source:
            setattr(ds, tag, source.data_element(tag).value)
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "SR", generate_uid(), 9001, 1
    ds.SeriesDescription = f"AI result: {model_name}"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "cxr-pneumonia", model_name, model_version
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.get("SOPClassUID", "")
    reference.ReferencedSOPInstanceUID = source.get("SOPInstanceUID", "")
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence()
    if "SeriesInstanceUID" in source:
        series = Dataset()
        series.SeriesInstanceUID = source.SeriesInstanceUID
        series.ReferencedSOPSequence = Sequence([reference])
        study = Dataset()
        study.StudyInstanceUID = ds.StudyInstanceUID
        study.ReferencedSeriesSequence = Sequence([series])
        ds.CurrentRequestedProcedureEvidenceSequence.append(study)
    items = [_text_item(_code("121071", "DCM", "Finding"), result["predicted_class"])]
    items += [_text_item(_code(f"P_{name}", "99CXR", f"Probability of {name}"), f"{p:.6f}")
              for name, p in result["probabilities"].items()]
    items.append(_text_item(_code("121073", "DCM", "Impression"), result_text(result)))
    ds.ContentSequence = Sequence(items)
    return ds


def write_outputs(result: dict, source: Dataset, output_dir: str | os.PathLike, model_name: str,
                  model_version: str) -> tuple[Path, Path]:
    """Writes `result.json` and `result_sr.dcm` atomically into `output_dir`; returns both paths."""
    output_dir = Path(output_dir)
    json_path, sr_path = output_dir / "result.json", output_dir / "result_sr.dcm"
    write_json(result, json_path)
    with atomic_path(sr_path) as tmp:
        pydicom.dcmwrite(tmp, text_sr(result, source, model_name, model_version), enforce_file_format=True)
    return json_path, sr_path
