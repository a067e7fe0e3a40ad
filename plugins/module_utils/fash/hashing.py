# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Hashing: algorithms, the vnode interval, key -> vnode, and the ring version check.

Implements reference/fash.md §2 exactly:

* MAX is ``2**bits - 1`` written as uppercase ``F`` digits; the interval is
  ``MAX // N`` (truncating), formatted as lowercase hex with whole bytes
  (an odd-length hex string gets one leading ``0``).
* ``vnode = int(hexdigest(key.utf8)) // interval``; no clamping: the rare
  hashes past ``N * interval`` give ``vnode == N``, which does not exist.
* the version check compares each dotted part independently with 2.1.0.
"""
from __future__ import annotations

import hashlib
import re

from .errors import RingInputError

#: ring-format version string written into every ring (not a package version)
VERSION = "2.1.0"

# accepted name -> (stored NAME, bits)
_ALGORITHMS = {
    "sha256": ("sha256", 256), "sha-256": ("sha256", 256),
    "SHA256": ("sha256", 256), "SHA-256": ("sha256", 256),
    "sha1": ("sha1", 160), "sha-1": ("sha1", 160),
    "SHA1": ("sha1", 160), "SHA-1": ("sha1", 160),
    "md5": ("md5", 128), "MD5": ("md5", 128),
}
#: the algorithm names node-fash accepts
ALGORITHM_NAMES = tuple(_ALGORITHMS)
_BITS = {"sha256": 256, "sha1": 160, "md5": 128}
_HASHLIB = {"sha256": hashlib.sha256, "sha1": hashlib.sha1, "md5": hashlib.md5}


def normalize_algorithm(name):
    """Map an accepted algorithm name (``sha-256``, ``SHA1``...) to its stored NAME."""
    try:
        return _ALGORITHMS[name][0]
    except (KeyError, TypeError):
        raise RingInputError(
            "algorithm %r is not supported; valid algorithms: %s"
            % (name, ", ".join(ALGORITHM_NAMES))) from None


def _hash_name(stored_name):
    """The hashlib name for a NAME read from a ring (node hands it to OpenSSL as given)."""
    if stored_name in _ALGORITHMS:
        return _ALGORITHMS[stored_name][0]
    if isinstance(stored_name, str) and stored_name.lower().replace("-", "") in _BITS:
        return stored_name.lower().replace("-", "")
    raise RingInputError("algorithm NAME %r is not supported; valid: sha256, sha1, md5" % (stored_name,))


def max_hex(name):
    """The MAX string stored in ALGORITHM: ``bits/4`` uppercase ``F`` digits."""
    return "F" * (_BITS[normalize_algorithm(name)] // 4)


def format_interval(interval):
    """Hex as OpenSSL ``BN_bn2hex`` then lower-cased: whole bytes, no ``0x``."""
    h = format(interval, "x")
    return "0" + h if len(h) % 2 else h


_HEX_RE = re.compile(r"[0-9a-fA-F]+\Z")


def parse_hex(text, what="VNODE_HASH_INTERVAL"):
    """Read a hex string in any case with any leading zeros; raise on anything else."""
    if not isinstance(text, str) or not _HEX_RE.match(text):
        raise RingInputError("%s %r is not a hex string" % (what, text))
    return int(text, 16)


def compute_interval(name, vnodes):
    """``MAX // vnodes`` for the algorithm."""
    bits = _BITS[normalize_algorithm(name)]
    return ((1 << bits) - 1) // vnodes


def algorithm_record(name, vnodes):
    """The ALGORITHM object fash create writes: NAME, MAX, VNODE_HASH_INTERVAL (in that order)."""
    stored = normalize_algorithm(name)
    return {
        "NAME": stored,
        "MAX": "F" * (_BITS[stored] // 4),
        "VNODE_HASH_INTERVAL": format_interval(compute_interval(stored, vnodes)),
    }


def encode_key(key):
    """UTF-8 bytes of a key as Node would hash it (lone surrogates become U+FFFD)."""
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    if not isinstance(key, str):
        raise RingInputError("key %r is not a string" % (key,))
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:
        fixed = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in key)
        return fixed.encode("utf-8")


class Hasher(object):
    """Key -> vnode for one ring: the stored NAME and the stored interval."""

    __slots__ = ("name", "interval", "vnode_count", "_fn")

    def __init__(self, name, interval, vnode_count=None):
        self.name = _hash_name(name)
        if not isinstance(interval, int) or interval <= 0:
            raise RingInputError("VNODE_HASH_INTERVAL must be a positive integer, got %r" % (interval,))
        self.interval = interval
        self.vnode_count = vnode_count
        self._fn = _HASHLIB[self.name]

    def digest_int(self, key):
        return int.from_bytes(self._fn(encode_key(key)).digest(), "big")

    def vnode_of(self, key):
        """The vnode a key hashes to. May equal vnode_count (fash does not clamp)."""
        return int.from_bytes(self._fn(encode_key(key)).digest(), "big") // self.interval


def vnode_for_key(key, name="sha256", vnodes=None, interval=None):
    """Hash ``key`` with algorithm ``name`` to a vnode, for a ring of ``vnodes`` (or an explicit interval)."""
    if interval is None:
        if vnodes is None:
            raise RingInputError("vnode_for_key needs vnodes or interval")
        interval = compute_interval(name, vnodes)
    return Hasher(name, interval).vnode_of(key)


_PARSE_INT_RE = re.compile(r"[\s\ufeff]*([+-]?[0-9]+)")


def _js_parse_int(part):
    m = _PARSE_INT_RE.match(part)
    return int(m.group(1)) if m else None  # None stands for NaN


def version_problem(version):
    """Why node-fash would reject ``version`` (fash.md §2.6), or None when it is accepted."""
    if not isinstance(version, str):
        return "version %r is not a string; node-fash accepts only strings such as %r" % (version, VERSION)
    parts = version.split(".")
    if len(parts) > 3:
        return "version %r has more than 3 parts; node-fash accepts e.g. %r" % (version, VERSION)
    current = [2, 1, 0]
    v = None
    for i in range(3):
        if i < len(parts):
            v = _js_parse_int(parts[i])
        if v is not None and current[i] < v:
            return ("version %s is not compatible with current version <2,1,0> "
                    "(node-fash compares each dotted part; write %r)" % (version, VERSION))
    return None


def check_version(version):
    """Raise :class:`RingInputError` when node-fash would reject the version."""
    problem = version_problem(version)
    if problem:
        raise RingInputError(problem)
