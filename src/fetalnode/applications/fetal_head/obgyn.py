"""TID 5000 OB-GYN Ultrasound Procedure Report in a Comprehensive SR, for OB reporting systems.

highdicom and DCMTK have no TID 5000 class: the tree is assembled from highdicom content items after
the template tables of DICOM PS3.16 (TID 5000, 5002, 5005, 5008; TID 300, 1001, 1008, 1204, 4019 as
highdicom implements them). The report lives in the source study and names this software as Device
observer. Its content::

    OB-GYN Ultrasound Procedure Report (125000, DCM)          TID 5000
     ├ Language, Observation Context (Device observer)         TID 1204, TID 1001
     ├ Summary (121111, DCM)                                   TID 5002
     │  └ Comment (121106, DCM): research notice, finding, calibration, frame
     └ Fetal Biometry (125002, DCM)                            TID 5005
        ├ Subject ID "1"                                       TID 1008
        ├ Algorithm Name / Version / Parameters                TID 4019
        ├ Biometry Group (125005, DCM)                         TID 5008, $BiometryType HC
        │  ├ Head Circumference (11984-2, LN) mm               TID 300
        │  └ Gestational Age (18185-9, LN) wk
        │     └ Equation (121420, DCM) = HC, Hadlock 1984 (11932-1, LN)
        ├ Biometry Group: BPD (11820-8, LN) mm; Biometry Group: OFD (11851-3, LN) mm
        └ Comment: why there is no biometry (no calibration, no head found)

TID 5001 Patient Characteristics, 5004 Biometry Ratios, 5006 Long Bones and 5009 Biophysical Profile
are omitted (all optional in TID 5000); the Comment items and the section's TID 4019 are extensions
(TID 5000 is extensible). Every code is in pydicom's PS3.16 tables (see ``outputs/codes.py``); the
template rows cited here could not be checked against PS3.16 itself when this was written. The fetus is
identified as highdicom's TID 1008 does it, by Subject ID (121030, DCM); LOINC "Fetus ID" (11951-1)
is in no table available here and is not used.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.coding import Code

from fetalnode.applications.fetal_head import NAME
from fetalnode.applications.fetal_head import codes as fhc
from fetalnode.applications.fetal_head.gestation import hadlock_ga_weeks
from fetalnode.applications.fetal_head.report import (  # the same TID 4019 and comments as `sr`
    _algorithm,
    report_comments,
)
from fetalnode.errors import EncodingError
from fetalnode.inference import AnalysisResult
from fetalnode.outputs import codes as fc
from fetalnode.outputs.common import device_observer, report_kwargs
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.template import FastPath

SERIES_NUMBER = 9105
# Digits written: mm to 0.01 (as the TID 1500 report), weeks to 0.01 (about 0.1 day).
MM_DIGITS = 2
WEEK_DIGITS = 2

_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def _comment(value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=fc.COMMENT, value=value[:1024], relationship_type=_CONTAINS)


def _container(name: Code, items: hd.sr.ContentSequence) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(name=name, relationship_type=_CONTAINS)
    container.ContentSequence = items
    return container


def gestational_age_weeks(hc_mm_written: float) -> float:
    """GA by Hadlock 1984 from the HC *as written* (so a reader recomputes the same value)."""
    return round(hadlock_ga_weeks(hc_mm_written), WEEK_DIGITS)


def _biometry_groups(result: AnalysisResult) -> hd.sr.ContentSequence:
    """TID 5008 Fetal Biometry Group per measurement ($BiometryType from CID 12005), HC with its GA."""
    if result.biometry is None:
        return hd.sr.ContentSequence()
    groups = hd.sr.ContentSequence()
    for code, value in (
        (fhc.HEAD_CIRCUMFERENCE, result.biometry.hc_mm),
        (fhc.BIPARIETAL_DIAMETER, result.biometry.bpd_mm),
        (fhc.OCCIPITAL_FRONTAL_DIAMETER, result.biometry.ofd_mm),
    ):
        written = round(value, MM_DIGITS)
        # TID 5008 row 2: INCLUDE TID 300 Measurement ($Measurement = $BiometryType).
        items = hd.sr.ContentSequence()
        items.extend(hd.sr.Measurement(name=code, value=written, unit=fc.MM))
        if code == fhc.HEAD_CIRCUMFERENCE:
            # TID 5008 rows 3-4: Gestational Age, INFERRED FROM the equation of CID 12013
            # (Gestational Age Equations and Tables); the concept name is from CID 228 Equation or Table.
            age = hd.sr.NumContentItem(
                name=fhc.GESTATIONAL_AGE,
                value=gestational_age_weeks(written),
                unit=fhc.WEEK,
                relationship_type=_CONTAINS,
            )
            age.ContentSequence = hd.sr.ContentSequence(
                [
                    hd.sr.CodeContentItem(
                        name=fhc.EQUATION,
                        value=fhc.HC_HADLOCK_1984,
                        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
                    )
                ]
            )
            items.append(age)
        groups.append(_container(fhc.BIOMETRY_GROUP, items))
    return groups


def no_biometry_reason(result: AnalysisResult) -> str | None:
    """Why the Fetal Biometry section holds no measurement (None when it holds them)."""
    if not result.analysed:
        return f"No fetal biometry: {result.reason}."
    if result.biometry is None:
        return f"No fetal biometry in mm: {result.measurement_note}."
    return None


def _fetal_biometry_section(result: AnalysisResult) -> hd.sr.ContainerContentItem:
    """TID 5005 Fetal Biometry Section for fetus "1" (the one head the analysis looks at)."""
    # TID 5005 row 2: the fetus's Subject Context (TID 1008), HAS OBS CONTEXT.
    items = hd.sr.ContentSequence()
    items.extend(hd.sr.SubjectContextFetus(subject_id="1"))
    # TID 4019 once for the whole section, so that the models are named even without a measurement
    # (an extension: TID 300's own TID 4019 row would repeat it under every measurement).
    items.extend(_algorithm(result))
    items.extend(_biometry_groups(result))
    reason = no_biometry_reason(result)
    if reason is not None:
        items.append(_comment(reason))
    return _container(fhc.FETAL_BIOMETRY, items)


def _summary_lines(ctx: OutputContext) -> list[str]:
    result, decoded = ctx.result_as(AnalysisResult), ctx.analysis.decoded
    return report_comments(result, decoded.frame_number, decoded.n_frames, decoded.spacing_source)


def _shape(ctx: OutputContext) -> tuple[object, ...]:
    """What shapes the report (the fast path's key)."""
    result = ctx.result_as(AnalysisResult)
    return (
        ctx.analysis.application,
        result.biometry is not None,
        no_biometry_reason(result) is not None,
        len(_summary_lines(ctx)),
        result.seg_model,  # named by the algorithm identification (the analysis's models are in context_key)
        result.cls_model,
    )  # the application, its models, the station and the settings: template.context_key


def _slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    """The values of one report: the summary, the biometry (with the GA) or why there is none."""
    result = ctx.result_as(AnalysisResult)
    slots: dict[str, tuple[str, object]] = {
        f"comment.{i}": ("TextValue", line[:1024]) for i, line in enumerate(_summary_lines(ctx))
    }
    reason = no_biometry_reason(result)
    if reason is not None:
        slots["reason"] = ("TextValue", reason[:1024])
    if result.biometry is not None:
        hc = round(result.biometry.hc_mm, MM_DIGITS)
        numbers = {
            "hc": hc,
            "ga": gestational_age_weeks(hc),
            "bpd": round(result.biometry.bpd_mm, MM_DIGITS),
            "ofd": round(result.biometry.ofd_mm, MM_DIGITS),
        }
        for name, value in numbers.items():
            slots[f"number.{name}"] = ("NumericValue", value)
            slots[f"float.{name}"] = ("FloatingPointValue", value)
    return slots


@register_output("obsr", applications=[NAME], fast=FastPath(_shape, _slots))
def build_obgyn_report(ctx: OutputContext) -> hd.sr.ComprehensiveSR:
    """Build the OB-GYN report; raises :class:`EncodingError` with the reason if highdicom refuses it."""
    result = ctx.result_as(AnalysisResult)
    try:
        observation = hd.sr.ObservationContext(
            observer_device_context=device_observer(ctx),
        )
        summary = _container(fhc.SUMMARY, hd.sr.ContentSequence([_comment(line) for line in _summary_lines(ctx)]))
        root = hd.sr.ContainerContentItem(name=fhc.OBGYN_REPORT, template_id="5000")
        root.ContentSequence = hd.sr.ContentSequence(
            [
                *hd.sr.LanguageOfContentItemAndDescendants(hd.sr.templates.DEFAULT_LANGUAGE),  # TID 5000 row 2
                *observation,  # TID 5000 row 3
                summary,  # TID 5002
                _fetal_biometry_section(result),  # TID 5005
            ]
        )
        sr = hd.sr.ComprehensiveSR(
            content=root,
            **report_kwargs(ctx, series_number=SERIES_NUMBER),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodingError(f"OB-GYN report could not be built: {exc}") from exc
    sr.SeriesDescription = "fetalnode OB-GYN report - research use only"
    return sr
