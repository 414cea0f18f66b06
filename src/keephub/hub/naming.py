"""Validation of repo ids, revisions and paths, with messages that name the broken rule."""

from __future__ import annotations

import re
import unicodedata

from keephub.wire import BadRequest
from keephub.wire.errors import NotFound
from keephub.wire.text import text_problem

REPO_TYPES = ("model", "dataset", "space")
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
MAX_NAME = 96
_NAME_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
_REF_BAD = re.compile(r"[\x00-\x20~^:?*\[\\\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA1 = re.compile(r"^[0-9a-f]{7,39}$")


def repo_type_from_plural(plural: str) -> str:
    """`/api/{plural}/...` matches any word, so an unknown one is an unknown endpoint (404), not a bad request."""
    singular = plural.removesuffix("s")
    if singular not in REPO_TYPES:
        raise NotFound(f"no such endpoint: unknown repo type {plural!r} in the URL; use models, datasets or spaces")
    return singular


def check_repo_type(value: object) -> str:
    value = value or "model"
    if value not in REPO_TYPES:
        raise BadRequest(f"invalid repo type {value!r}; use one of {', '.join(REPO_TYPES)}")
    return str(value)


def check_repo_name(name: object, what: str = "repo name") -> str:
    """Apply the Hub's rules to one half of a repo id and say which rule was broken."""
    if not isinstance(name, str) or not name:
        raise BadRequest(f"the {what} is missing; pass it as namespace/name")
    if len(name) > MAX_NAME:
        raise BadRequest(f"the {what} {name!r} is {len(name)} characters long; the limit is {MAX_NAME}")
    if not _NAME_CHARS.match(name):
        raise BadRequest(
            f"the {what} {name!r} contains characters that are not allowed; use letters, digits, '-', '_' and '.'"
        )
    if name[0] in "-." or name[-1] in "-.":
        raise BadRequest(f"the {what} {name!r} must not start or end with '-' or '.'")
    if "--" in name or ".." in name:
        raise BadRequest(f"the {what} {name!r} must not contain '--' or '..'")
    if name.endswith(".git"):
        raise BadRequest(f"the {what} {name!r} must not end with '.git'")
    return name


def split_repo_id(repo_id: object) -> tuple[str, str]:
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise BadRequest(f"invalid repo id {repo_id!r}: it must be namespace/name, e.g. alice/my-model")
    namespace, name = repo_id.split("/")
    return check_repo_name(namespace, "namespace"), check_repo_name(name)


def check_text(value: str, what: str) -> str:
    """JSON may carry lone surrogates ("\\ud800") that no UTF-8 database, git object or header can hold, and
    NUL bytes that git and C APIs cut strings at."""
    problem = text_problem(value)
    if problem:
        raise BadRequest(f"the {what} {value!r} {problem}; send UTF-8 text without NUL bytes")
    return value


def is_commit_sha(value: str) -> bool:
    return bool(_SHA1.match(value))


def is_short_commit_sha(value: str) -> bool:
    """The start of a commit id, as `git` abbreviates them (7 hex digits or more)."""
    return bool(_SHORT_SHA1.match(value))


def check_ref_name(name: object, what: str = "branch") -> str:
    """A new branch or tag name: git's rules (`git check-ref-format --branch`), in a form a user can act on.

    Names git would read as something else are refused too: `HEAD`, `@` (git's shorthand for HEAD), anything
    under `refs/` (a branch "refs/heads/main" would shadow main for git clients; `refs/pr/N` is the Hub's
    pull-request namespace) and a commit id. Only creation is checked, not revisions a request names.
    """
    if not isinstance(name, str) or not name:
        raise BadRequest(f"the {what} name is missing")
    check_text(name, f"{what} name")
    problems = []
    if len(name) > 200:
        problems.append("is longer than 200 characters")
    if _REF_BAD.search(name):
        problems.append("contains a space, a control character or one of ~ ^ : ? * [ \\")
    if ".." in name or "@{" in name or "//" in name:
        problems.append("contains '..', '@{' or '//'")
    if name.startswith(("/", "-", ".")) or name.endswith(("/", ".")):
        problems.append("starts with '/', '-' or '.', or ends with '/' or '.'")
    parts = name.split("/")
    if any(part.startswith(".") for part in parts):
        problems.append("has a path component starting with '.'")
    if any(part.endswith(".lock") for part in parts):
        problems.append("has a path component ending with '.lock'")
    if name in ("HEAD", "@"):
        problems.append("is a name git reserves for the current commit")
    if name.startswith("refs/"):
        problems.append("starts with 'refs/'; give the short name (e.g. 'v1.0', not 'refs/tags/v1.0')")
    if is_commit_sha(name):
        problems.append("looks like a commit id")
    if problems:
        raise BadRequest(f"invalid {what} name {name!r}: it " + "; it ".join(problems))
    return name


def check_path(path: object, what: str = "path") -> str:
    """A path inside a repo, in Unicode NFC form: relative, forward slashes, no '..', no '.git', no control
    characters.

    A newline in a name would be stored but could never be downloaded (URL routes stop at it), so
    control characters are refused at commit time rather than accepted into an unreadable file.
    Paths are normalised to NFC, as the Hub does, both when stored and when looked up: "café.txt" typed on
    Linux (NFC) and on macOS (NFD) is one file, not two that look the same.
    """
    if not isinstance(path, str) or not path:
        raise BadRequest(f"the {what} is missing or empty")
    check_text(path, what)
    path = unicodedata.normalize("NFC", path)
    if _CONTROL.search(path):
        raise BadRequest(f"the {what} {path!r} contains a control character (e.g. a newline); rename the file")
    if "\\" in path:
        raise BadRequest(f"the {what} {path!r} contains a backslash; use '/' to separate folders")
    if path.startswith("/"):
        raise BadRequest(f"the {what} {path!r} is absolute; paths in a repo are relative, e.g. 'config.json'")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadRequest(f"the {what} {path!r} has an empty, '.' or '..' component; use a plain relative path")
    if any(part == ".git" for part in parts):
        raise BadRequest(f"the {what} {path!r} is inside '.git', which a repo cannot contain")
    if len(path.encode()) > 1024:
        raise BadRequest(f"the {what} is longer than 1024 bytes")
    return path
