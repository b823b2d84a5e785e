"""Uploads, bounded and in memory.

`UploadLimitMiddleware` (pure ASGI) rejects a request whose Content-Length exceeds the limit before reading
it, and otherwise counts body bytes as they arrive, aborting with 413 once more than the limit has been
received, with or without Content-Length (chunked bodies). `read_upload` accepts two forms:
- multipart/form-data with one field `file`, parsed with python-multipart's streaming parser straight into
  memory: no `UploadFile`, no SpooledTemporaryFile, so an upload never touches the disk. File names are never
  read out of the part headers, let alone logged;
- the raw body, with one of the Content-Types in RAW_MEDIA_TYPES (the form model servers use). The Content-Type
  only selects this form: the format is still sniffed from the bytes.
Both pass through the same size limit and end in the same decode, so they fail with the same errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.audit import note_upload
from app.api.errors import ApiError, UploadTooLargeError, error_body
from pneumonia.errors import ErrorCode

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
# After the limit is hit, keep reading (and discarding) up to this much more so the client sees the 413
# instead of a reset connection; beyond that the connection is simply dropped.
DRAIN_LIMIT_BYTES = 8 * 1024 * 1024

# The format is sniffed from the bytes, so a generic binary body is as good as a typed one.
RAW_MEDIA_TYPES = ("image/jpeg", "image/png", "application/dicom", "application/octet-stream")
_RAW_MEDIA_TYPES = frozenset(t.encode() for t in RAW_MEDIA_TYPES)

UPLOAD_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": "One chest X-ray, either as multipart field `file` or as the raw body with its Content-Type.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FILE_FIELD],
                "properties": {
                    FILE_FIELD: {
                        "type": "string",
                        "format": "binary",
                        "description": "A chest X-ray: JPEG, PNG or DICOM (format detected from the bytes).",
                    }
                },
            }
        },
        **{media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in RAW_MEDIA_TYPES},
    },
}


class UploadLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_413(send, self.max_bytes)
            return
        received = 0
        limit = self.max_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    await _drain(receive, message)
                    raise UploadTooLargeError(limit)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: Receive, message: Message) -> None:
    drained = 0
    while message.get("more_body", False) and drained < DRAIN_LIMIT_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))


async def _send_413(send: Send, limit: int) -> None:
    import json

    body = json.dumps(error_body(UploadTooLargeError(limit).code, UploadTooLargeError(limit).message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _FilePartCollector:
    """python-multipart callbacks that keep only the bytes of parts named `file`."""

    def __init__(self) -> None:
        self.files: list[bytearray] = []
        self.other_fields: list[str] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._current: bytearray | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._current = None

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD:
            self._current = bytearray()
            self.files.append(self._current)
        else:
            self.other_fields.append(name)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None:
            self._current.extend(data[start:end])


async def read_upload(request: Request) -> bytes:
    """Return the uploaded file's bytes (raw body or multipart field `file`), or raise an `ApiError`."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type in _RAW_MEDIA_TYPES:
        data = await request.body()  # an empty body is refused by decode_image, as an empty multipart file is
        note_upload(request, data)  # its SHA-256 and size for the audit trail, when one is kept
        return data
    if content_type != b"multipart/form-data":
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "Send the image as multipart/form-data with a field named 'file' (e.g. curl -F file=@xray.jpg ...), "
            f"or as the request body with Content-Type {', '.join(RAW_MEDIA_TYPES)} "
            "(e.g. curl --data-binary @xray.jpg -H 'Content-Type: image/jpeg' ...).",
        )
    data = await _read_multipart(request, options)
    note_upload(request, data)
    return data


async def _read_multipart(request: Request, options: dict[bytes, bytes]) -> bytes:
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(ErrorCode.MALFORMED_MULTIPART, "The multipart/form-data Content-Type has no boundary.")
    collector = _FilePartCollector()
    parser = MultipartParser(boundary, collector.callbacks())
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # python-multipart raises MultipartParseError and friends
        raise ApiError(
            ErrorCode.MALFORMED_MULTIPART, f"The multipart body could not be parsed ({type(exc).__name__})."
        ) from exc
    if len(collector.files) > 1:
        raise ApiError(
            ErrorCode.TOO_MANY_FILES, f"Send exactly one file in the field '{FILE_FIELD}'; got {len(collector.files)}."
        )
    if not collector.files:
        got = (
            f" (got fields: {', '.join(repr(n) for n in collector.other_fields[:5])})" if collector.other_fields else ""
        )
        raise ApiError(ErrorCode.MISSING_FILE, f"The multipart form has no field named '{FILE_FIELD}'{got}.")
    return bytes(collector.files[0])
