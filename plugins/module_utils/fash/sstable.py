# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Direct LevelDB table writer (placeholder until implemented)."""
from __future__ import annotations


def available():
    return False


def write_ring(topo, path):  # pragma: no cover
    raise NotImplementedError
