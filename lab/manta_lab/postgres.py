"""PostgreSQL 15 for the lab's manatee peers: initdb, configuration, base
backups, and the replication queries manatee and the modules rely on.

Everything runs as the ``postgres`` user (when the lab runs as root) and binds
127.0.0.1 only. The configuration follows reference/manatee.md §4:

- ``postgresql.conf`` is regenerated on every (re)configuration (no manual
  edits survive), with ``wal_level = replica`` (the PG 10+ name of
  ``hot_standby``), ``hot_standby = on``, ``max_wal_senders``,
  ``wal_keep_size``;
- primary: no ``standby.signal``; ``synchronous_standby_names =
  '"<sync pgUrl>"'`` and ``synchronous_commit = remote_write``;
- standby (sync or async, identical): ``standby.signal`` and
  ``primary_conninfo = 'host=<upstream> port=<upstream port> user=postgres
  application_name=<own pgUrl> connect_timeout=60'``, ``synchronous_commit =
  off``;
- ``pg_hba.conf`` trusts 127.0.0.1 (and the zone's socket), replication too;
- SAPI metadata ``PG_CONFIG_OVERRIDES`` (``{"common": {...}, "15": {...}}``)
  is applied on top, as manatee's pg_overrides.json.
"""
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .config import HOST, LabError

PG_MAJOR = "15"
PG_BIN = Path(os.environ.get("MANTA_LAB_PG_BIN", f"/usr/lib/postgresql/{PG_MAJOR}/bin"))
PG_USER = "postgres"
SOCKET_PATH_MAX = 100   # sun_path is 108 bytes, including ".s.PGSQL.<port>"


def binary(name):
    p = PG_BIN / name
    if not p.exists():
        raise LabError("postgres", f"{p} not found; run scripts/setup.sh (postgresql-{PG_MAJOR})")
    return str(p)


def run_user():
    """The user postgres runs as: 'postgres' when we are root, else ourselves."""
    return PG_USER if os.geteuid() == 0 else None


