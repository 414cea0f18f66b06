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
        return JSONResponse({**self.extra_body, "error": body_safe(self.message)}, status_code=self.status_code,
                            headers=hdrs)


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


MAX_HEADER_MESSAGE = 1000


def header_safe(message: str) -> str:
    """One line of printable ASCII for `X-Error-Message`; the JSON body keeps the full text.

    A NUL or other control character in a header makes uvicorn drop the connection without any answer, and
    error messages quote what the client sent (a repo name, a path), so everything else is escaped: control
    characters and non-ASCII text as backslash escapes, line breaks and tabs folded into single spaces.
    """
    flat = " ".join(message.split())
    escaped = flat.encode("ascii", "backslashreplace").decode("ascii")
    printable = "".join(char if " " <= char <= "~" else f"\\x{ord(char):02x}" for char in escaped)
    return printable[:MAX_HEADER_MESSAGE]


def body_safe(message: str) -> str:
    """The message as text that encodes to UTF-8: a lone surrogate a client sent (JSON "\\ud800") is shown
    escaped instead of failing the answer with a 500."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


async def render_hub_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HubError)
    return exc.to_response()
