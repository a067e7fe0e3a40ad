# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""What every controller-side evacuation module shares: the vocabulary of
object fates, the connection options, and how the job store and the shard
primaries are reached.

Vocabulary (docs/evacuate.md "Fates"):

* ``status`` of one object copy to move: ``pending`` (found by the scan, not
  yet placed), ``assigned`` (placed on a destination in round N), ``copied``
  (the destination holds a verified, durable copy), ``done`` (the metadata
  now names the destination), ``skipped`` (retryable, with a reason) and
  ``error`` (needs an operator, with a reason).
* ``reason``: see :data:`SKIP_REASONS`, :data:`ERROR_REASONS`; transient
  conditions (:data:`TRANSIENT_REASONS`) put the object back to ``pending``
  and count towards the automatic pause.

Connections: the job store is the schema ``manta_evacuate`` in database
``moray`` on the primary of ``STORAGE_MORAY_SHARD`` (found in ZooKeeper like
moray finds it), unless ``job_dsn`` names another PostgreSQL. Index shards come
from SAPI ``INDEX_MORAY_SHARDS`` (or the ``shards`` option) and their primaries
from ``/manatee/<shard>/state``.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import time
import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.manta.ops.plugins.module_utils import evacuate_args

PSYCOPG2_IMP_ERR = None
try:
    import psycopg2
    import psycopg2.errors
    import psycopg2.extras
    from psycopg2 import sql  # noqa: F401  pylint: disable=unused-import
    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - exercised by the sanity import test
    PSYCOPG2_IMP_ERR = traceback.format_exc()
    HAS_PSYCOPG2 = False
    psycopg2 = None
    sql = None

STATUSES = ("pending", "assigned", "copied", "done", "skipped", "error")
OPEN_STATUSES = ("pending", "assigned", "copied")

# Skipped: nothing was changed for this copy; `retry_skipped` tries again.
SKIP_REASONS = {
    "mpu_part": "an MPU part record (/<owner>/uploads/...): parts are not objects to keep",
    "zero_byte": "a zero-byte object: there is no file to move",
    "md5_mismatch": "every source's bytes failed the MD5 check against contentMD5",
    "size_mismatch": "every source returned a different number of bytes than contentLength",
    "source_not_found": "every source answered 404 (the file is missing)",
    "source_http_error": "every source answered an HTTP error other than 404",
    "source_unreachable": "no source could be reached after the retries",
    "object_already_on_dest_shark": "every eligible destination already holds a copy",
    "object_already_in_datacenter": "every eligible destination is in a datacenter that already "
                                    "holds a copy (and is not the evacuated node's own)",
    "destination_insufficient_space": "no eligible destination has room under max_fill_percent",
    "no_destination_in_datacenter": "same_datacenter is set and the evacuated node's datacenter "
                                    "has no eligible destination",
    "object_changed": "a client overwrote the object during the move (its objectId or MD5 "
                      "changed and the new version no longer names the evacuated node)",
    "object_deleted": "a client deleted the object during the move",
    "too_many_attempts": "transient failures on every attempt, up to max_attempts",
    "destination_unavailable": "the chosen destination stopped answering",
}
# Errors: an operator must look (the object's metadata is not what Manta writes).
ERROR_REASONS = {
    "bad_manta_object": "the _value is not JSON, or lacks key/owner/objectId/sharks",
    "duplicate_shark": "the evacuated node appears twice in sharks",
    "dest_already_in_sharks": "the destination appeared in sharks before the swap",
    "metadata_update_failed": "the shard refused the update after the retries",
}
# Transient: the object goes back to pending and counts towards the auto-pause.
TRANSIENT_REASONS = ("source_unreachable", "source_timeout", "source_http_5xx",
                     "destination_io_error", "destination_unavailable", "not_attempted",
                     "destination_failed")

DEFAULT_SCHEMA = evacuate_args.DEFAULT_SCHEMA
MPU_RE = re.compile(r"^/[^/]+/uploads/")
SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
JOB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class EvacError(Exception):
    """Bad input or an unreachable dependency; the message says what is valid."""


def require_psycopg2(module):
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMP_ERR)


