# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Keys and value encodings of the node-fash LevelDB ring (reference/fash.md §4.2)."""
from __future__ import annotations

K_VNODE_COUNT = b"VNODE_COUNT"
K_VNODE_DATA = b"VNODE_DATA"
K_PNODE = b"/PNODE"
K_ALGORITHM = b"ALGORITHM"
K_VERSION = b"VERSION"
K_COMPLETE = b"COMPLETE"
VNODE_PREFIX = b"/VNODE/"
PNODE_PREFIX = b"/PNODE/"

ONE = b"1"      # the value of a vnode without data


def vnode_key(v):
    return b"/VNODE/%d" % v


def pnode_key(pnode):
    return PNODE_PREFIX + pnode.encode("utf-8")


def data_key(pnode, v):
    return PNODE_PREFIX + pnode.encode("utf-8") + b"/%d" % v


def int_list_json(values):
    return ("[" + ",".join(map(str, values)) + "]").encode("ascii")
