"""Text a client sends that keephub stores or passes on must be UTF-8 without NUL bytes.

JSON can carry a lone surrogate ("\\ud800"), which no UTF-8 database row, git object or HTTP answer can hold:
stored, it makes every later read of the row fail. A NUL byte ends a C string, so in a value handed to a
program (a sandbox launcher, git, SQLite's C API) it silently cuts or splits that value. Both are refused at
the door, naming the field.
"""

from __future__ import annotations

import hmac
from typing import Iterator


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None when it can."""
    if "\x00" in value:
        return "contains a NUL byte (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (it holds a lone surrogate such as \\ud800)"
    return None


def invalid_strings(value: object, where: str) -> Iterator[tuple[str, str]]:
    """(field, problem) for every string in a parsed JSON value, object keys included, that `text_problem`
    refuses; `field` is written as a client would look for it, e.g. `environment.NAME` or `command[2]`.

    Walks with its own stack, not recursion: a body nested as deep as the JSON parser allows must not end
    in a RecursionError (a 500).
    """
    pending: list[tuple[object, str]] = [(value, where)]
    while pending:
        item, field = pending.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                yield field, problem
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                key_problem = text_problem(str(key))
                if key_problem:
                    yield f"a key of {field or 'the body'}", key_problem
                children.append((child, f"{field}.{key}" if field else str(key)))
            pending.extend(reversed(children))
        elif isinstance(item, list):
            pending.extend(reversed([(child, f"{field}[{index}]") for index, child in enumerate(item)]))


def first_invalid_string(value: object, where: str = "") -> tuple[str, str] | None:
    """The first (field, problem) of `invalid_strings`, or None when every string in `value` is clean."""
    return next(invalid_strings(value, where), None)


def same_signature(expected: str, given: str) -> bool:
    """Constant-time comparison of a signature keephub made with one a client sent, whatever the client sent:
    `hmac.compare_digest` refuses str with non-ASCII characters with a TypeError (a 500)."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))