@contextlib.contextmanager
def module_errors(module, ctx, result, name, expected=()):
    """Around the body of an evacuation module's ``main()``: an :class:`EvacError` (or one of
    ``expected``) fails the task with its message, anything else with its type (``name``
    failed: ...), both with the partial ``result``; the connections of ``ctx`` are closed
    either way (also when the body exits the module itself)."""
    try:
        yield
    except (EvacError,) + tuple(expected) as exc:
        ctx.close()
        module.fail_json(msg=str(exc), **result)
    except Exception as exc:  # noqa: BLE001 - psycopg2 and friends
        ctx.close()
        module.fail_json(msg=f"{name} failed: {type(exc).__name__}: {exc}", **result)
    finally:
        ctx.close()


def connection_argument_spec():
    """Options that say where the job store and the shards are (the modules build
    their specs with evacuate_args.argument_spec; this stays for other callers)."""
    return evacuate_args.argument_spec("connection", "job_store")


def check_job_name(job):
    if not isinstance(job, str) or not JOB_RE.match(job):
        raise EvacError(f"job {job!r} is not a valid job name: use 1-128 characters from "
                        "[A-Za-z0-9._:-], starting with a letter or digit")
    return job


def default_job_name(storage_ids):
    """``evacuate-3.stor.us-east.example.com`` for one node, otherwise
    ``evacuate-<n>-nodes-<hash>`` (stable for the same set of nodes)."""
    ids = sorted(set(storage_ids))
    if not ids:
        raise EvacError("no storage nodes to evacuate")
    if len(ids) == 1:
        name = "evacuate-" + ids[0]
        if JOB_RE.match(name):
            return name
    h = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:10]
    return f"evacuate-{len(ids)}-nodes-{h}"


def is_mpu_part(key):
    return bool(key) and "/uploads/" in key and bool(MPU_RE.match(key))


def now_ms():
    return int(time.time() * 1000)


# ---- connections --------------------------------------------------------------------------

