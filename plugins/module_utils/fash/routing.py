# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""electric-moray's routing: the key transform applied before hashing (reference/fash.md §6.2).

* bucket ``manta`` (and ``testmanta``): hash the directory of the key, so
  every object of a directory lands on one shard; a user's root
  ``/<uuid>/stor`` is hashed as is.
* bucket ``manta_uploads``: ``<uploadId>:<path>``, split at the first ``:``,
  then as ``manta`` on the path part; a key without ``:`` is hashed as is.
* any other bucket: the raw key.
"""
from __future__ import annotations

import re

from .errors import RingInputError

_ROOT_RE = re.compile(r"/[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}/stor\Z")
DIRNAME_BUCKETS = ("manta", "testmanta")
UPLOADS_BUCKET = "manta_uploads"


def node_dirname(path):
    """Node's POSIX ``path.dirname``: keeps doubled slashes, no normalisation (unlike os.path)."""
    if not path:
        return "."
    has_root = path[0] == "/"
    end = -1
    in_trailing_slashes = True
    for i in range(len(path) - 1, 0, -1):
        if path[i] == "/":
            if not in_trailing_slashes:
                end = i
                break
        else:
            in_trailing_slashes = False
    if end == -1:
        return "/" if has_root else "."
    if has_root and end == 1:
        return "//"
    return path[:end]


def dirname_or_key(key):
    """The string electric-moray hashes for a ``manta`` key."""
    if _ROOT_RE.match(key):
        return key
    d = node_dirname(key)
    return key if d == "." else d


def transform_key(bucket, key):
    """The string electric-moray hashes for ``key`` in ``bucket``."""
    if not isinstance(key, str):
        raise RingInputError("key %r is not a string" % (key,))
    if bucket in DIRNAME_BUCKETS:
        return dirname_or_key(key)
    if bucket == UPLOADS_BUCKET:
        upload_id, sep, rest = key.partition(":")
        if not sep:
            return key
        return dirname_or_key(rest)
    return key


def node_for_path(ring, bucket, key):
    """``(pnode, vnode, data)`` electric-moray routes ``key`` of ``bucket`` to.

    ``ring`` is a :class:`LevelRing` or a :class:`Topology` (anything with
    ``get_node``). ``node_for_path(ring, "manta", "/poseidon/stor/foo")``
    answers "which shard holds this Manta path".
    """
    return ring.get_node(transform_key(bucket, key))


def route(ring, bucket, key):
    """Like :func:`node_for_path` as a dict, with the hashed string and whether writes are blocked."""
    hashed = transform_key(bucket, key)
    pnode, vnode, data = ring.get_node(hashed)
    return {"bucket": bucket, "key": key, "hashed": hashed, "pnode": pnode, "vnode": vnode,
            "data": data, "read_only": data == "ro"}
