"""The result of one scored image as a DICOM Structured Report, built with highdicom.

The document is a TID 1500 Measurement Report in a Comprehensive 3D SR (the SOP class IHE AI Results names
for measurement reports; it carries no coordinates here, and highdicom validates the template as it builds):

    Imaging Measurement Report (TID 1500)
      language, observation context: the model as a device observer (name, version, a UID per bundle)
      procedure reported: Plain chest X-ray (SCT 399208008)
      Imaging Measurements
        Measurement Group (TID 1501), finding type Pneumonia (SCT 233604007)
          tracking identifier; the source image (its SOP Class and Instance UIDs)
          algorithm identification (TID 4019): model name, version; parameters: the bundle digest
            (SHA-256 of model.onnx), the operating point with its threshold, the input-check policy
          analysed only: "Probability of pneumonia" (NUM), "Decision threshold" (NUM), the label (CODE)
          "Input check verdict" (CODE: accepted / refused / not checked)
      Qualitative Evaluations (TID 1500 row 12): TEXT items: analysis status ("analysed" or "not analysed"),
        the operating point, every input-check reason, the refusal code, every warning, the disclaimer

A refused image gets the same document without a probability, a threshold measurement or a label: its
status says "not analysed", with the reasons. Concepts without a standard code use the private scheme
99PNEUSCR, declared in the instance. Content Qualification is RESEARCH.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pneumonia.bundle import RESEARCH_DISCLAIMER
from pneumonia.dicom.common import (
    MANUFACTURER,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    UTF8,
    algorithm_equipment,
    check_source,
    coding_schemes,
    derived_uid,
    device_uid,
    instance_number,
    private_code,
    result_uids,
    study_reference,
)
from pneumonia.input_check import InputCheckResult, Policy
from pneumonia.model import ModelIdentity, Prediction

PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
PNEUMONIA_FINDING = Code("233604007", "SCT", "Pneumonia")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
NO_UNITS = Code("1", "UCUM", "no units")

PROBABILITY = private_code("PNEU-P", "Probability of pneumonia")
THRESHOLD = private_code("PNEU-T", "Decision threshold")
LABEL = private_code("PNEU-L", "Screening label at the operating point")
LABELS = {"PNEUMONIA": private_code("PNEUMONIA", "PNEUMONIA"), "NORMAL": private_code("NORMAL", "NORMAL")}
CHECK_VERDICT = private_code("PNEU-IC", "Input check verdict")
VERDICTS = {
    "accepted": private_code("ACCEPTED", "Accepted"),
    "refused": private_code("REFUSED", "Refused"),
    "not checked": private_code("NOT-CHECKED", "Not checked"),
}
STATUS = private_code("PNEU-S", "Analysis status")
OPERATING_POINT = private_code("PNEU-OP", "Operating point")
REASON = private_code("PNEU-R", "Input check reason")
REFUSAL_CODE = private_code("PNEU-RC", "Input check refusal code")
WARNING = private_code("PNEU-W", "Warning")
DISCLAIMER = private_code("PNEU-D", "Disclaimer")
ANALYSED = "analysed"
NOT_ANALYSED = "not analysed"
TRACKING_IDENTIFIER = "pneumonia screening"
# TEXT values are UT (unlimited), but a reason or warning is one sentence: cut anything pathological.
MAX_TEXT = 1024


@dataclass(frozen=True)
class Result:
    """What an SR records about one source image: the model, the decision rule, the input check's verdict and,
    when it was analysed, the prediction (None: not analysed, e.g. refused by the input check)."""

    model: ModelIdentity
    check: InputCheckResult
    operating_point: str
    threshold: float
    policy: Policy
    prediction: Prediction | None = None

    @classmethod
    def of(cls, prediction: Prediction, policy: Policy | None = None) -> Result:
        return cls(
            prediction.model, prediction.input_check, prediction.operating_point, prediction.threshold,
            policy or prediction.input_check.policy, prediction,
        )  # fmt: skip

    @property
    def analysed(self) -> bool:
        return self.prediction is not None

    @property
    def verdict(self) -> str:
        if self.check.policy == "off":
            return "not checked"
        return "accepted" if self.check.accepted else "refused"

    def status_text(self) -> str:
        if self.analysed:
            return ANALYSED
        summary = self.check.refusal_summary() if not self.check.accepted else "no prediction was made"
        return f"{NOT_ANALYSED}: {summary}; no probability and no label were produced"


def structured_report(source: Dataset, result: Result) -> hd.sr.Comprehensive3DSR:
    """The SR for `result` about `source` (a DICOM header: its study, series and instance UIDs are needed)."""
    check_source(source)
    reference = study_reference(source)
    uids = result_uids(
        reference.StudyInstanceUID, reference.SOPInstanceUID, result.model, result.operating_point,
        result.threshold, result.policy,
    )  # fmt: skip
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_observer(result.model)),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=[_measurement_group(reference, result, uids.sr_instance)],
    )
    report[0].ContentSequence.append(_qualitative_evaluations(result))
    model = result.model
    return hd.sr.Comprehensive3DSR(
        evidence=[reference],
        content=report[0],
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance,
        instance_number=instance_number(source),
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # PRELIMINARY and UNVERIFIED: a research model's output, never signed off by anyone
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=model.name[:64],
        software_versions=model.version[:64],
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        coding_schemes=coding_schemes(),
        contributing_equipment=[algorithm_equipment(model)],
        specific_character_set=UTF8,
    )


def _observer(model: ModelIdentity) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model),
            name=f"{model.name} {model.version}"[:64],
            manufacturer_name=MANUFACTURER,
            model_name=model.name[:64],
            serial_number=model.sha256[:16],
        ),
    )


def _measurement_group(
    reference: Dataset, result: Result, sr_instance_uid: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = hd.sr.AlgorithmIdentification(
        name=result.model.name,
        version=result.model.version,
        parameters=[
            f"bundle digest (SHA-256 of model.onnx): {result.model.sha256}",
            f"operating point: {result.operating_point} (threshold {result.threshold:.6g})",
            f"input check policy: {result.policy}",
        ],
    )
    measurements = []
    evaluations = [hd.sr.QualitativeEvaluation(CHECK_VERDICT, VERDICTS[result.verdict])]
    if result.prediction is not None:
        measurements = [
            hd.sr.Measurement(name=PROBABILITY, value=result.prediction.probability, unit=NO_UNITS),
            hd.sr.Measurement(name=THRESHOLD, value=result.threshold, unit=NO_UNITS),
        ]
        evaluations.insert(0, hd.sr.QualitativeEvaluation(LABEL, LABELS[result.prediction.label]))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("tracking", sr_instance_uid),
            identifier=TRACKING_IDENTIFIER,
        ),
        finding_type=PNEUMONIA_FINDING,
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(reference.SOPClassUID, reference.SOPInstanceUID)],
    )


def _qualitative_evaluations(result: Result) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    texts: list[tuple[Code, str]] = [(STATUS, result.status_text())]
    texts.append((OPERATING_POINT, f"{result.operating_point} (threshold {result.threshold:.6g})"))
    texts += [(REASON, reason) for reason in result.check.reasons]
    if result.check.refusal_code is not None:
        texts.append((REFUSAL_CODE, str(result.check.refusal_code)))
    if result.prediction is not None:
        texts += [(WARNING, warning) for warning in result.prediction.warnings]
    texts.append((DISCLAIMER, RESEARCH_DISCLAIMER))
    container.ContentSequence = hd.sr.ContentSequence(
        [hd.sr.TextContentItem(name=name, value=value[:MAX_TEXT], relationship_type="CONTAINS")
         for name, value in texts]
    )  # fmt: skip
    return container
