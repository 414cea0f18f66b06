"""HTTP `Range: bytes=...` headers, parsed once for every endpoint that serves part of a file.

Only single ranges are served (clients ask for no more). What to do with a malformed header differs by
endpoint, so the parser only reports it: `resolve` ignores it and sends the whole file, as HTTP allows;
the CAS endpoints, whose ranges come from URLs keephub itself issued, refuse it with a 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from keephub.wire.errors import RangeNotSatisfiable

_SINGLE_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


@dataclass(frozen=True)
class ByteRange:
    """A range as written: `first` None for a suffix range (`bytes=-N`, the last `last` bytes), `last` None for
    an open end (`bytes=N-`)."""

    first: int | None
    last: int | None

    def within(self, size: int) -> tuple[int, int] | None:
        """(first, last), inclusive, of a `size`-byte representation; None if no byte of it is in range."""
        if self.first is None:
            if not self.last:  # `bytes=-0`: the last zero bytes
                return None
            first, last = max(size - self.last, 0), size - 1
        else:
            first, last = self.first, size - 1 if self.last is None else min(self.last, size - 1)
        return (first, last) if first < size and first <= last else None


def parse_range(value: str) -> ByteRange:
    """The single `bytes=` range of a Range header; ValueError with a message to show the client otherwise."""
    match = _SINGLE_RANGE.fullmatch(value)
    if match is None or not any(match.groups()):
        raise ValueError(f"Range {value!r} is malformed; send one range, 'bytes=<first>-<last>'")
    first, last = match.groups()
    return ByteRange(int(first) if first else None, int(last) if last else None)


def requested_span(value: str | None, size: int) -> tuple[int, int] | None:
    """(first, last inclusive) of a file download's single `bytes=` range; None serves the whole file, which is
    also the answer to a missing or malformed header, as HTTP allows. A range outside the file is a 416."""
    if not value or size == 0:
        return None
    try:
        wanted = parse_range(value)
    except ValueError:
        return None
    span = wanted.within(size)
    if span is None:
        raise RangeNotSatisfiable(f"range {value!r} is outside the file's {size} bytes",
                                  extra_headers={"Content-Range": f"bytes */{size}"})
    return span