def chown(path, recursive=False):
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(PG_USER)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    if recursive:
        for root, dirs, files in os.walk(path):
            for n in dirs + files:
                os.chown(os.path.join(root, n), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def _run(argv, log, component, timeout=300, input=None, cwd=None):
    with open(log, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  input=input, user=run_user(), cwd=cwd or "/")
        except subprocess.TimeoutExpired:
            raise LabError(component, f"{os.path.basename(argv[0])} timed out after {timeout}s",
                           log) from None
    if proc.returncode != 0:
        raise LabError(component, f"{os.path.basename(argv[0])} exited {proc.returncode}", log)


def prepare_dir(path):
    """An empty 0700 directory owned by postgres (data dirs)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    chown(path)
    return path


def initdb(data, log, component="postgres"):
    prepare_dir(data)
    _run([binary("initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust",
          "--encoding=UTF-8", "--locale=C"], log, component, timeout=120)


def single_user(data, db, statements, log, component="postgres"):
    """Run SQL statements in single-user mode (no listener at all)."""
    sql = "".join(s.strip().rstrip(";") + ";\n\n" for s in statements)
    argv = [binary("postgres"), "--single", "-D", str(data), "-j", db]
    with open(log, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
    proc = subprocess.run(argv, input=sql.encode(), capture_output=True, timeout=120,
                          user=run_user(), cwd="/")
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    with open(log, "a") as out:
        out.write(text)
    if proc.returncode != 0 or "ERROR:" in text or "FATAL:" in text:
        raise LabError(component, f"single-user SQL on {db} failed", log)


def setup_moray(data, log, storage=False, component="postgres"):
    """Create role and database moray and the moray schema in a stopped data dir."""
    from . import schema
    single_user(data, "postgres", [f"CREATE ROLE {schema.ROLE} LOGIN SUPERUSER",
                                   f"CREATE DATABASE {schema.DB} OWNER {schema.ROLE}"],
                log, component)
    single_user(data, schema.DB, [f"SET SESSION AUTHORIZATION {schema.ROLE}",
                                  *schema.statements(storage)], log, component)


def clone(src, dst):
    """Copy a stopped data dir (a cold backup: same system id and WAL)."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    os.chmod(dst, 0o700)


def basebackup(data, port, log, component="postgres", timeout=300):
    """pg_basebackup from 127.0.0.1:port into data (emptied first)."""
    data = Path(data)
    if data.exists():
        shutil.rmtree(data)
    prepare_dir(data)
    _run([binary("pg_basebackup"), "-D", str(data), "-h", HOST, "-p", str(port),
          "-U", PG_USER, "-X", "stream", "-c", "fast", "--no-password"],
         log, component, timeout=timeout)
    for leftover in ("standby.signal", "recovery.signal", "postmaster.pid", "postmaster.opts"):
        try:
            (data / leftover).unlink()
        except FileNotFoundError:
            pass


def _pidfile_pid(data):
    try:
        return int((Path(data) / "postmaster.pid").read_text().split("\n")[0])
    except (OSError, ValueError):
        return None


def _proc_state(pid):
    """('Z'|'R'|..., cmdline parts) of a pid, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0], cmd


def postmaster_of(data):
    """pid of a live postmaster running on this data dir (postmaster.pid), or None."""
    pid = _pidfile_pid(data)
    st = _proc_state(pid) if pid else None
    if st and st[0] != "Z" and st[1][:1] and st[1][0].endswith(b"postgres") \
            and str(data).encode() in st[1]:
        return pid
    return None


def kill_postmaster(data, sig=signal.SIGQUIT, timeout=10.0, reaped=True):
    """Stop a postmaster left running on this data dir (verified by its
    postmaster.pid and command line, never by name): sig, then SIGKILL; then
    wait until it is dead and, with ``reaped``, until its pid is gone, zombie
    included (PostgreSQL refuses to start while the pid in postmaster.pid
    exists, and an orphan's zombie waits for init). True if one was found."""
    pid = _pidfile_pid(data)
    if pid is None:
        return False
    found = postmaster_of(data) == pid
    if found:
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    killed = sig == signal.SIGKILL
    while time.monotonic() < deadline:
        st = _proc_state(pid)
        if st is None or (st[0] == "Z" and not reaped):
            return found
        if st[0] != "Z":
            if postmaster_of(data) != pid:
                return found        # the pid now belongs to something else
            if not killed and time.monotonic() > deadline - timeout / 2:
                os.kill(pid, signal.SIGKILL)
                killed = True
        time.sleep(0.05)
    return found


def has_data(data):
    """manatee's `setup` flag: postgresql.conf present in the data dir."""
    return (Path(data) / "postgresql.conf").exists() and (Path(data) / "PG_VERSION").exists()


# ---- configuration --------------------------------------------------------

def socket_dir_for(root, port):
    d = Path(root) / "run"
    if len(str(d / f".s.PGSQL.{port}")) > SOCKET_PATH_MAX:
        return None   # too long for a unix socket: TCP only
    return d


def _quote(v):
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (int, float)):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def conninfo(port, app_name, host=HOST):
    return (f"host={host} port={port} user={PG_USER} application_name={app_name} "
            "connect_timeout=60")


def override_settings(overrides):
    """PG_CONFIG_OVERRIDES -> settings: manatee's sections ``common``, the
    major version, then the full version, in that order; plain (non-object)
    keys at the top level are taken as settings too."""
    out = {}
    ov = overrides or {}
    for k, v in ov.items():
        if not isinstance(v, dict):
            out[k] = v
    full = sorted(k for k in ov if k.startswith(PG_MAJOR + ".") and isinstance(ov[k], dict))
    for section in ["common", PG_MAJOR, *full]:
        if isinstance(ov.get(section), dict):
            out.update(ov[section])
    return out


def render_conf(port, socket_dir, role, sync_name=None, upstream_port=None,
                app_name=None, overrides=None):
    """postgresql.conf for role 'primary' or 'standby'."""
    s = {
        "listen_addresses": HOST,
        "port": int(port),
        "unix_socket_directories": str(socket_dir) if socket_dir else "",
        "max_connections": 100,
        "shared_buffers": "32MB",
        "dynamic_shared_memory_type": "posix",
        "wal_level": "replica",
        "hot_standby": True,
        "max_wal_senders": 15,
        "max_replication_slots": 10,
        "wal_keep_size": "512MB",
        "wal_receiver_status_interval": "1s",
        "wal_retrieve_retry_interval": "1s",
        "hot_standby_feedback": False,
        "fsync": True,
        "full_page_writes": True,
        "checkpoint_timeout": "5min",
        "max_wal_size": "1GB",
        "min_wal_size": "80MB",
        "logging_collector": False,
        "log_destination": "stderr",
        "log_line_prefix": "%m [%p] ",
        "log_timezone": "UTC",
        "timezone": "UTC",
        "datestyle": "iso, mdy",
        "lc_messages": "C",
        "lc_monetary": "C",
        "lc_numeric": "C",
        "lc_time": "C",
        "default_text_search_config": "pg_catalog.english",
        "restart_after_crash": True,
    }
    if role == "primary":
        s["synchronous_standby_names"] = f'"{sync_name}"' if sync_name else ""
        s["synchronous_commit"] = "remote_write"
    elif role == "standby":
        s["synchronous_standby_names"] = ""
        s["synchronous_commit"] = "off"
        s["primary_conninfo"] = conninfo(upstream_port, app_name)
        s["recovery_target_timeline"] = "latest"
    else:
        raise ValueError(f"role {role!r}")
    for k, v in override_settings(overrides).items():
        s[k] = v
    lines = ["# written by the manta_lab sitter; regenerated at every reconfiguration"]
    lines += [f"{k} = {_quote(v)}" for k, v in s.items()]
    return "\n".join(lines) + "\n"


HBA = """# written by the manta_lab sitter
local   all             all                                     trust
local   replication     all                                     trust
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
"""


def _write(path, text):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    chown(tmp)
    os.replace(tmp, path)


def configure(data, conf_text, standby):
    """Install postgresql.conf / pg_hba.conf and (un)set standby.signal."""
    data = Path(data)
    _write(data / "postgresql.conf", conf_text)
    _write(data / "pg_hba.conf", HBA)
    sig = data / "standby.signal"
    if standby:
        if not sig.exists():
            _write(sig, "")
    else:
        for name in ("standby.signal", "recovery.signal"):
            try:
                (data / name).unlink()
            except FileNotFoundError:
                pass


# ---- connections and replication queries -----------------------------------

def dsn(port, dbname="moray", user="postgres"):
    return f"host={HOST} port={port} dbname={dbname} user={user}"


def pg_url(port, host=HOST):
    return f"tcp://postgres@{host}:{port}/postgres"


def connect(port, dbname="postgres", timeout=3, **kw):
    import psycopg2
    conn = psycopg2.connect(host=HOST, port=port, dbname=dbname, user=PG_USER,
                            connect_timeout=max(1, int(timeout)), **kw)
    conn.autocommit = True
    return conn


def query(port, sql, params=None, dbname="postgres", timeout=3):
    """Rows as dicts; one short-lived connection."""
    conn = connect(port, dbname=dbname, timeout=timeout,
                   options=f"-c statement_timeout={int(timeout * 1000)}")
    try:
        cur = conn.cursor()
        cur.execute(sql, params)
        if cur.description is None:
            return []
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        conn.close()


def ping(port, timeout=1):
    try:
        query(port, "SELECT 1", timeout=timeout)
        return True
    except Exception:
        return False


def in_recovery(port, timeout=3):
    return query(port, "SELECT pg_is_in_recovery() AS r", timeout=timeout)[0]["r"]


def current_lsn(port, timeout=3):
    """Primary: pg_current_wal_lsn(); standby: the last replayed LSN."""
    return query(port, "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
                       "ELSE pg_current_wal_lsn() END::text AS lsn", timeout=timeout)[0]["lsn"]


def replay_lsn(port, timeout=3):
    return query(port, "SELECT pg_last_wal_replay_lsn()::text AS lsn", timeout=timeout)[0]["lsn"]


def receive_lsn(port, timeout=3):
    return query(port, "SELECT pg_last_wal_receive_lsn()::text AS lsn", timeout=timeout)[0]["lsn"]


def replication(port, timeout=3):
    """pg_stat_replication rows (LSNs as text)."""
    return query(port, "SELECT pid, application_name, host(client_addr) AS client_addr, state, "
                       "sync_state, sent_lsn::text, write_lsn::text, flush_lsn::text, "
                       "replay_lsn::text FROM pg_stat_replication ORDER BY application_name",
                 timeout=timeout)


def parse_lsn(text):
    """'<hex>/<hex>' -> comparable int ((hi << 32) | lo); None stays None."""
    if text is None:
        return None
    hi, lo = str(text).split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(n):
    return f"{n >> 32:X}/{n & 0xFFFFFFFF:X}"
