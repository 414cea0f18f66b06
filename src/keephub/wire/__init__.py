"""The Hugging Face wire contract: header names, error codes and the error tree the clients map to exceptions."""

from keephub.wire.errors import (
    BadRequest,
    Conflict,
    EntryNotFound,
    Forbidden,
    HubError,
    PreconditionFailed,
    RangeNotSatisfiable,
    RepoNotFound,
    RevisionNotFound,
    TooLarge,
    Unauthorized,
)

__all__ = [
    "BadRequest",
    "Conflict",
    "EntryNotFound",
    "Forbidden",
    "HubError",
    "PreconditionFailed",
    "RangeNotSatisfiable",
    "RepoNotFound",
    "RevisionNotFound",
    "TooLarge",
    "Unauthorized",
]
