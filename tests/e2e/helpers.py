"""Reading back what Orthanc holds (its REST API, with the test Orthanc's credentials)."""

from __future__ import annotations

from io import BytesIO

import highdicom as hd
import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset

from fetalnode.outputs.findings import is_companion_report, made_by_fetalnode
from harness.orthanc import OrthancProcess


def find(orthanc: OrthancProcess, **query: str) -> list[dict]:
    r = httpx.post(
        f"{orthanc.url}/tools/find",
        auth=(orthanc.username, orthanc.password),
        timeout=30,
        json={"Level": "Instance", "Query": query, "Expand": True},
    )
    r.raise_for_status()
    return list(r.json())


def download(orthanc: OrthancProcess, orthanc_id: str) -> Dataset:
    r = httpx.get(f"{orthanc.url}/instances/{orthanc_id}/file", auth=(orthanc.username, orthanc.password), timeout=30)
    r.raise_for_status()
    return dcmread(BytesIO(r.content))


def outputs_in_study(orthanc: OrthancProcess, study_uid: str) -> tuple[list[Dataset], list[Dataset]]:
    """(TID 1500 SR datasets, fetalnode SC datasets) stored in Orthanc under ``study_uid`` (the OB-GYN
    TID 5000 report is left out: it repeats the biometry for OB reporting systems)."""
    objects = [download(orthanc, i["ID"]) for i in find(orthanc, StudyInstanceUID=study_uid)]
    ours = [d for d in objects if made_by_fetalnode(d)]
    srs = [d for d in ours if d.Modality == "SR" and not is_companion_report(d)]
    scs = [d for d in ours if d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"]
    return srs, scs


def sr_content(ds: Dataset) -> dict:
    """What the report says, read back through highdicom's parser."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    groups = sr.content.get_planar_roi_measurement_groups() + sr.content.get_image_measurement_groups()
    out: dict = {"measurements": {}, "evaluations": {}, "refs": set(), "regions": {}, "comments": []}
    for group in groups:
        for m in group.get_measurements():
            out["measurements"][m.name.meaning] = (m.value, m.unit.value)
        for q in group.get_qualitative_evaluations():
            out["evaluations"][q.name.meaning] = q.value.meaning
        region = getattr(group, "roi", None)
        if region is not None:  # an SCOORD SELECTED FROM its source IMAGE
            out["refs"].update(
                r.ReferencedSOPInstanceUID for i in region.ContentSequence for r in i.ReferencedSOPSequence
            )
            out["regions"][str(group.tracking_identifier)] = (region.GraphicType, len(region.GraphicData) // 2)
    for item in ds.ContentSequence:
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "C0034375":
            out["comments"] = [c.TextValue for c in item.ContentSequence]
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "126011":
            for num in map(hd.sr.NumContentItem.from_dataset, item.ContentSequence):  # Derived Imaging Measurements
                out["measurements"][num.name.meaning] = (num.value, num.unit.value)
    out["evidence"] = {
        r.ReferencedSOPInstanceUID
        for s in ds.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for r in se.ReferencedSOPSequence
    }
    return out
