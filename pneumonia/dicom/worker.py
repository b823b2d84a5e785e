"""The DICOMweb worker: find chest radiographs without this bundle's result, score them, store SR and SC back.

One pass (`Worker.run_once`):
1. QIDO-RS: studies with a CR or DX series (optionally within a study-date range, or one accession number or
   study), then their series and instances. A series whose Body Part Examined is set and is not the chest is
   not a chest radiograph and is left alone.
2. An instance whose SR from this bundle is already in the study is skipped. The SR's UID is derived from the
   source instance's UID, the bundle's digest, the operating point and the policy (common.result_uids), so
   one QIDO-RS query per study for the instances of this bundle's SR series tells what is done; no local
   state is kept, and a pass that was interrupted resumes where it stopped.
3. WADO-RS retrieves the rest, `batch_size` at a time; `Model.predict_many` scores each batch in one ONNX run,
   with the same input check and policy as the service; `Model.explain_prediction` draws the map.
4. STOW-RS stores, per instance and in one request, the Secondary Capture and then the SR (so an SR in the
   PACS means its SC went first). A refused image gets an SR saying "not analysed", with the reasons.

Failures are per instance: logged (by SOP Instance UID only: never a patient identifier), reported to
`on_outcome`, and retried on the next pass. Only an unreachable server (or one that refuses the credentials)
stops a pass: `PacsUnreachableError`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import astuple, dataclass, field
from functools import partial
from typing import Any, Literal

import requests
from pydicom import Dataset, dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, UID_dictionary

from pneumonia.bundle import BundleMetadata
from pneumonia.dicom.common import check_source, result_uids, series_uids
from pneumonia.dicom.sc import secondary_capture
from pneumonia.dicom.sr import Result, structured_report
from pneumonia.errors import PneumoniaError
from pneumonia.input_check import InputCheckResult, Policy
from pneumonia.labels import resolve_decision
from pneumonia.model import ImageRefusedError, Model, ModelIdentity, Prediction

log = logging.getLogger("pneumonia.dicom.worker")

DEFAULT_MODALITIES = ("CR", "DX")
# Body Part Examined values (CS, upper case) taken as a chest; an empty or absent value is not held against it.
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "THORACIC")

QIDO_PAGE = 500  # results per QIDO-RS request
AS_STORED = (("application/dicom", "*"),)  # WADO-RS media type: the instance in the transfer syntax it is stored in
Status = Literal["stored", "not_analysed", "failed"]


class PacsUnreachableError(RuntimeError):
    """The DICOMweb server cannot be reached, or refuses this worker's credentials: nothing can be done."""


@dataclass(frozen=True)
class Query:
    """What to look for. `study_date`: a DICOM date or range (20240101, 20240101-20240131, 20240101-)."""

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    study_date: str | None = None
    accession: str | None = None
    study_uid: str | None = None


@dataclass(frozen=True)
class Candidate:
    study_uid: str
    series_uid: str
    sop_instance_uid: str


@dataclass
class Outcome:
    """What happened to one instance; `on_outcome` receives one per instance processed (not for skipped ones)."""

    sop_instance_uid: str
    status: Status
    stored: tuple[str, ...] = ()  # "SC", "SR": what was stored, in order
    prediction: Prediction | None = None
    check: InputCheckResult | None = None
    error: str | None = None
    error_code: str | None = None  # an ErrorCode value when the library refused or failed the image
    image_sha256: str | None = None  # of the instance's bytes as retrieved (for the audit trail)
    image_bytes: int | None = None
    seconds: float = 0.0


@dataclass
class RunSummary:
    found: int = 0  # chest radiographs matching the query
    skipped: int = 0  # already have this bundle's SR
    stored: int = 0  # analysed: SR (and SC) stored
    not_analysed: int = 0  # refused by the input check: a "not analysed" SR stored
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # SOP Instance UIDs

    def line(self) -> str:
        return (
            f"{self.found} chest radiograph(s) found, {self.skipped} already scored by this bundle, "
            f"{self.stored} scored and stored, {self.not_analysed} not analysed (refused, SR stored), "
            f"{self.failed} failed"
        )


