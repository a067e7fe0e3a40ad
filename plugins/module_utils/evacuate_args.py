# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""The argument specs of the evacuation modules, in one place.

Each module's spec is :func:`argument_spec` of the shared option groups it takes
plus its own options. The groups are documented once, in the doc fragment
plugins/doc_fragments/evacuate.py: ``connection`` (``manta.ops.evacuate``),
``job_store`` (``manta.ops.evacuate.job_store``) and ``throttle``
(``manta.ops.evacuate.throttle``).

Standard library and ``ansible.module_utils.basic`` only, so that the module that
runs on the storage nodes (M(manta.ops.evacuate_copy)) can use it too.
"""
from __future__ import annotations

import copy

from ansible.module_utils.basic import env_fallback

DEFAULT_SCHEMA = "manta_evacuate"

GROUPS = {
    # where the shards' primaries (ZooKeeper), SAPI and the shards' PostgreSQL are
    "connection": dict(
        storage_shard=dict(type="str"),
        zk_servers=dict(type="str", fallback=(env_fallback, ["MANTA_ZK_SERVERS"])),
        zk_timeout=dict(type="float", default=10.0),
        sapi_url=dict(type="str", fallback=(env_fallback, ["MANTA_SAPI_URL"])),
        pg_user=dict(type="str", fallback=(env_fallback, ["MANTA_PG_USER"])),
        pg_password=dict(type="str", no_log=True, fallback=(env_fallback, ["MANTA_PG_PASSWORD"])),
        pg_connect_timeout=dict(type="int", default=5),
        pg_query_timeout=dict(type="float", default=120.0),
    ),
    # where the job store is
    "job_store": dict(
        job_dsn=dict(type="str", no_log=True, fallback=(env_fallback, ["MANTA_EVACUATE_DSN"])),
        job_schema=dict(type="str", default=DEFAULT_SCHEMA),
    ),
    # the job's throttles (copy_concurrency, max_bytes_per_sec, metadata_rows_per_sec)
    "throttle": dict(
        throttle=dict(type="dict", default={}),
    ),
}


def argument_spec(*groups, **options):
    """An evacuation module's argument spec: the shared ``groups`` (names of
    :data:`GROUPS`) it takes, then its own ``options`` (which win over a group's, for
    example another default)."""
    spec = {}
    for g in groups:
        if g not in GROUPS:
            raise ValueError(f"unknown option group {g!r}; known: {', '.join(sorted(GROUPS))}")
        spec.update(copy.deepcopy(GROUPS[g]))
    spec.update(options)
    return spec
