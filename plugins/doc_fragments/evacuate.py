# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations


class ModuleDocFragment:
    """Options shared by the evacuation modules; their argument specs come from
    module_utils.evacuate_args.argument_spec (groups of the same names).

    ``manta.ops.evacuate``: where the shards, ZooKeeper and SAPI are (group
    ``connection``); ``manta.ops.evacuate.job_store``: where the job store is (group
    ``job_store``); ``manta.ops.evacuate.throttle``: the job's throttles (group
    ``throttle``).
    """

    DOCUMENTATION = r"""
options:
  storage_shard:
    description: Shard holding C(manta_storage) and the default job store (default SAPI C(STORAGE_MORAY_SHARD)).
    type: str
  zk_servers:
    description: ZooKeeper connect string (default E(MANTA_ZK_SERVERS)), to find shard primaries.
    type: str
  zk_timeout:
    description: Seconds to wait for ZooKeeper.
    type: float
    default: 10
  sapi_url:
    description: SAPI URL (default E(MANTA_SAPI_URL)), where the C(manta) application's shard metadata is read.
    type: str
  pg_user:
    description: PostgreSQL user for the shard primaries (default the user of the peer's C(pgUrl); E(MANTA_PG_USER)).
    type: str
  pg_password:
    description: PostgreSQL password, if any (E(MANTA_PG_PASSWORD)). Never shown.
    type: str
  pg_connect_timeout:
    description: Seconds to wait for each PostgreSQL connection.
    type: int
    default: 5
  pg_query_timeout:
    description: Statement timeout in seconds, for each query.
    type: float
    default: 120
"""

    JOB_STORE = r"""
options:
  job_dsn:
    description:
      - libpq connection string of the PostgreSQL that holds the job store.
      - Default, the schema O(job_schema) in database C(moray) on the primary of
        C(STORAGE_MORAY_SHARD) (found in ZooKeeper), so the job survives the controller and
        follows a manatee failover. If not set, E(MANTA_EVACUATE_DSN) is used. Never shown.
    type: str
  job_schema:
    description: PostgreSQL schema of the job store.
    type: str
    default: manta_evacuate
"""

    THROTTLE = r"""
options:
  throttle:
    description:
      - The job's throttles; V(0) means unlimited. V(copy_concurrency) concurrent copies per
        destination node; V(max_bytes_per_sec) bytes per second per storage node, read (sources)
        and written (destinations); V(metadata_rows_per_sec) metadata updates per second per shard.
      - M(manta.ops.evacuate_job) sets them on the job (keys not given are left as they are); in
        check mode, before the job exists, M(manta.ops.evacuate_plan) estimates with them.
    type: dict
    default: {}
"""