def pg_connect(pg_url=None, dsn=None, user=None, password=None, dbname="moray", connect_timeout=5,
               query_timeout=120.0, autocommit=False, application_name="manta.ops evacuate"):
    """Connect to ``dsn`` (libpq string) or to a manatee peer's ``pgUrl``
    (``tcp://postgres@ip:port/postgres``, database ``dbname``)."""
    if not HAS_PSYCOPG2:
        raise EvacError(missing_required_lib("psycopg2"))
    opts = f"-c statement_timeout={max(1, int(float(query_timeout) * 1000))}"
    try:
        if dsn:
            conn = psycopg2.connect(dsn, connect_timeout=max(2, int(connect_timeout)),
                                    application_name=application_name, options=opts)
        else:
            from ansible_collections.manta.ops.plugins.module_utils.manatee_pg import parse_pg_url
            t = parse_pg_url(pg_url)
            kw = dict(host=t["host"], port=t["port"], user=user or t["user"], dbname=dbname,
                      connect_timeout=max(2, int(connect_timeout)),
                      application_name=application_name, options=opts)
            if password:
                kw["password"] = password
            conn = psycopg2.connect(**kw)
    except psycopg2.Error as exc:
        where = "the job store DSN" if dsn else pg_url
        raise EvacError(f"cannot connect to PostgreSQL at {where}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from None
    conn.autocommit = autocommit
    return conn


class Context:
    """Lazily opened connections for one module run (closed by ``close``)."""

    def __init__(self, params):
        self.p = params
        self._zk = None
        self._sapi_md = None
        self._conns = {}

    # -- ZooKeeper / SAPI --
    def zk(self):
        if self._zk is None:
            from ansible_collections.manta.ops.plugins.module_utils.zk import Zk, ZkError
            if not self.p.get("zk_servers"):
                raise EvacError("zk_servers is required to find the shard primaries: set the "
                                "zk_servers option or MANTA_ZK_SERVERS (or give job_dsn and shard_dsns)")
            try:
                self._zk = Zk(self.p["zk_servers"], self.p.get("zk_timeout") or 10.0)
            except ZkError as exc:
                raise EvacError(str(exc)) from None
        return self._zk

    def sapi_metadata(self):
        if self._sapi_md is None:
            url = self.p.get("sapi_url")
            if not url:
                raise EvacError("sapi_url is required to read INDEX_MORAY_SHARDS and "
                                "STORAGE_MORAY_SHARD: set sapi_url or MANTA_SAPI_URL, or give "
                                "shards and storage_shard")
            from ansible_collections.manta.ops.plugins.module_utils.sapi import SapiClient
            from ansible_collections.manta.ops.plugins.module_utils.http_api import ApiError
            try:
                app = SapiClient(url, timeout=30, retries=3).find_application("manta")
            except (ApiError, LookupError, RuntimeError) as exc:
                raise EvacError(f"cannot read the SAPI manta application at {url}: {exc}") from None
            if app is None:
                raise EvacError(f"SAPI at {url} has no 'manta' application")
            self._sapi_md = app.get("metadata") or {}
        return self._sapi_md

    def index_shards(self, given=None):
        """[{host, read_only}] of the index shards (option, else SAPI)."""
        if given:
            return [{"host": s, "read_only": False} for s in given]
        md = self.sapi_metadata()
        shards = md.get("INDEX_MORAY_SHARDS")
        if not isinstance(shards, list) or not shards:
            raise EvacError(f"SAPI INDEX_MORAY_SHARDS is missing or empty (found {shards!r})")
        out = []
        for e in shards:
            if not isinstance(e, dict) or not e.get("host"):
                raise EvacError(f"SAPI INDEX_MORAY_SHARDS entry {e!r} has no host")
            out.append({"host": e["host"], "read_only": bool(e.get("readOnly"))})
        return out

    def storage_shard(self):
        if self.p.get("storage_shard"):
            return self.p["storage_shard"]
        s = self.sapi_metadata().get("STORAGE_MORAY_SHARD")
        if not s:
            raise EvacError("SAPI has no STORAGE_MORAY_SHARD; give storage_shard")
        return s

    def primary_url(self, shard):
        from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
        try:
            state, _stat = ms.load(self.zk(), shard)
        except ms.ManateeError as exc:
            raise EvacError(f"shard {shard}: {exc}") from None
        url = (state.get("primary") or {}).get("pgUrl")
        if not url:
            raise EvacError(f"shard {shard}: /manatee/{shard}/state names no primary pgUrl")
        return url

    # -- PostgreSQL --
    def shard_conn(self, shard, autocommit=False, fresh=False):
        """A connection to ``shard``'s primary, database moray."""
        key = ("shard", shard, autocommit)
        if not fresh and key in self._conns and not self._conns[key].closed:
            return self._conns[key]
        dsns = self.p.get("shard_dsns") or {}
        if shard in dsns:
            c = pg_connect(dsn=dsns[shard], connect_timeout=self.p["pg_connect_timeout"],
                           query_timeout=self.p["pg_query_timeout"], autocommit=autocommit)
        else:
            c = pg_connect(self.primary_url(shard), user=self.p.get("pg_user"),
                           password=self.p.get("pg_password"),
                           connect_timeout=self.p["pg_connect_timeout"],
                           query_timeout=self.p["pg_query_timeout"], autocommit=autocommit)
        if not fresh:
            self._conns[key] = c
        return c

    def new_job_conn(self):
        """A connection to the job store of its own (for a writer thread)."""
        if self.p.get("job_dsn"):
            return pg_connect(dsn=self.p["job_dsn"], connect_timeout=self.p["pg_connect_timeout"],
                              query_timeout=self.p["pg_query_timeout"])
        return self.shard_conn(self.storage_shard(), fresh=True)

    def job_conn(self):
        key = ("job",)
        if key in self._conns and not self._conns[key].closed:
            return self._conns[key]
        if self.p.get("job_dsn"):
            c = pg_connect(dsn=self.p["job_dsn"], connect_timeout=self.p["pg_connect_timeout"],
                           query_timeout=self.p["pg_query_timeout"])
        else:
            c = self.shard_conn(self.storage_shard(), fresh=True)
        self._conns[key] = c
        return c

    def job_store_location(self):
        if self.p.get("job_dsn"):
            return "job_dsn"
        return f"{self.storage_shard()} primary, database moray, schema {self.p.get('job_schema')}"

    def close(self):
        for c in self._conns.values():
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self._conns = {}
        if self._zk is not None:
            self._zk.close()
            self._zk = None


def check_schema_name(name):
    if not isinstance(name, str) or not SCHEMA_RE.match(name):
        raise EvacError(f"job_schema {name!r} must be a lower-case PostgreSQL identifier "
                        "([a-z_][a-z0-9_]*)")
    return name


def parse_duration(value):
    """Seconds from ``3600``, ``"90s"``, ``"30m"``, ``"8h"``, ``"1d"``; None/0/'' -> None."""
    if value in (None, "", 0, "0"):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise EvacError(f"max_duration must be >= 0 seconds, got {value}")
        return float(value)
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", str(value))
    if not m:
        raise EvacError(f"max_duration {value!r} is not a duration: use seconds (3600) or "
                        "a number with s, m, h or d (90m, 8h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
