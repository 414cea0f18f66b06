"""Numeric query parameters, parsed one way for every route: ASCII digits within a stated range, else a 400.

`str.isdigit()` accepts digits of any script ("١٢") and `int()` any size, so ad-hoc parsing let through
values no client means (a limit of 10^23, a cursor in Arabic-Indic digits); one parser names the parameter
and the range it takes.
"""

from __future__ import annotations

import re
from typing import Mapping

from keephub.wire.errors import BadRequest

_ASCII_INTEGER = re.compile(r"-?[0-9]{1,19}")


def int_param(query: Mapping[str, str], name: str, *, minimum: int, maximum: int,
              default: int | None = None, hint: str = "") -> int | None:
    """The query parameter `name` as an int in [minimum, maximum]; `default` when it is absent (an empty value
    is refused like any other non-number).

    `hint` ends the error message where a bare range would not tell the user what to send.
    """
    raw = query.get(name)
    if raw is None:
        return default
    if _ASCII_INTEGER.fullmatch(raw) is None or not minimum <= int(raw) <= maximum:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise BadRequest(f"query parameter '{name}' must be a whole number from {minimum} to {maximum} "
                         f"written in ASCII digits, not {shown!r}{hint}")
    return int(raw)
