# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Connections to the PostgreSQL primary of a Moray shard.

One concept: turn "shard X" into a live, bounded connection to the primary of
that shard's ``moray`` database, or into one error that says what was tried.

Where the connection details come from, first match wins:

1. the ``dsn`` option (a libpq connection string or ``postgresql://`` URL);
2. the environment: ``MANTA_PG_DSN_<SHARD>`` where ``<SHARD>`` is the shard
   name upper-cased with every non-alphanumeric character replaced by ``_``
   (``2.moray.us-east.joyent.us`` -> ``MANTA_PG_DSN_2_MORAY_US_EAST_JOYENT_US``),
   then ``MANTA_PG_DSN_<short>`` (``MANTA_PG_DSN_2``);
3. ZooKeeper (``zk_servers`` / ``MANTA_ZK_SERVERS``): the primary's ``pgUrl``
   in manatee's ``/manatee/<shard>/state`` gives host and port, and
   ``pg_user``/``pg_database`` (default ``moray``/``moray``, as Moray and the
   reshard service connect) the rest.

Every connection gets a connect timeout and a statement timeout; passwords
never appear in messages (``redacted()``). A connection to a standby is
refused: rows are only ever counted and deleted on the primary.
"""
from __future__ import annotations

import os
import re
import traceback

from ansible.module_utils.basic import missing_required_lib

PSYCOPG2_IMP_ERR = None
try:
    import psycopg2
    import psycopg2.errors
    import psycopg2.extensions
    from psycopg2 import sql
    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - exercised only without psycopg2
    PSYCOPG2_IMP_ERR = traceback.format_exc()
    HAS_PSYCOPG2 = False
    psycopg2 = None
    sql = None

ENV_DSN_PREFIX = "MANTA_PG_DSN_"
ENV_PASSWORD = "MANTA_PG_PASSWORD"
DEFAULT_USER = "moray"
DEFAULT_DATABASE = "moray"
DEFAULT_CONNECT_TIMEOUT = 10
DEFAULT_STATEMENT_TIMEOUT = 600.0
APPLICATION_NAME = "manta.ops moray_vnode_rows"


def require_psycopg2(module):
    """fail_json (the module's) when psycopg2 is missing, with the import traceback."""
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMP_ERR)


class MorayPgError(Exception):
    """The shard's primary could not be found, reached or used. Nothing was changed."""


def pg_argument_spec():
    """Connection options shared by moray_vnode_rows and moray_vnode_rows_info."""
    from ansible.module_utils.basic import env_fallback
    from ansible_collections.manta.ops.plugins.module_utils.zk import zk_argument_spec
    spec = dict(
        shard=dict(type="str", required=True),
        dsn=dict(type="str", no_log=True),
        pg_user=dict(type="str", default=DEFAULT_USER),
        pg_password=dict(type="str", no_log=True, fallback=(env_fallback, [ENV_PASSWORD])),
        pg_database=dict(type="str", default=DEFAULT_DATABASE),
        connect_timeout=dict(type="int", default=DEFAULT_CONNECT_TIMEOUT),
        statement_timeout=dict(type="float", default=DEFAULT_STATEMENT_TIMEOUT),
    )
    spec.update(zk_argument_spec())
    return spec


def env_names(shard):
    """The environment variables that may hold ``shard``'s DSN, most specific first."""
    full = ENV_DSN_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", shard).upper()
    short = ENV_DSN_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", shard.split(".", 1)[0]).upper()
    return [full] if short == full else [full, short]


def redacted(params):
    """``user@host:port/dbname``, never the password, for messages.

    (Deliberately not in libpq's own syntax: a DSN option marked no_log would
    otherwise be masked wherever its redacted form appears.)"""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user") or "?"
    db = params.get("dbname") or "?"
    return f"{user}@{host}:{port}/{db}"


class Target:
    """Where a shard's primary is: libpq keyword parameters plus where they came from."""

    def __init__(self, shard, params, source):
        self.shard = shard
        self.params = dict(params)
        self.source = source

    @property
    def display(self):
        return f"{redacted(self.params)} (from {self.source})"

    def __repr__(self):
        return f"Target({self.shard!r}, {self.display!r})"


def _parse_dsn(text, shard, source):
    if not HAS_PSYCOPG2:
        raise MorayPgError("psycopg2 is required to connect to PostgreSQL")
    try:
        return psycopg2.extensions.parse_dsn(text)
    except psycopg2.ProgrammingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise MorayPgError(
            f"the DSN for shard {shard} (from {source}) is not a valid libpq connection string "
            f"({first}); expected e.g. \"host=10.0.0.5 port=5432 dbname=moray user=moray\" "
            "(the value is not shown: it may contain a password)") from None


def resolve(shard, dsn=None, user=DEFAULT_USER, database=DEFAULT_DATABASE, password=None,
            zk_servers=None, zk_timeout=10.0, env=None, what="shard"):
    """A :class:`Target` for ``shard``'s primary (see the module docstring for the order)."""
    env = os.environ if env is None else env
    if not isinstance(shard, str) or not shard.strip():
        raise MorayPgError(f"{what} name {shard!r} is empty; give a shard name like "
                           "\"2.moray.us-east.joyent.us\"")
    if dsn:
        params = _parse_dsn(dsn, shard, "the dsn option")
        source = "the dsn option"
    else:
        params = None
        for name in env_names(shard):
            if env.get(name):
                params = _parse_dsn(env[name], shard, f"${name}")
                source = f"${name}"
                break
        if params is None:
            if not zk_servers:
                raise MorayPgError(
                    f"unknown {what} {shard}: no connection details for its primary. Give the dsn "
                    f"option, set {' or '.join('$' + n for n in env_names(shard))}, or give "
                    "zk_servers (or $MANTA_ZK_SERVERS) to find the primary in manatee's "
                    f"/manatee/{shard}/state")
            params, source = _from_zookeeper(shard, zk_servers, zk_timeout, what)
            params.setdefault("user", user)
            params.setdefault("dbname", database)
    params.setdefault("dbname", database)
    params.setdefault("user", user)
    if password and not params.get("password"):
        params["password"] = password
    return Target(shard, params, source)


def _from_zookeeper(shard, zk_servers, zk_timeout, what):
    from ansible_collections.manta.ops.plugins.module_utils import manatee_state
    from ansible_collections.manta.ops.plugins.module_utils.manatee_pg import PgError, parse_pg_url
    from ansible_collections.manta.ops.plugins.module_utils.zk import Zk, ZkError
    try:
        with Zk(zk_servers, timeout=zk_timeout) as zk:
            state = manatee_state.load(zk, shard)[0]
    except manatee_state.StateMissing:
        raise MorayPgError(f"unknown {what} {shard}: ZooKeeper {zk_servers} has no "
                           f"/manatee/{shard}/state; check the shard name (e.g. "
                           "\"2.moray.us-east.joyent.us\") or give the dsn option") from None
    except (ZkError, manatee_state.ManateeError) as exc:
        raise MorayPgError(f"cannot find the primary of {what} {shard} in ZooKeeper: {exc}") from None
    primary = (state or {}).get("primary") or {}
    url = primary.get("pgUrl")
    if not url:
        raise MorayPgError(f"{what} {shard}: manatee's state in ZooKeeper names no primary pgUrl")
    try:
        t = parse_pg_url(url)
    except PgError as exc:
        raise MorayPgError(f"{what} {shard}: {exc}") from None
    return {"host": t["host"], "port": str(t["port"])}, f"ZooKeeper /manatee/{shard}/state"


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def connect(target, connect_timeout=DEFAULT_CONNECT_TIMEOUT,
            statement_timeout=DEFAULT_STATEMENT_TIMEOUT, autocommit=True, what="primary of shard",
            application_name=APPLICATION_NAME):
    """An open psycopg2 connection with both timeouts set. Raises MorayPgError."""
    if not HAS_PSYCOPG2:
        raise MorayPgError("psycopg2 is required to connect to PostgreSQL")
    params = dict(target.params)
    params["connect_timeout"] = str(max(1, int(connect_timeout)))
    params.setdefault("application_name", application_name)
    ms = max(1, int(float(statement_timeout) * 1000)) if statement_timeout else 0
    opts = params.get("options", "")
    params["options"] = (opts + f" -c statement_timeout={ms}").strip()
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.Error as exc:
        raise MorayPgError(
            f"cannot connect to the {what} {target.shard} at {target.display} within "
            f"connect_timeout={int(connect_timeout)}s: {_first_line(exc)}") from None
    conn.autocommit = autocommit
    return conn


def identity(conn):
    """What the connection reached: server, database, system identifier, role in replication."""
    cur = conn.cursor()
    cur.execute(sql.SQL("SELECT current_database(), coalesce(host(inet_server_addr()), 'local'), "
                        "coalesce(inet_server_port(), 0), pg_is_in_recovery(), "
                        "(SELECT system_identifier::text FROM pg_control_system()), "
                        "current_setting('server_version_num')::int"))
    db, host, port, recovery, sysid, version = cur.fetchone()
    return {"database": db, "server": f"{host}:{port}", "in_recovery": bool(recovery),
            "system_identifier": sysid, "server_version_num": version}


def require_primary(conn, target):
    """The identity of the connection, after checking it is not a standby."""
    ident = identity(conn)
    if ident["in_recovery"]:
        raise MorayPgError(
            f"{target.display} is a standby (in recovery), not the primary of shard "
            f"{target.shard}: rows are counted and deleted on the primary only; point the DSN "
            "at the primary (manatee-adm show names it)")
    return ident


class step:
    """``with step("counting rows on shard X"):`` turns a PostgreSQL error into a MorayPgError
    that says what was being done (and, for a statement timeout, what to change)."""

    def __init__(self, what, statement_timeout=None):
        self.what = what
        self.statement_timeout = statement_timeout

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not HAS_PSYCOPG2 or not isinstance(exc, psycopg2.Error):
            return False
        if isinstance(exc, psycopg2.errors.QueryCanceled):
            raise MorayPgError(f"{self.what}: the statement timeout ({self.statement_timeout}s) was hit; "
                               "raise statement_timeout (or run when the shard is less busy)") from None
        raise MorayPgError(f"{self.what}: {_first_line(exc)}") from None


def close_quietly(conn):
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # pragma: no cover - best effort
        pass
