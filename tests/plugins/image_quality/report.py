"""The image-quality report, output ``sr``: a TID 1500 Measurement Report with the contrast score."""

from __future__ import annotations

import highdicom as hd

from fetalnode import RESEARCH_NOTICE
from fetalnode.outputs import codes as fc
from fetalnode.outputs.common import fetus_observation, report_kwargs
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.uids import instance_derived
from tests.plugins.image_quality import NAME
from tests.plugins.image_quality import codes as qc
from tests.plugins.image_quality.application import MODEL, QualityResult


@register_output("sr", applications=[NAME])
def build_report(ctx: OutputContext) -> hd.sr.Comprehensive3DSR:
    result = ctx.result_as(QualityResult)
    algorithm = hd.sr.AlgorithmIdentification(name=f"fetalnode {MODEL[0]}", version=MODEL[1])
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=instance_derived("tracking", ctx.uids.instance), identifier="image quality"
        ),
        algorithm_id=algorithm,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=ctx.source.SOPClassUID,
                referenced_sop_instance_uid=ctx.source.SOPInstanceUID,
            )
        ],
        measurements=[
            hd.sr.Measurement(name=qc.CONTRAST_SCORE, value=result.score, unit=qc.SCORE_UNIT, algorithm_id=algorithm)
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=fetus_observation(ctx), procedure_reported=fc.OB_ULTRASOUND, imaging_measurements=[group]
    )
    container = hd.sr.ContainerContentItem(
        name=fc.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    lines = ctx.with_context_lines([f"{RESEARCH_NOTICE}: image contrast score (a plugin application's demo)."])
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(name=fc.COMMENT, value=line, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
            for line in lines
        ]
    )
    report[0].ContentSequence.append(container)
    sr = hd.sr.Comprehensive3DSR(content=report[0], **report_kwargs(ctx, series_number=9201))
    sr.SeriesDescription = "fetalnode image quality - research use only"
    sr.CodingSchemeIdentificationSequence = [fc.coding_scheme_identification(), qc.coding_scheme_identification()]
    return sr
