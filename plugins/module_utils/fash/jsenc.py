# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""JavaScript-compatible JSON encoding and object-key ordering.

node-fash stores every LevelDB value as ``JSON.stringify(value)`` (compact,
non-ASCII unescaped) and reads JSON objects in JavaScript property order
(integer-like keys first, ascending, then insertion order). These helpers
reproduce both so that rings written here are byte-identical (fash.md §4.1).
"""
from __future__ import annotations

import json
import math
import re

_ARRAY_INDEX_RE = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_MAX_ARRAY_INDEX = 2 ** 32 - 2


def is_array_index(name):
    """True when ``name`` is a canonical array index, which JS orders first."""
    return bool(_ARRAY_INDEX_RE.match(name)) and int(name) <= _MAX_ARRAY_INDEX


def js_key_order(names):
    """Order ``names`` the way JS ``Object.keys`` would after inserting them in order."""
    names = list(names)
    idx = sorted((n for n in names if is_array_index(n)), key=int)
    if not idx:
        return names
    idx_set = set(idx)
    return idx + [n for n in names if n not in idx_set]


def js_sort_key(name):
    """Sort key of JavaScript's default ``Array.prototype.sort`` (UTF-16 code units)."""
    return name.encode("utf-16-be", "surrogatepass")


def js_number(x):
    """Format a float the way JS ``Number.prototype.toString`` does."""
    if math.isnan(x) or math.isinf(x):
        return "null"  # JSON.stringify turns them into null
    if x == int(x) and abs(x) < 1e21:
        return str(int(x))
    r = repr(x)
    sign = ""
    if r[0] == "-":
        sign, r = "-", r[1:]
    mant, _sep, exp = r.partition("e")
    e = int(exp) if exp else 0
    if "." in mant:
        ip, fp = mant.split(".")
    else:
        ip, fp = mant, ""
    digits = (ip + fp).lstrip("0")
    # position of the decimal point relative to the start of ``digits``
    lead_zeros = len(ip + fp) - len((ip + fp).lstrip("0"))
    n = len(ip) + e - lead_zeros
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exp_s = n - 1
    es = ("+" if exp_s >= 0 else "-") + str(abs(exp_s))
    if k == 1:
        return sign + digits + "e" + es
    return sign + digits[0] + "." + digits[1:] + "e" + es


def js_dumps(value):
    """``JSON.stringify(value)`` as a str (compact, non-ASCII kept)."""
    if value == 1 and isinstance(value, int) and not isinstance(value, bool):
        return "1"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if _has_float(value):
        return _dumps_slow(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _has_float(value):
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_float(v) for v in value)
    return False


def _dumps_slow(value):
    if isinstance(value, float):
        return js_number(value)
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + _dumps_slow(v)
                              for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_dumps_slow(v) for v in value) + "]"
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def js_dumpb(value):
    """``JSON.stringify(value)`` as UTF-8 bytes, the LevelDB value encoding."""
    return js_dumps(value).encode("utf-8", "surrogatepass")


_ONE = b"1"


def js_loadb(raw):
    """Decode a LevelDB value (UTF-8 JSON bytes), with fast paths for the common ones."""
    if raw == _ONE:
        return 1
    if raw[:1] == b'"' and b"\\" not in raw and raw[-1:] == b'"':
        return raw[1:-1].decode("utf-8")
    return json.loads(raw)


def is_no_data(value):
    """True when a vnode's data means "no data": the JSON number 1 (``data === 1``)."""
    return type(value) in (int, float) and value == 1
