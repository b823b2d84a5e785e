"""Every error a caller can cause: one stable code, its HTTP status, and what it means.

`ErrorCode` is the one list. The service turns every `PneumoniaError` into the same JSON envelope
(app/api/errors.py), batch scoring writes the same codes into its CSV, and the docs' table of codes is
generated from this enum (tests check it).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """A stable machine-readable code. `status` is the HTTP status the service answers with."""

    def __new__(cls, value: str, status: int, meaning: str) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.meaning = meaning
        return member

    status: int
    meaning: str

    # the upload itself
    UNSUPPORTED_MEDIA_TYPE = ("unsupported_media_type", 415, "Neither multipart/form-data nor a raw image body.")
    MALFORMED_MULTIPART = ("malformed_multipart", 400, "The multipart body has no boundary or cannot be parsed.")
    TOO_MANY_FILES = ("too_many_files", 400, "More than one file in the form; send exactly one.")
    MISSING_FILE = ("missing_file", 422, "The multipart form has no field named 'file'.")
    UPLOAD_TOO_LARGE = ("upload_too_large", 413, "The request body exceeds PNEUMONIA_MAX_UPLOAD_BYTES.")
    UNREADABLE_FILE = ("unreadable_file", 400, "Batch scoring only: the file could not be read from disk.")
    # decoding
    EMPTY_FILE = ("empty_file", 400, "The file is empty.")
    UNSUPPORTED_FORMAT = ("unsupported_format", 415, "Not a JPEG, PNG or DICOM image (the format is sniffed).")
    CORRUPT_IMAGE = ("corrupt_image", 422, "The image data is truncated or corrupt.")
    INVALID_IMAGE = ("invalid_image", 422, "The image cannot be used (e.g. a DICOM without pixel data).")
    TOO_MANY_PIXELS = ("too_many_pixels", 413, "The decoded image exceeds PNEUMONIA_MAX_PIXELS.")
    BAD_DIMENSIONS = ("bad_dimensions", 422, "The image has an unusable shape (e.g. a video or 3-D volume).")
    DICOM_REQUIRED = (
        "dicom_required",
        415,
        "A DICOM result (?format=dicom-sr or dicom-sc) was asked for an upload that is not a DICOM image with its "
        "study and instance UIDs: there is no study to attach the result to.",
    )
    # the input check (policy `refuse`; under `warn` the same verdict comes back with accepted=false)
    NOT_A_CHEST_XRAY = ("not_a_chest_xray", 422, "The input check found it is not a frontal chest X-ray.")
    OUTSIDE_POPULATION = (
        "outside_population",
        422,
        "A chest X-ray, but not of the population the model was trained on (e.g. an adult film).",
    )
    POOR_IMAGE_QUALITY = (
        "poor_image_quality",
        422,
        "Exposure or contrast outside what the training films cover; the model's answer is unreliable there.",
    )
    # the request's parameters
    INVALID_REQUEST = ("invalid_request", 422, "A query parameter or the body's fields are invalid.")
    UNKNOWN_OPERATING_POINT = ("unknown_operating_point", 422, "No operating point of that name (see GET /model).")
    # access (app/api/auth.py; docs: security)
    UNAUTHORIZED = ("unauthorized", 401, "No API key, or one that is not accepted (Authorization: Bearer TOKEN).")
    TOKEN_IN_QUERY = ("token_in_query", 400, "A credential in the query string; send it in the Authorization header.")
    RATE_LIMITED = ("rate_limited", 429, "Past PNEUMONIA_RATE_LIMIT for this key or address; see Retry-After.")
    ANONYMOUS_NOT_ALLOWED = (
        "anonymous_not_allowed",
        403,
        "No API keys are configured: anonymous requests are answered on loopback only.",
    )
    # resources and state
    PREDICTION_NOT_FOUND = ("prediction_not_found", 404, "GET /explain/{id}: unknown or expired prediction id.")
    MODEL_CARD_NOT_FOUND = ("model_card_not_found", 404, "The served bundle has no MODEL_CARD.md.")
    NOT_FOUND = ("not_found", 404, "No such path.")
    METHOD_NOT_ALLOWED = ("method_not_allowed", 405, "The path does not accept this HTTP method.")
    NOT_READY = ("not_ready", 503, "The model is still loading.")
    BUSY = ("busy", 503, "Too many requests in flight or waiting; retry after Retry-After.")
    EXPLAIN_UNAVAILABLE = ("explain_unavailable", 503, "This deployment serves no explanations.")
    STORE_UNAVAILABLE = ("store_unavailable", 503, "The shared prediction store (Redis) cannot be reached.")
    INTERNAL_ERROR = ("internal_error", 500, "An unexpected error; it has been logged.")


class PneumoniaError(Exception):
    """An error with a stable code. The HTTP status and headers travel with it to the service's envelope."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    headers: dict[str, str] | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def status_code(self) -> int:
        return self.code.status
