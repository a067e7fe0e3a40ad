# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Ring operations built on the store and the topology (diff, declarative plans)."""
