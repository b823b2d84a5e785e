"""`python -m app.pacs --url DICOMWEB_ROOT [--once | --interval S]`: score what a PACS holds, store results back.

Finds chest radiographs (Modality CR or DX) that have no result from the served bundle yet (QIDO-RS), retrieves
them (WADO-RS), scores them with the service's bundle, input check and policy (the same PNEUMONIA_* settings),
and stores a DICOM SR and the heatmap as a Secondary Capture into each study (STOW-RS). Running it again adds
nothing. The work is pneumonia.dicom.worker's; this module reads the settings, the credentials and the command
line, writes the audit trail and sets the exit status:

    0  the pass (every pass, with --interval) ran; instances that failed are logged and retried next time
    1  the server cannot be reached, refuses the credentials, or is not a DICOMweb root
    2  a usage or configuration error (arguments, credentials files, the bundle's metadata), or an unexpected
       error that stops a pass (a model that fails to load, a server answer that cannot be read): one
       `error: ...` line on stderr (the traceback at --log-level DEBUG), never a bare traceback

Every pass has an id (`pacs-` and 32 hex digits), logged as it starts and written as the `request_id` of its
audit lines.

Credentials (never on the command line, docs/pacs.md): HTTP basic with PNEUMONIA_PACS_USERNAME and
PNEUMONIA_PACS_PASSWORD_FILE (or PNEUMONIA_PACS_PASSWORD), or a bearer token with PNEUMONIA_PACS_TOKEN_FILE
(or PNEUMONIA_PACS_TOKEN). Logs name instances by SOP Instance UID only, never a patient identifier.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import requests

from app.audit import AuditLog, AuditRecord, new_run_id
from app.config import Settings
from app.service import load_model
from pneumonia.bundle import BundleError, read_metadata
from pneumonia.dicom.worker import DEFAULT_MODALITIES, Outcome, PacsUnreachableError, Query, Worker
from pneumonia.errors import ErrorCode
from pneumonia.model import Model

log = logging.getLogger("app.pacs")

EXIT_OK, EXIT_UNREACHABLE, EXIT_CONFIG = 0, 1, 2
# DICOM date matching (PS3.4 C.2.2.2.5): one date, or a range open at either end
STUDY_DATE = re.compile(r"^(\d{8}|\d{8}-\d{8}|\d{8}-|-\d{8})$")
MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")


class ConfigError(ValueError):
    """Settings that cannot work (e.g. both basic and bearer credentials, an unreadable secret file)."""


class PassId:
    """The id of the pass in progress: a new one (app.audit.new_run_id) per pass, logged as the pass starts and
    written as the `request_id` of the pass's audit lines (the worker has no HTTP request to take one from)."""

    def __init__(self) -> None:
        self.current: str | None = None

    def next(self) -> str:
        self.current = new_run_id("pacs")
        log.info("pass %s", self.current)
        return self.current


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.pacs",
        description="Score chest radiographs held by a DICOMweb server (QIDO-RS/WADO-RS) and store a DICOM SR and "
        "a heatmap Secondary Capture into each study (STOW-RS). Research use only: not for diagnosis. "
        "Credentials come from PNEUMONIA_PACS_* settings or files, never from the command line (docs/pacs.md).",
    )
    parser.add_argument("--url", help="DICOMweb root, e.g. http://HOST:8042/dicom-web (default: PNEUMONIA_PACS_URL)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one pass, then exit (the default)")
    mode.add_argument("--interval", type=float, metavar="S", help="a pass every S seconds until SIGTERM or Ctrl-C")
    parser.add_argument("--study-date", metavar="RANGE", help="DICOM date or range: 20240101, 20240101-20240131, "
                        "20240101- (from), -20240131 (until)")  # fmt: skip
    parser.add_argument("--accession", metavar="NUMBER", help="only the study with this accession number")
    parser.add_argument("--study", metavar="STUDY_UID", help="only this study (Study Instance UID)")
    parser.add_argument("--modality", action="append", metavar="CODE",
                        help=f"modalities to score (repeatable; default {' and '.join(DEFAULT_MODALITIES)})")  # fmt: skip
    parser.add_argument("--batch-size", type=int, metavar="N", help="instances per batch (PNEUMONIA_PACS_BATCH_SIZE)")
    parser.add_argument(
        "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default PNEUMONIA_LOG_LEVEL"
    )
    return parser


