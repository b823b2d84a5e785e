"""The one error convention: an exception a client can cause carries its HTTP status, a stable code and headers.

app/api/errors.py turns every `ServiceError` into the same JSON body; nothing else maps statuses.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"
    headers: dict[str, str] | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
