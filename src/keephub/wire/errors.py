"""Errors as the huggingface_hub client reads them.

`hf_raise_for_status` picks the exception class from `X-Error-Code` and shows `X-Error-Message`
and the JSON `error` field to the user, so every error keephub raises carries a message that
names the problem and the fix. One exception handler renders the whole tree.

huggingface_hub prints both texts unless they are equal, and for a 403 writes `403 Forbidden: <header>.`
itself, so a message is sent without a status text of its own and without its final period, the same in
the header and the body. A long message (a checklist) is a one-line `summary` in the header and the
`detail` in the body only: the client prints the summary, then the checklist once, intact.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse

from keephub.wire import headers


class HubError(Exception):
    """Base of every error answered to a client. Subclasses fix the status and the error code."""

    status_code = 400
    error_code: str | None = None

    def __init__(self, message: str, *, detail: str | None = None, extra_headers: dict[str, str] | None = None,
                 extra_body: dict | None = None) -> None:
        """`message` is one line; `detail`, when given, is the long text (several lines) it summarizes."""
        super().__init__(message if detail is None else f"{message}\n{detail}")
        self.message = message
        self.detail = detail
        self.extra_headers = extra_headers or {}
        self.extra_body = extra_body or {}

    def to_response(self) -> JSONResponse:
        summary = client_ready(self.message)
        hdrs = {headers.X_ERROR_MESSAGE: header_safe(summary), **self.extra_headers}
        if self.error_code:
            hdrs[headers.X_ERROR_CODE] = self.error_code
        body = {**self.extra_body, "error": body_safe(summary if self.detail is None else self.detail)}
        if self.detail is not None:
            body["summary"] = body_safe(summary)
        return JSONResponse(body, status_code=self.status_code, headers=hdrs)


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


class ServiceUnavailable(HubError):
    """A backend keephub depends on (the metadata database) cannot be reached; the same request may work later."""

    status_code = 503


MAX_HEADER_MESSAGE = 1000
_STATUS_TEXT = re.compile(r"^[1-5][0-9]{2} [A-Z][A-Za-z -]*: ")


def client_ready(message: str) -> str:
    """The message without what huggingface_hub adds itself: a leading status text ("403 Forbidden: ") and
    one final period (an ellipsis stays)."""
    text = _STATUS_TEXT.sub("", message.strip(), count=1)
    return text[:-1] if text.endswith(".") and not text.endswith("..") else text


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
