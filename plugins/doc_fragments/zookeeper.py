# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations


class ModuleDocFragment:
    """Shared ZooKeeper connection options (module_utils.zk.zk_argument_spec)."""

    DOCUMENTATION = r"""
options:
  zk_servers:
    description:
      - ZooKeeper connect string, C(host:port) entries separated by commas, for example
        V(10.0.0.1:2181,10.0.0.2:2181,10.0.0.3:2181).
      - Give every server of the ensemble so that one server being down does not stop the task.
      - If not set, the value of the E(MANTA_ZK_SERVERS) environment variable is used (an AWX
        credential can inject it). One of the two is required.
    type: str
  zk_timeout:
    description:
      - Seconds to wait for the ZooKeeper connection to be established, and for each
        ZooKeeper request to be answered.
      - An unreachable ensemble makes the task fail after this long, naming the servers.
    type: float
    default: 10
requirements:
  - kazoo >= 2.8 (Python library, on the host that runs the module)
"""

    # extends_documentation_fragment: manta.ops.zookeeper.manatee_postgres
    # (module_utils.manatee_pg.pg_argument_spec): how manatee peers' PostgreSQL is reached.
    MANATEE_POSTGRES = r"""
options:
  pg_user:
    description:
      - PostgreSQL user for connecting to the peers. The default is the user in each peer's
        C(pgUrl) (C(postgres) in Manta).
      - If not set, the value of the E(MANTA_PG_USER) environment variable is used.
    type: str
  pg_password:
    description:
      - PostgreSQL password, if the peers require one (manatee's C(pg_hba.conf) trusts the
        admin network, so usually none).
      - If not set, the value of the E(MANTA_PG_PASSWORD) environment variable is used.
    type: str
  pg_connect_timeout:
    description: Seconds to wait for each PostgreSQL connection (libpq counts values below 2 as 2).
    type: int
    default: 5
  pg_query_timeout:
    description: Statement timeout, in seconds, for each PostgreSQL query.
    type: float
    default: 10
requirements:
  - psycopg2 (Python library, on the host that runs the module)
"""
