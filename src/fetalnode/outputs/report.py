"""TID 1500 Measurement Report in a Comprehensive 3D SR, following IHE AI Results (AIR).

The report lives in the source study, names the algorithm (TID 4019 Algorithm Identification and
the Contributing Equipment Sequence), carries the finding and malformation type as coded
qualitative evaluations with their confidence, the head biometry in mm, and the head ellipse as
an image region on the source image.
"""

from __future__ import annotations

from datetime import UTC, datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from fetalnode import RESEARCH_NOTICE, __version__
from fetalnode.errors import EncodingError
from fetalnode.inference import AnalysisResult
from fetalnode.outputs import codes as fc
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.uids import DEVICE_UID, derive_uid


def contributing_equipment(manufacturer: str, model_names: str, station: str) -> hd.ContributingEquipment:
    """The algorithm as Processing Equipment (IHE AIR), with this software's Device UID."""
    item = hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name="fetalnode",
        software_versions=[__version__, *model_names.split(",")][:8],
        station_name=station[:16] or None,
        contribution_datetime=datetime.now(UTC).strftime("%Y%m%d%H%M%S"),
        contribution_description=f"AI analysis ({RESEARCH_NOTICE.lower()})"[:64],
    )
    item.DeviceUID = DEVICE_UID
    return item


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _algorithm(result: AnalysisResult) -> hd.sr.AlgorithmIdentification:
    seg, cls = result.seg_model, result.cls_model
    return hd.sr.AlgorithmIdentification(
        name=f"fetalnode {cls[0]}",
        version=cls[1],
        parameters=[f"segmentation {seg[0]} {seg[1]}", f"classifier {cls[0]} {cls[1]}"],
        manufacturer="fetalnode project",
    )


def _measurement_group(
    source: Dataset, result: AnalysisResult, frame_number: int | None, sr_instance_uid: str
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = _algorithm(result)
    tracking = hd.sr.TrackingIdentifier(uid=derive_uid("tracking", sr_instance_uid), identifier="fetal head")
    source_image = hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=[frame_number] if frame_number else None,
    )
    if not result.analysed or result.ellipse is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=fc.HEAD_STRUCTURE,
            algorithm_id=algorithm,
            source_images=[source_image],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(fc.AI_ASSESSMENT, fc.NOT_ANALYSED)],
        )
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.ELLIPSE,
        graphic_data=result.ellipse.axis_endpoints().astype(np.float64) + 1.0,  # DICOM pixel coords start at 1
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=[frame_number] if frame_number else None,
        ),
    )
    measurements = []
    if result.biometry is not None:
        for code, value in (
            (fc.HEAD_CIRCUMFERENCE, result.biometry.hc_mm),
            (fc.BIPARIETAL_DIAMETER, result.biometry.bpd_mm),
            (fc.OCCIPITAL_FRONTAL_DIAMETER, result.biometry.ofd_mm),
        ):
            measurements.append(hd.sr.Measurement(name=code, value=round(value, 2), unit=fc.MM, algorithm_id=algorithm))
    measurements.append(
        hd.sr.Measurement(
            name=fc.FINDING_CONFIDENCE, value=round(100 * result.confidence, 2), unit=fc.PERCENT, algorithm_id=algorithm
        )
    )
    evaluations = [
        hd.sr.QualitativeEvaluation(fc.AI_ASSESSMENT, fc.ABNORMAL if result.finding == "abnormal" else fc.NORMAL)
    ]
    if result.finding == "abnormal":
        evaluations.append(
            hd.sr.QualitativeEvaluation(fc.MALFORMATION_TYPE, fc.malformation_code(result.malformation_type))
        )
        measurements.append(
            hd.sr.Measurement(
                name=fc.TYPE_CONFIDENCE,
                value=round(100 * result.type_probability, 2),
                unit=fc.PERCENT,
                algorithm_id=algorithm,
            )
        )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=region,
        finding_type=fc.HEAD_STRUCTURE,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def report_comments(result: AnalysisResult, frame_number: int | None, n_frames: int, spacing_source: str) -> list[str]:
    """Free-text statements of the report: the notice first, then what a reader must know."""
    lines = [f"{RESEARCH_NOTICE}: generated by fetalnode from models trained on small public datasets."]
    if not result.analysed:
        lines.append(result.reason[:1].upper() + result.reason[1:])
    else:
        text = f"Finding: {result.finding}"
        if result.finding == "abnormal":
            text += f" (suspected {result.malformation_type.replace('_', ' ')})"
        lines.append(f"{text}; confidence {100 * result.confidence:.0f}%.")
        if result.biometry is None:
            lines.append(f"No measurement in mm: {result.measurement_note}.")
        else:
            lines.append(f"Calibration from {spacing_source}.")
    if n_frames > 1 and frame_number:
        lines.append(f"Analysed frame {frame_number} of {n_frames}.")
    return lines


@register_output("sr", applications=["fetal-head"])
def build_report(ctx: OutputContext) -> hd.sr.Comprehensive3DSR:
    """Build the SR; raises :class:`EncodingError` with the reason if highdicom refuses the content."""
    source, result, decoded = ctx.source, ctx.analysis.result, ctx.analysis.decoded
    frame_number, manufacturer = decoded.frame_number, ctx.settings.manufacturer
    try:
        observation = hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=DEVICE_UID,
                    name="fetalnode",
                    manufacturer_name=manufacturer,
                    model_name="fetalnode",
                ),
            ),
            subject_context=hd.sr.SubjectContext(
                subject_class=fc.FETUS,
                subject_class_specific_context=hd.sr.SubjectContextFetus(subject_id="1"),
            ),
        )
        group = _measurement_group(source, result, frame_number, ctx.uids.instance)
        report = hd.sr.MeasurementReport(
            observation_context=observation,
            procedure_reported=fc.OB_ULTRASOUND,
            imaging_measurements=[group],
        )
        container = hd.sr.ContainerContentItem(
            name=fc.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        container.ContentSequence = hd.sr.ContentSequence(
            [
                _text(fc.COMMENT, line)
                for line in report_comments(result, frame_number, decoded.n_frames, decoded.spacing_source)
            ]
        )
        report[0].ContentSequence.append(container)
        models = f"{result.seg_model[0]} {result.seg_model[1]},{result.cls_model[0]} {result.cls_model[1]}"
        sr = hd.sr.Comprehensive3DSR(
            evidence=[source],
            content=report[0],
            series_instance_uid=ctx.uids.series,
            series_number=9101,
            sop_instance_uid=ctx.uids.instance,
            instance_number=int(getattr(source, "InstanceNumber", 1) or 1),
            manufacturer=manufacturer,
            institution_name=ctx.settings.institution_name or None,
            is_complete=True,
            is_final=False,
            is_verified=False,
            contributing_equipment=[contributing_equipment(manufacturer, models, ctx.station_name)],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodingError(f"SR could not be built: {exc}") from exc
    sr.SeriesDescription = "fetalnode AI report - research use only"
    sr.CodingSchemeIdentificationSequence = [fc.coding_scheme_identification()]
    return sr