class Worker:
    """Scores what a DICOMweb server holds. `load_model` is called once, when the first image needs scoring (a
    pass with nothing to do never loads the model); `metadata` must be that bundle's."""

    def __init__(
        self,
        client: Any,  # dicomweb_client.DICOMwebClient (or anything with its five methods)
        metadata: BundleMetadata,
        load_model: Callable[[], Model],
        *,
        policy: Policy = "refuse",
        operating_point: str | None = None,
        batch_size: int = 8,
        on_outcome: Callable[[Outcome], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.client = client
        self.metadata = metadata
        self.decision = resolve_decision(metadata, operating_point)  # an unknown name fails here, at start
        self.identity = ModelIdentity(
            metadata.name, metadata.version, metadata.backbone, metadata.checksums.onnx_sha256
        )
        self.policy = policy
        self.batch_size = batch_size
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.should_stop = should_stop
        self._load_model = load_model
        self._model: Model | None = None

    @property
    def model(self) -> Model:
        if self._model is None:
            log.info("loading the model bundle (first image to score)")
            self._model = self._load_model()
            if self._model.identity.sha256 != self.identity.sha256:
                raise RuntimeError("the loaded model is not the bundle whose metadata this worker was given")
        return self._model

    # --- one pass ------------------------------------------------------------------------------------------
    def run_once(self, query: Query = Query()) -> RunSummary:
        """One pass over the server. Raises PacsUnreachableError when it cannot be reached."""
        self.check_connection()
        summary = RunSummary()
        candidates = list(self._with_server(lambda: list(self.find(query, summary))))
        for batch in _chunks(candidates, self.batch_size):
            if self.should_stop():
                log.info("stopping before %d remaining instance(s): they are scored on the next pass", len(batch))
                break
            self._process(batch, summary)
        log.info("pass done: %s", summary.line())
        return summary

    def check_connection(self) -> None:
        """One QIDO-RS query; PacsUnreachableError when the server cannot be reached or cannot answer it.

        Asked once, without dicomweb-client's retries: they also retry a refused connection, five times with
        exponential waits (half a minute) before a wrong URL or a stopped server is reported. Later requests keep
        them (a 503 or a dropped connection in the middle of a pass is retried)."""
        set_retries = getattr(self.client, "set_http_retry_params", None)
        try:
            if set_retries is not None:
                set_retries(retry=False)
            self._with_server(lambda: self.client.search_for_studies(limit=1))
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise PacsUnreachableError(
                f"the server at {_base_url(self.client)} answered HTTP {status} to a QIDO-RS query: is --url its "
                "DICOMweb root (e.g. http://HOST:8042/dicom-web)?"
            ) from exc
        finally:
            if set_retries is not None:
                set_retries()  # dicomweb-client's defaults again

    def find(self, query: Query, summary: RunSummary | None = None) -> Iterator[Candidate]:
        """Chest radiographs matching `query` that have no SR from this bundle yet, study by study."""
        summary = summary or RunSummary()
        for study_uid in self._studies(query):
            try:
                instances = self._study_instances(study_uid, query)
            except requests.HTTPError as exc:  # one study the server cannot list: the others go on
                log.warning("a study could not be searched (%s); it is tried again on the next pass", _describe(exc))
                continue
            done = instances.pop(None, set())
            for series_uid, sop_uids in sorted(instances.items(), key=lambda item: str(item[0])):
                for sop_uid in sorted(sop_uids):
                    summary.found += 1
                    expected = result_uids(study_uid, sop_uid, self.identity, self.decision.operating_point,
                                           self.decision.threshold, self.policy).sr_instance  # fmt: skip
                    if expected in done:
                        summary.skipped += 1
                        log.debug("instance %s: already has this bundle's SR; skipped", sop_uid)
                        continue
                    yield Candidate(study_uid, str(series_uid), sop_uid)

    def _study_instances(self, study_uid: str, query: Query) -> dict[str | None, set[str]]:
        """{series UID: SOP Instance UIDs} of the study's chest radiographs, and under None this bundle's SRs."""
        sr_series, _ = series_uids(study_uid, self.identity)
        series = self._search(self.client.search_for_series, study_uid, fields=["BodyPartExamined"])
        found: dict[str | None, set[str]] = {}
        for item in series:
            series_uid = _value(item, "SeriesInstanceUID")
            if series_uid == sr_series:
                key: str | None = None
            elif _value(item, "Modality") in query.modalities and _is_chest(_value(item, "BodyPartExamined")):
                key = series_uid
            else:
                continue
            instances = self._search(self.client.search_for_instances, study_uid, series_uid)
            found[key] = {
                _value(i, "SOPInstanceUID")
                for i in instances
                if _value(i, "SOPInstanceUID") and (key is None or _is_image(_value(i, "SOPClassUID")))
            }
        return found

    def _studies(self, query: Query) -> list[str]:
        found: set[str] = set()
        for modality in query.modalities:
            filters: dict[str, str] = {"ModalitiesInStudy": modality}
            if query.study_date:
                filters["StudyDate"] = query.study_date
            if query.accession:
                filters["AccessionNumber"] = query.accession
            if query.study_uid:
                filters["StudyInstanceUID"] = query.study_uid
            try:
                studies = self._search(self.client.search_for_studies, search_filters=filters)
            except requests.HTTPError as exc:
                raise PacsUnreachableError(
                    f"the server at {_base_url(self.client)} cannot answer the study search ({_describe(exc)})"
                ) from exc
            found.update(uid for uid in (_value(s, "StudyInstanceUID") for s in studies) if uid)
        return sorted(found)  # a stable order: an interrupted pass resumes in the same order

    def _search(self, search: Callable[..., list[dict[str, Any]]], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Every result of a QIDO-RS search, `QIDO_PAGE` at a time (limit/offset). dicomweb-client's own paging
        (get_remaining) asks with an offset and no limit until a page is empty: a server that ignores the offset
        without a limit (Orthanc's DICOMweb plugin 1.7 does) answers the same page forever."""
        results: list[dict[str, Any]] = []
        while True:
            page = self._with_server(partial(search, *args, limit=QIDO_PAGE, offset=len(results), **kwargs))
            if results and page and page[0] == results[0]:  # the offset was ignored after all
                log.warning("the server ignores QIDO-RS offsets: only the first %d results are used", len(results))
                return results
            results.extend(page)
            if len(page) < QIDO_PAGE:
                return results

    # --- scoring and storing -------------------------------------------------------------------------------
    def _process(self, batch: list[Candidate], summary: RunSummary) -> None:
        retrieved: list[tuple[Candidate, Dataset, bytes, float]] = []
        model = self.model  # loaded now, the first time: not counted in an instance's time
        for candidate in batch:
            started = time.perf_counter()
            try:
                dataset = self._with_server(partial(self._retrieve, candidate))
                check_source(dataset)
                retrieved.append((candidate, dataset, _part10(dataset), started))
            except PacsUnreachableError:
                raise
            except Exception as exc:  # one bad instance must not stop the pass
                self._report(Outcome(candidate.sop_instance_uid, "failed", error=f"retrieve: {_describe(exc)}",
                                     seconds=time.perf_counter() - started), summary)  # fmt: skip
        if not retrieved:
            return
        items = model.predict_many(
            [data for _, _, data, _ in retrieved], batch_size=self.batch_size,
            operating_point=self.decision.operating_point, policy=self.policy,
        )  # fmt: skip
        for (candidate, dataset, data, started), item in zip(retrieved, items, strict=True):
            outcome = Outcome(
                candidate.sop_instance_uid, "failed", image_sha256=hashlib.sha256(data).hexdigest(),
                image_bytes=len(data),
            )  # fmt: skip
            try:
                self._store_result(candidate, dataset, item.prediction, item.error, outcome)
            except PacsUnreachableError:
                raise
            except Exception as exc:
                outcome.status, outcome.error = "failed", _describe(exc)
            outcome.seconds = time.perf_counter() - started
            self._report(outcome, summary)

    def _retrieve(self, candidate: Candidate) -> Dataset:
        """The instance as stored (transfer-syntax=*): decoded here exactly as `POST /predict` decodes the file,
        rather than after the server transcoded it (another JPEG decoder can differ by a gray level)."""
        try:
            try:
                return self.client.retrieve_instance(*astuple(candidate), media_types=AS_STORED)
            except requests.HTTPError as exc:  # a server that cannot answer transfer-syntax=*: its default
                if exc.response is None or exc.response.status_code not in (400, 406):
                    raise
                return self.client.retrieve_instance(*astuple(candidate))
        except InvalidDicomError:
            return self._retrieve_leniently(candidate)

    def _retrieve_leniently(self, candidate: Candidate) -> Dataset:
        """WADO-RS again, for an instance sent without the 128-byte preamble and "DICM" prefix: a server returns
        instances as they were stored, and one stored by a STOW-RS client that wrote no preamble comes back without
        it (Orthanc does this). dicomweb-client reads every part with a strict pydicom.dcmread; this reads the part
        with `force=True`, which still reads and requires the File Meta Information. It uses two helpers of
        dicomweb-client (0.61) that are not public API: the URL builder and the multipart decoder."""
        from dicomweb_client.web import _Transaction

        client = self.client
        url = client._get_instances_url(_Transaction.RETRIEVE, *astuple(candidate))
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        response = client._http_get(url, headers={"Accept": accept})
        if response.headers.get("Content-Type", "").startswith("application/dicom"):
            parts: list[bytes] = [response.content]
        else:
            parts = list(client._decode_multipart_message(response, stream=False))
        if len(parts) != 1:
            raise ValueError(f"WADO-RS answered {len(parts)} parts for one instance")
        dataset = dcmread(io.BytesIO(parts[0]), force=True)
        if "TransferSyntaxUID" not in getattr(dataset, "file_meta", {}):
            raise InvalidDicomError("the retrieved instance has no File Meta Information")
        return dataset

    def _store_result(
        self, candidate: Candidate, dataset: Dataset, prediction: Prediction | None, error: PneumoniaError | None,
        outcome: Outcome,
    ) -> None:  # fmt: skip
        if prediction is not None:
            outcome.prediction, outcome.check = prediction, prediction.input_check
            instances: list[tuple[str, Dataset]] = []
            if self.model.explain_available:
                explanation = self.model.explain_prediction(prediction)
                instances.append(("SC", secondary_capture(dataset, explanation, self.policy)))
            instances.append(("SR", structured_report(dataset, Result.of(prediction, self.policy))))
            status: Status = "stored"
        elif isinstance(error, ImageRefusedError):
            outcome.check, outcome.error_code = error.check, str(error.code)
            result = Result(self.identity, error.check, self.decision.operating_point, self.decision.threshold,
                             self.policy)  # fmt: skip
            instances, status = [("SR", structured_report(dataset, result))], "not_analysed"
        else:
            outcome.error_code = str(error.code) if error is not None else None
            outcome.error = f"not scored: {error.message if error is not None else 'no result'}"
            return
        self._store(candidate.study_uid, [instance for _, instance in instances])
        outcome.status, outcome.stored = status, tuple(kind for kind, _ in instances)

    def _store(self, study_uid: str, datasets: list[Dataset]) -> None:
        for dataset in datasets:  # DICOM files as Part 10 defines them (dicomweb-client writes what it is given)
            dataset.preamble = b"\x00" * 128
        response = self._with_server(lambda: self.client.store_instances(datasets, study_instance_uid=study_uid))
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise RuntimeError(f"STOW-RS refused {len(failed)} instance(s) (failure reason {', '.join(reasons)})")

    def _report(self, outcome: Outcome, summary: RunSummary) -> None:
        uid = outcome.sop_instance_uid
        if outcome.status == "stored" and outcome.prediction is not None:
            summary.stored += 1
            p = outcome.prediction
            log.info("instance %s: P(pneumonia)=%.4f, %s at %s (threshold %.4g); stored %s in %.2f s", uid,
                     p.probability, p.label, p.operating_point, p.threshold, "+".join(outcome.stored),
                     outcome.seconds)  # fmt: skip
        elif outcome.status == "not_analysed":
            summary.not_analysed += 1
            log.info("instance %s: not analysed (input check: %s); stored the SR that says so", uid,
                     outcome.error_code)  # fmt: skip
        else:
            summary.failed += 1
            summary.failures.append(uid)
            log.warning("instance %s: FAILED (%s); retried on the next pass", uid, outcome.error)
        try:
            self.on_outcome(outcome)
        except Exception:  # the audit hook must not stop the pass; its own errors are its to log
            log.exception("instance %s: the outcome hook failed", uid)

    def _with_server(self, call: Callable[[], Any]) -> Any:
        """Run a DICOMweb call; an unreachable server or refused credentials become PacsUnreachableError."""
        try:
            return call()
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise PacsUnreachableError(
                f"cannot reach the DICOMweb server at {_base_url(self.client)} ({type(exc).__name__}); "
                "is it running, and is --url its DICOMweb root (e.g. http://HOST:8042/dicom-web)?"
            ) from exc
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise PacsUnreachableError(
                    f"the DICOMweb server at {_base_url(self.client)} refused the credentials (HTTP {status}); "
                    "set PNEUMONIA_PACS_USERNAME with PNEUMONIA_PACS_PASSWORD_FILE, or PNEUMONIA_PACS_TOKEN_FILE"
                ) from exc
            raise


def _chunks(items: list[Candidate], size: int) -> Iterable[list[Candidate]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _value(item: dict[str, Any], keyword: str) -> str:
    """The first value of `keyword` in a DICOM JSON object (QIDO-RS result), or ''."""
    tag = tag_for_keyword(keyword)
    element = item.get(f"{tag:08X}") if tag is not None else None
    values = (element or {}).get("Value") or [""]
    return str(values[0]).strip().upper() if keyword in ("Modality", "BodyPartExamined") else str(values[0])


def _is_chest(body_part: str) -> bool:
    return not body_part or any(word in body_part for word in CHEST_BODY_PARTS)


def _is_image(sop_class_uid: str) -> bool:
    """False for a SOP class known not to be an image (a presentation state, a key object, an SR in a CR series);
    an unknown or private class is given the benefit of the doubt."""
    if not sop_class_uid or sop_class_uid not in UID_dictionary:
        return True
    return "Image" in UID(sop_class_uid).name


def _part10(dataset: Dataset) -> bytes:
    """The retrieved instance as a DICOM file: what `POST /predict` would be sent, decoded by the same path."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _describe(exc: BaseException) -> str:
    """An error for the log: a status for HTTP errors (never the URL, which holds study and series UIDs)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason or ''}".strip()
    if isinstance(exc, PneumoniaError):
        return f"{exc.code}: {exc.message}"
    return type(exc).__name__ + (f": {str(exc)[:200]}" if str(exc) else "")


def _base_url(client: Any) -> str:
    return str(getattr(client, "base_url", None) or getattr(client, "url", "?"))
