"""Errors as the huggingface_hub client reads them.

`hf_raise_for_status` picks the exception class from `X-Error-Code` and shows `X-Error-Message`
and the JSON `error` field to the user, so every error keephub raises carries a message that
names the problem and the fix. One exception handler renders the whole tree.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from keephub.wire import headers


class HubError(Exception):
    """Base of every error answered to a client. Subclasses fix the status and the error code."""

    status_code = 400
    error_code: str | None = None

    def __init__(self, message: str, *, extra_headers: dict[str, str] | None = None,
                 extra_body: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra_headers = extra_headers or {}
        self.extra_body = extra_body or {}

    def to_response(self) -> JSONResponse:
        hdrs = {headers.X_ERROR_MESSAGE: header_safe(self.message), **self.extra_headers}
        if self.error_code:
            hdrs[headers.X_ERROR_CODE] = self.error_code
        return JSONResponse({**self.extra_body, "error": self.message}, status_code=self.status_code, headers=hdrs)


class BadRequest(HubError):
    status_code = 400


class Unauthorized(HubError):
    status_code = 401


class Forbidden(HubError):
    status_code = 403


class RepoNotFound(HubError):
    status_code = 404
    error_code = "RepoNotFound"


class RevisionNotFound(HubError):
    status_code = 404
    error_code = "RevisionNotFound"


class EntryNotFound(HubError):
    status_code = 404
    error_code = "EntryNotFound"


class NotFound(HubError):
    status_code = 404


class MethodNotAllowed(HubError):
    status_code = 405


class Conflict(HubError):
    status_code = 409


class PreconditionFailed(HubError):
    status_code = 412


class TooLarge(HubError):
    status_code = 413


class RangeNotSatisfiable(HubError):
    status_code = 416


class Unprocessable(HubError):
    status_code = 422


def header_safe(message: str) -> str:
    """HTTP header values must be latin-1 and single-line; the JSON body keeps the full text."""
    flat = " ".join(message.split())
    return flat.encode("latin-1", "replace").decode("latin-1")[:1000]


async def render_hub_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HubError)
    return exc.to_response()
