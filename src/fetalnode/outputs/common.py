"""What every output object of fetalnode carries: its deterministic identity and the algorithm as
Contributing Equipment (IHE AI Results), with this software's Device UID (how readers recognise it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import highdicom as hd
from pydicom.sr.codedict import codes

from fetalnode import RESEARCH_NOTICE, __version__
from fetalnode.errors import EncodingError
from fetalnode.outputs import codes as fc
from fetalnode.outputs.registry import OutputContext
from fetalnode.outputs.uids import DEVICE_UID


def contributing_equipment(manufacturer: str, model_names: list[str], station: str) -> hd.ContributingEquipment:
    """The algorithm as Processing Equipment (IHE AIR), with this software's Device UID."""
    item = hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name="fetalnode",
        software_versions=[__version__, *model_names][:8],
        station_name=station[:16] or None,
        contribution_datetime=datetime.now(UTC).strftime("%Y%m%d%H%M%S"),
        contribution_description=f"AI analysis ({RESEARCH_NOTICE.lower()})"[:64],
    )
    item.DeviceUID = DEVICE_UID
    return item


def identity(ctx: OutputContext, series_number: int) -> dict[str, Any]:
    """Keyword arguments of a highdicom constructor: the object's UIDs, numbers, manufacturer, equipment."""
    manufacturer = ctx.settings.manufacturer
    return {
        "series_instance_uid": ctx.uids.series,
        "series_number": series_number,
        "sop_instance_uid": ctx.uids.instance,
        "instance_number": int(getattr(ctx.source, "InstanceNumber", 1) or 1),
        "manufacturer": manufacturer,
        "contributing_equipment": [
            contributing_equipment(
                manufacturer, [f"{name} {version}" for name, version in ctx.analysis.models], ctx.station_name
            )
        ],
    }


def report_kwargs(ctx: OutputContext, series_number: int) -> dict[str, Any]:
    """Keyword arguments of highdicom's SR constructors for a fetalnode report: the source as evidence,
    preliminary / complete / unverified (IHE AI Results), the institution, and :func:`identity`."""
    return {
        "evidence": [ctx.source],
        "institution_name": ctx.settings.institution_name or None,
        "is_complete": True,
        "is_final": False,
        "is_verified": False,
        **identity(ctx, series_number),
    }


def device_observer(ctx: OutputContext) -> hd.sr.ObserverContext:
    """TID 1002/1004: the node as the SR's observer (Device Observer UID = the Device UID readers look for)."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name="fetalnode", manufacturer_name=ctx.settings.manufacturer, model_name="fetalnode"
        ),
    )


def fetus_observation(ctx: OutputContext) -> hd.sr.ObservationContext:
    """TID 1001 of a TID 1500 report: the node as device observer (TID 1002/1004) and fetus 1 as the
    subject (TID 1008, subject class Fetus)."""
    return hd.sr.ObservationContext(
        observer_device_context=device_observer(ctx),
        subject_context=hd.sr.SubjectContext(
            subject_class=fc.FETUS,
            subject_class_specific_context=hd.sr.SubjectContextFetus(subject_id="1"),
        ),
    )


SR_SERIES_NUMBER = 9101  # the series of the output ``sr``, whatever the application
Group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations


def measurement_report(
    ctx: OutputContext,
    groups: Callable[[], Sequence[Group]],
    comments: Sequence[str],
    *,
    description: str,
    derived: Callable[[], hd.sr.ContainerContentItem | None] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Measurement Report every application writes as its output ``sr`` (Comprehensive 3D SR):
    the node and fetus 1 as observation context, OB ultrasound as procedure, the application's measurement
    ``groups``, its ``derived`` measurements (TID 1500 Derived Imaging Measurements, when any), then the
    ``comments`` as Qualitative Evaluations (the research notice first). Raises :class:`EncodingError` with
    the reason if highdicom refuses the content."""
    try:
        report = hd.sr.MeasurementReport(
            observation_context=fetus_observation(ctx),
            procedure_reported=fc.OB_ULTRASOUND,
            imaging_measurements=list(groups()),
        )
        container = hd.sr.ContainerContentItem(
            name=fc.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        container.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.TextContentItem(
                    name=fc.COMMENT, value=line[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
                )
                for line in comments
            ]
        )
        extra = derived() if derived is not None else None
        if extra is not None:  # TID 1500: after the Imaging Measurements, before the Qualitative Evaluations
            report[0].ContentSequence.append(extra)
        report[0].ContentSequence.append(container)
        sr = hd.sr.Comprehensive3DSR(content=report[0], **report_kwargs(ctx, series_number=SR_SERIES_NUMBER))
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodingError(f"SR could not be built: {exc}") from exc
    sr.SeriesDescription = description
    sr.CodingSchemeIdentificationSequence = [fc.coding_scheme_identification()]
    return sr
