# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""PostgreSQL WAL positions (LSNs): parse, compare, format, measure.

An LSN is written ``"<hex>/<hex>"`` (e.g. ``"0/174A4D0"``). Like node-pg-lsn
(reference/manatee.md section 4.6) we parse it as a pair ``(hi, lo)`` of 32-bit
integers and compare the pairs; zero padding is not assumed, so
``"0/0000000"`` (state-backfill's 7 zeros) and ``"0/00000000"`` are equal.

Byte distances use the PostgreSQL >= 9.3 layout, ``(hi << 32) | lo``. On 9.2
each high unit spans 0xFF000000 bytes instead; use the server-side
``pg_xlog_location_diff()`` there.
"""
from __future__ import annotations

import re

_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")

ZERO = "0/00000000"


class LsnError(ValueError):
    """A string that is not an LSN."""


def parse(text):
    """``"<hex>/<hex>"`` -> ``(hi, lo)``; raises LsnError naming the input."""
    if not isinstance(text, str):
        raise LsnError(f"expected an LSN string like \"0/174A4D0\", found {type(text).__name__} {text!r}")
    m = _LSN_RE.match(text.strip())
    if not m:
        raise LsnError(
            f"expected an LSN like \"0/174A4D0\" (two hex numbers of at most 8 digits "
            f"separated by \"/\"), found {text!r}")
    return int(m.group(1), 16), int(m.group(2), 16)


def is_valid(text):
    try:
        parse(text)
        return True
    except LsnError:
        return False


def compare(a, b):
    """-1, 0 or 1 as LSN ``a`` is before, equal to or after ``b``."""
    pa, pb = parse(a), parse(b)
    return (pa > pb) - (pa < pb)


def at_least(a, b):
    """True when LSN ``a`` >= LSN ``b``."""
    return compare(a, b) >= 0


def to_int(text):
    """Byte position of an LSN (PostgreSQL >= 9.3 layout)."""
    hi, lo = parse(text)
    return (hi << 32) | lo


def from_int(pos):
    """Byte position -> LSN text as PostgreSQL prints it (``%X/%X``)."""
    if pos < 0 or pos >= 1 << 64:
        raise LsnError(f"byte position {pos} is outside 0..2^64-1")
    return format_lsn((pos >> 32, pos & 0xFFFFFFFF))


def format_lsn(pair):
    hi, lo = pair
    return f"{hi:X}/{lo:X}"


def normalize(text):
    """The canonical PostgreSQL spelling of an LSN (``"0/0000000"`` -> ``"0/0"``)."""
    return format_lsn(parse(text))


def diff(a, b):
    """Bytes from ``b`` to ``a`` (positive when ``a`` is ahead)."""
    return to_int(a) - to_int(b)


def maximum(*lsns):
    """The latest of the given LSNs, ignoring None."""
    vals = [x for x in lsns if x is not None]
    if not vals:
        return None
    best = vals[0]
    for v in vals[1:]:
        if compare(v, best) > 0:
            best = v
    return best
