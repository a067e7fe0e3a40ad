# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Shared by the moray_vnode_rows benchmarks and integration tests.

* :class:`ScratchPG` - a throwaway PostgreSQL 15 primary (and, optionally, a
  synchronous standby, as a manatee primary has) under /var/tmp, with the
  moray database built from ``manta_lab.schema`` (the lab's one DDL), bound to
  127.0.0.1, started as user ``postgres`` and stopped by pid.
* :func:`seed` - realistic Manta rows (reference/evacuate.md §1.2-1.3) whose
  ``_vnode`` is the ring vnode of the row's dirname, restricted to the vnodes
  one pnode owns, plus the ``manta_directory_counts`` rows libmanta's trigger
  would have written; loaded with COPY.
* :func:`copy_database` - an identical file-level copy of a database
  (``CREATE DATABASE ... TEMPLATE``) for baseline-vs-candidate runs.
"""
import io
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import psycopg2
from psycopg2 import sql

from manta_lab import postgres as labpg
from manta_lab import schema as labschema

HOST = "127.0.0.1"
MANTA_COLUMNS = ["_key", "_value", "_etag", "_mtime", "_vnode",
                 "dirname", "name", "owner", "objectid", "type"]


class ScratchPG:
    """A primary (plus an optional synchronous standby) that we start and stop ourselves.

    Ports are picked at random in 40000-40999 unless given; a port someone else
    took between the pick and the bind is detected (our postmaster exits, or the
    server answering is not ours: ``data_directory`` differs) and another port
    is tried, so a test never talks to somebody else's server.
    """

    def __init__(self, port=None, standby_port=None, standby=False, root=None, keep=False):
        self.port = port
        self.fixed_ports = port is not None
        self.standby_port = standby_port
        self.want_standby = bool(standby or standby_port)
        self.keep = keep
        self.root = Path(root or tempfile.mkdtemp(prefix="moray-scratch-", dir="/var/tmp"))
        os.chmod(self.root, 0o755)
        self.procs = {}

    # ---- lifecycle ---------------------------------------------------------
    def _conf(self, role, port, sync_name=None, upstream=None, app_name=None):
        text = labpg.render_conf(port, None, role, sync_name=sync_name, upstream_port=upstream,
                                 app_name=app_name,
                                 overrides={"common": {"max_connections": 200}})
        return text

    def _ours(self, port, data):
        try:
            rows = labpg.query(port, "SHOW data_directory")
        except Exception:
            return False
        return bool(rows) and os.path.realpath(rows[0]["data_directory"]) == os.path.realpath(str(data))

    def _start(self, name, data, port, timeout=60):
        """Start postgres on ``data``; True once it answers on ``port``, False if the port was taken."""
        logpath = self.root / f"{name}.log"
        log = open(logpath, "ab")
        proc = subprocess.Popen([labpg.binary("postgres"), "-D", str(data)], stdout=log,
                                stderr=subprocess.STDOUT, user=labpg.run_user(), cwd="/",
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.procs.pop(name, None)
                text = logpath.read_text(errors="replace")
                if "could not create any TCP/IP sockets" in text or "Address already in use" in text:
                    return False
                raise RuntimeError(f"scratch postgres {name} exited {proc.returncode}: {text[-800:]}")
            if self._ours(port, data):
                return True
            time.sleep(0.2)
        raise RuntimeError(f"scratch postgres {name} on {port} did not come up; see {logpath}")

    def _bring_up(self, name, data, conf_for_port):
        for _ in range(8):
            port = getattr(self, "port" if name == "primary" else "standby_port") if self.fixed_ports else None
            port = port or free_port(exclude={self.port, self.standby_port})
            labpg.configure(data, conf_for_port(port), standby=(name == "standby"))
            if name == "standby":
                labpg.chown(data, recursive=True)
            if self._start(name, data, port):
                return port
            if self.fixed_ports:
                break
        raise RuntimeError(f"scratch postgres {name}: no free port (tried 40000-40999); see {self.root}")

    def start(self):
        try:
            pdata = self.root / "primary"
            log = self.root / "setup.log"
            labpg.initdb(pdata, log)
            labpg.setup_moray(pdata, log)
            sync_name = "scratch-standby" if self.want_standby else None
            self.port = self._bring_up("primary", pdata,
                                       lambda p: self._conf("primary", p, sync_name=sync_name))
            if self.want_standby:
                sdata = self.root / "standby"
                labpg.basebackup(sdata, self.port, log)
                self.standby_port = self._bring_up(
                    "standby", sdata,
                    lambda p: self._conf("standby", p, upstream=self.port, app_name=sync_name))
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for name in ("standby", "primary"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)   # fast shutdown, this pid only
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGQUIT)
                    proc.wait(30)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- connections -------------------------------------------------------
    def dsn(self, dbname="moray", user="moray"):
        return f"host={HOST} port={self.port} dbname={dbname} user={user}"

    def connect(self, dbname="moray", autocommit=True):
        conn = psycopg2.connect(self.dsn(dbname))
        conn.autocommit = autocommit
        return conn


# ---- realistic rows -----------------------------------------------------------

def _etag(value):
    return "%08X" % (zlib.crc32(value.encode()) & 0xFFFFFFFF)


def _object_value(key, dirname, name, owner, vnode, rnd, now_ms):
    oid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
    size = int(rnd.paretovariate(1.2) * 4096)
    md5 = "%032x" % rnd.getrandbits(128)
    value = {
        "key": key, "dirname": dirname, "name": name, "owner": owner, "creator": owner,
        "objectId": oid, "etag": oid, "type": "object", "contentLength": size,
        "contentMD5": md5, "contentType": "application/octet-stream",
        "mtime": now_ms, "headers": {"m-lab": "seed"}, "roles": [], "vnode": vnode,
        "sharks": [{"datacenter": "lab-dc1", "manta_storage_id": f"{1 + rnd.randrange(4)}.stor.lab.manta.test"},
                   {"datacenter": "lab-dc2", "manta_storage_id": f"{1 + rnd.randrange(4)}.stor.lab.manta.test"}],
    }
    return json.dumps(value, separators=(",", ":")), oid


def _dir_value(key, dirname, name, owner, vnode, now_ms):
    value = {"key": key, "dirname": dirname, "name": name, "owner": owner, "creator": owner,
             "type": "directory", "mtime": now_ms, "headers": {}, "roles": [], "vnode": vnode}
    return json.dumps(value, separators=(",", ":"))


def generate(topology, pnode, rows, seed=1, owners=16, mean_dir=40):
    """Yield (manta_row_tuple, counts) batches: rows routed by dirname to ``pnode``'s vnodes.

    Directory sizes follow a Pareto law (a few huge directories, many small
    ones), so vnodes carry very different row counts, as in production.
    Returns, at the end, the directory-count rows as a dict
    {dirname: (vnode, entries)} through the last yielded item.
    """
    rnd = random.Random(seed)
    now_ms = 1_700_000_000_000
    owned = set(topology.vnodes_of(pnode))
    owner_ids = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(owners)]
    counts = {}
    made = 0
    serial = 0
    while made < rows:
        owner = rnd.choice(owner_ids)
        serial += 1
        dirname = f"/{owner}/stor/d{serial:07d}"
        v = topology.vnode_of(dirname)
        if v not in owned:
            continue
        size = min(int(rnd.paretovariate(1.1) * mean_dir / 10) + 1, rows - made)
        out = []
        for i in range(size):
            name = f"f{i:06d}.dat"
            key = f"{dirname}/{name}"
            value, oid = _object_value(key, dirname, name, owner, v, rnd, now_ms + made)
            out.append((key, value, _etag(value), now_ms + made, v, dirname, name, owner, oid, "object"))
            made += 1
        counts[dirname] = (v, size)
        yield out
    yield counts


def _copy_text(rows):
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join(_copy_field(x) for x in r))
        buf.write("\n")
    buf.seek(0)
    return buf


def _copy_field(x):
    if x is None:
        return r"\N"
    s = str(x)
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def seed(conn, topology, pnode, rows, seed=1, bulk=True, analyze=True):
    """Load ``rows`` manta rows (and their directory counts) into the connected moray db.

    ``bulk`` drops the secondary indexes during the load and rebuilds them
    (the same definitions), which is much faster for 10^6 rows. Triggers are
    bypassed (session_replication_role=replica) and the counts written from
    what was generated, exactly what libmanta's trigger would have produced.
    """
    conn.autocommit = True
    cur = conn.cursor()
    idx = []
    if bulk:
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname='public' "
                    "AND tablename IN ('manta','manta_directory_counts') AND indexname NOT LIKE '%%_pkey'")
        idx = cur.fetchall()
        for name, _ in idx:
            cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    cur.execute("SET session_replication_role = replica")
    counts = None
    cols = sql.SQL(", ").join(map(sql.Identifier, MANTA_COLUMNS)).as_string(conn)
    pending = []
    for item in generate(topology, pnode, rows, seed=seed):
        if isinstance(item, dict):
            counts = item
            break
        pending.extend(item)
        if len(pending) >= 20000:
            cur.copy_expert(f"COPY manta ({cols}) FROM STDIN", _copy_text(pending))
            pending = []
    if pending:
        cur.copy_expert(f"COPY manta ({cols}) FROM STDIN", _copy_text(pending))
    crow = [(d, "{}", "_trigger", 1_700_000_000_000, v, n) for d, (v, n) in counts.items()]
    cur.copy_expert("COPY manta_directory_counts (_key, _value, _etag, _mtime, _vnode, entries) FROM STDIN",
                    _copy_text(crow))
    cur.execute("RESET session_replication_role")
    for _, ddl in idx:
        cur.execute(ddl)
    if analyze:
        cur.execute("VACUUM (ANALYZE) manta")
        cur.execute("VACUUM (ANALYZE) manta_directory_counts")
    return {"manta": rows, "manta_directory_counts": len(crow)}


def copy_database(admin_conn, src, dst, checkpoint=True):
    """dst := an identical copy of src (no session may be connected to src).

    ``checkpoint`` flushes the copy's dirty pages too, so that a timed run that
    follows starts from a clean buffer pool and checkpoint cycle (benchmarks)."""
    cur = admin_conn.cursor()
    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dst)))
    # FILE_COPY: a file-level copy bracketed by checkpoints, not 1 GB of WAL
    cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER moray STRATEGY FILE_COPY").format(
        sql.Identifier(dst), sql.Identifier(src)))
    if checkpoint:
        cur.execute("CHECKPOINT")


def vnode_rows(conn, table="manta"):
    cur = conn.cursor()
    cur.execute(sql.SQL("SELECT _vnode, count(*) FROM {} WHERE _vnode IS NOT NULL GROUP BY 1").format(
        sql.Identifier(table)))
    return dict(cur.fetchall())


def free_port(lo=40000, hi=40999, exclude=()):
    import socket
    for _ in range(200):
        p = random.randint(lo, hi)
        if p in exclude:
            continue
        s = socket.socket()
        try:
            s.bind((HOST, p))
            return p
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port in 40000-40999")


# ---- a lab shard as the benchmark's database server ------------------------------------------

class LabShard:
    """The primary of a lab shard (real manatee peers: sync + async replication).

    Brings up a private lab (``lab up`` in a fresh home under /var/tmp, on a
    free base port) unless ``home`` names a running one. Benchmark databases
    are created next to the shard's ``moray`` database on the same primary
    (moray's own database has live sessions, so it cannot be a template), with
    the same DDL (manta_lab.schema), and seeded with rows routed by the ring
    the lab's electric-morays serve, restricted to this shard's vnodes.
    """

    def __init__(self, home=None, shard_index=0, keep=False):
        self.home = home
        self.own = home is None
        self.keep = keep
        self.shard_index = shard_index

    def _lab(self, *argv, timeout=900):
        import sys
        proc = subprocess.run([sys.executable, "-m", "manta_lab.cli", "--home", self.home, *argv],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"lab {' '.join(argv)} failed: {proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def start(self):
        from manta_lab import config
        if self.own:
            self.home = tempfile.mkdtemp(prefix="moray-bench-lab-", dir="/var/tmp")
            os.chmod(self.home, 0o755)
            base = None
            for cand in (12000, 15000, 18000, 21000, 27000):
                probe = [cand + o for o in (0, 10, 11, 12, 101, 102, 151, 152, 301, 302, 303, 304)]
                probe += list(range(cand + 1000, cand + 1040))
                if all(config.port_free(p) for p in probe):
                    base = cand
                    break
            if base is None:
                raise RuntimeError("no free lab base port block")
            self._lab("up", "--base-port", str(base))
        st = json.loads(self._lab("status", "--json"))
        self.shard = sorted(st["shards"])[self.shard_index]
        prim = [p for p in st["shards"][self.shard]["peers"] if p["role"] == "primary"][0]
        self.port = int(prim["pg_port"])
        self.peers = st["shards"][self.shard]["peers"]
        self.ring = st["electric_moray"][0]["ring"]
        self.pnode = f"tcp://{self.shard}:2020"
        return self

    def stop(self):
        if self.own and not self.keep:
            try:
                self._lab("down")
            finally:
                shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def dsn(self, dbname="moray", user="moray"):
        return f"host={HOST} port={self.port} dbname={dbname} user={user}"

    def connect(self, dbname="moray", autocommit=True, user="postgres"):
        conn = psycopg2.connect(self.dsn(dbname, user))
        conn.autocommit = autocommit
        return conn

    def topology(self):
        from ansible_collections.manta.ops.plugins.module_utils.fash import read_topology
        return read_topology(self.ring, snapshot=True)

    def make_moray_db(self, name):
        admin = self.connect("postgres")
        cur = admin.cursor()
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        cur.execute(sql.SQL("CREATE DATABASE {} OWNER moray").format(sql.Identifier(name)))
        admin.close()
        conn = self.connect(name, user="moray")
        cur = conn.cursor()
        for stmt in labschema.statements():
            cur.execute(stmt)
        conn.close()


def scratch_env(port=None, standby=True):
    """A ScratchPG with the same helpers as LabShard (topology, pnode, make_moray_db)."""
    from ansible_collections.manta.ops.plugins.module_utils.fash.topology import Topology
    pg = ScratchPG(port, standby=standby).start()
    topo = Topology.create(["tcp://1.moray.lab.manta.test:2020", "tcp://2.moray.lab.manta.test:2020"], 4096)
    pg.shard = "1.moray.lab.manta.test"
    pg.pnode = "tcp://1.moray.lab.manta.test:2020"
    pg.topology = lambda: topo

    def make_moray_db(name):
        admin = pg.connect("postgres")
        copy_database(admin, "moray", name, checkpoint=False)
        admin.close()
    pg.make_moray_db = make_moray_db
    return pg


def bench_env(args):
    """The benchmark's server: a lab shard (default), a running lab (--lab-home), or --scratch."""
    if getattr(args, "scratch", False):
        return scratch_env()
    return LabShard(home=getattr(args, "lab_home", None)).start()


def seeded(env, name, rows, seed_no=1):
    """Database ``name`` on env holding ``rows`` realistic rows of env's shard (reused if present)."""
    admin = env.connect("postgres")
    cur = admin.cursor()
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    exists = cur.fetchone() is not None
    admin.close()
    if exists:
        conn = env.connect(name)
        c = conn.cursor()
        c.execute("SELECT count(*) FROM manta")
        n = c.fetchone()[0]
        conn.close()
        if n == rows:
            return {"manta": n, "reused": True}
    env.make_moray_db(name)
    conn = env.connect(name)
    out = seed(conn, env.topology(), env.pnode, rows, seed=seed_no)
    conn.close()
    return out


def drop_databases(env, *names):
    """Drop the benchmark's copies (disk space: each is a full copy of the seeded database)."""
    admin = env.connect("postgres")
    cur = admin.cursor()
    for name in names:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    admin.close()


def wait_replayed(env, timeout=300):
    """Wait until every standby has replayed the primary's WAL up to now, so that the replay of
    one side's delete (on the same CPUs) never runs under the other side's timing."""
    conn = env.connect("postgres")
    cur = conn.cursor()
    cur.execute("SELECT pg_current_wal_lsn()")
    target = cur.fetchone()[0]
    deadline = time.monotonic() + timeout
    waited = 0.0
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        cur.execute("SELECT count(*) FILTER (WHERE replay_lsn IS NULL OR replay_lsn < %s), count(*) "
                    "FROM pg_stat_replication", (target,))
        behind, total = cur.fetchone()
        if behind == 0:
            waited = time.monotonic() - t0
            break
        time.sleep(0.2)
    conn.close()
    return round(waited, 2)


def half_the_vnodes(env):
    """Every second vnode of the shard (what the reshard service moved)."""
    return env.topology().vnodes_of(env.pnode)[0::2]


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2.0


def save_result(name, data):
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def machine():
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "loadavg": load}