def main(argv: Sequence[str] | None = None, *, settings: Settings | None = None,
         load: Callable[[], Model] | None = None) -> int:  # fmt: skip
    """The command line. `settings` and `load` (the model loader) are for embedding and tests."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings or Settings()
    _configure_logging(args.log_level or settings.log_level)
    url = args.url or settings.pacs_url
    if not url:
        parser.error("give --url (the DICOMweb root, e.g. http://HOST:8042/dicom-web) or set PNEUMONIA_PACS_URL")
    if args.interval is not None and args.interval <= 0:
        parser.error("--interval must be a positive number of seconds")
    if args.study_date and not STUDY_DATE.match(args.study_date):
        parser.error("--study-date takes YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD")
    modalities = tuple(m.strip().upper() for m in (args.modality or DEFAULT_MODALITIES))
    if not all(MODALITY.match(m) for m in modalities):
        parser.error("--modality takes DICOM modality codes such as CR or DX")
    batch_size = args.batch_size or settings.pacs_batch_size
    if batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        session = make_session(settings)
        metadata = read_metadata(settings.model_dir)
    except (ConfigError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    from dicomweb_client import DICOMwebClient  # imported here: `--help` stays fast

    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=settings.pacs_timeout_s)
    stop = threading.Event()
    audit = AuditLog.open(settings.audit_log)
    pass_id = PassId()
    worker = Worker(
        client, metadata, load or (lambda: load_model(settings)), policy=settings.input_check,
        batch_size=batch_size, on_outcome=audit_hook(audit, pass_id), should_stop=stop.is_set,
    )  # fmt: skip
    query = Query(modalities, args.study_date, args.accession, args.study)
    log.info("PACS worker: %s, bundle %s %s, policy %s, operating point %s (threshold %.4g)", url, metadata.name,
             metadata.version, settings.input_check, worker.decision.operating_point, worker.decision.threshold)  # fmt: skip
    restore = _stop_on_signals(stop)
    try:
        return _run(worker, query, args.interval, stop, pass_id)
    finally:
        restore()
        if audit is not None:
            audit.close()


def _run(worker: Worker, query: Query, interval: float | None, stop: threading.Event, pass_id: PassId) -> int:
    passes = 0
    while True:
        try:
            pass_id.next()
            worker.run_once(query)
        except PacsUnreachableError as exc:
            if interval is None or passes == 0:  # a server never reached is a configuration problem: say so
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_UNREACHABLE
            log.error("%s; trying again in %g s", exc, interval)
        except Exception as exc:  # not the server's absence: the model, the settings, or a bug. Say so, exit 2.
            log.debug("pass %s stopped", pass_id.current, exc_info=True)
            print(f"error: pass {pass_id.current} stopped: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
            return EXIT_CONFIG
        passes += 1
        if interval is None or stop.wait(interval):
            return EXIT_OK


def make_session(settings: Settings) -> requests.Session:
    """A requests session with the PACS credentials: basic (user + password) or bearer (token), or none."""
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    password = _secret(settings.pacs_password, settings.pacs_password_file, "password")
    token = _secret(settings.pacs_token, settings.pacs_token_file, "token")
    if token and (settings.pacs_username or password):
        raise ConfigError("set either basic credentials (PNEUMONIA_PACS_USERNAME/PASSWORD) or a bearer token, not both")
    if settings.pacs_username:
        if not password:
            raise ConfigError("PNEUMONIA_PACS_USERNAME is set without PNEUMONIA_PACS_PASSWORD_FILE (or _PASSWORD)")
        return create_session_from_user_pass(settings.pacs_username, password)
    if password:
        raise ConfigError("a PACS password is set without PNEUMONIA_PACS_USERNAME")
    session = create_session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def _secret(value: object, path: Path | None, what: str) -> str | None:
    if value is not None and path is not None:
        raise ConfigError(f"set the PACS {what} or its file, not both")
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"the PACS {what} file {path} cannot be read ({exc.strerror or exc})") from exc
        if not text:
            raise ConfigError(f"the PACS {what} file {path} is empty")
        return text
    secret = getattr(value, "get_secret_value", None)
    return str(secret()) if callable(secret) else None


def audit_hook(audit: AuditLog | None, pass_id: PassId | None = None) -> Callable[[Outcome], None]:
    """One audit line per instance scored (or refused, or failed), as app.audit describes for the PACS worker;
    its `request_id` is the pass's id."""

    def write(outcome: Outcome) -> None:
        if audit is None:
            return
        prediction, check = outcome.prediction, outcome.check
        code = outcome.error_code
        status = 200 if prediction is not None else _STATUS.get(code or "")
        record = AuditRecord(
            endpoint="pacs:stow" if outcome.stored else "pacs:score",
            source="pacs",
            status=status,
            key_id="pacs-worker",
            request_id=pass_id.current if pass_id is not None else None,
            code=code,
            image_sha256=outcome.image_sha256,
            image_bytes=outcome.image_bytes,
            image_format="DICOM" if outcome.image_bytes else None,
            policy=check.policy if check is not None else None,
            accepted=check.accepted if check is not None else None,
            duration_ms=outcome.seconds * 1000,
        )
        if prediction is not None:
            record.model_name, record.model_version = prediction.model.name, prediction.model.version
            record.model_sha256 = prediction.model.sha256
            record.operating_point, record.threshold = prediction.operating_point, prediction.threshold
            record.label, record.probability = prediction.label, prediction.probability
        audit.write(record)

    return write


_STATUS = {code.value: code.status for code in ErrorCode}


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # dicomweb-client and urllib3 log request URLs, which hold study UIDs and query values (accession numbers);
    # highdicom logs a line per module it copies
    for name in ("dicomweb_client", "urllib3", "highdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT finish the current batch and end the run; returns a function restoring the handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(signum: int, frame: object) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        stop.set()

    for sig in previous:
        signal.signal(sig, handle)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


if __name__ == "__main__":
    sys.exit(main())
