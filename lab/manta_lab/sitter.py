"""The lab's manatee sitter: one daemon per postgres zone.

    python -m manta_lab.sitter --home <home> --zone <uuid>

It owns its PostgreSQL (a child in the sitter's own process group, so the
lab's SIGKILL of the group takes both, as SMF's ``:kill -9`` does) and keeps
manatee's ZooKeeper layout true under the zone's ``MANATEE_SHARD_PATH``
(reference/manatee.md §1, §3): an ephemeral-sequential election node
``<ip>:<pgport>:<backupport>-<seq>`` with ``{"zoneId","ip","pgUrl",
"backupUrl"}``, the ``election`` and ``history`` directories, and state
writes that are compare-and-swap multi-ops with a history node.

Behaviour (details and deviations in docs/lab-manatee.md):

- the role comes from ``/state`` (data watch; re-evaluated at once and every
  second): primary runs without ``standby.signal``; sync/async stream from
  their upstream in the chain P -> S -> A0 -> A1 ...; a peer not named in
  the state waits as a standby of the chain tail; deposed peers and peers of
  a shard with no state keep postgres stopped;
- an upstream change rewrites ``primary_conninfo`` and reloads; a standby
  that becomes primary is restarted without recovery config (manatee's
  "promotion", no new timeline); a primary that loses the role is deposed
  (postgres stopped until the sitter restarts);
- the primary appends newly elected peers to ``async`` and drops asyncs
  whose election node is gone (also while frozen), and declares a new sync
  when its sync is gone (not while frozen);
- the sync takes over (generation + 1, old primary deposed, initWal = its
  replay LSN) when the primary's election node is gone, an async is
  present, postgres is up and caught up to initWal, and the shard is not
  frozen;
- SIGTERM: postgres is stopped (immediate mode: no shutdown checkpoint),
  the ZooKeeper session is closed (the election node vanishes at once) and
  the sitter exits 0;
- a malformed state or election node is fatal, as in manatee (where the
  sitter crash-loops under SMF): postgres is stopped until it is fixed.

A status server on the backup port answers ``GET /ping``, ``/state`` and
``/restore`` like manatee's status server (§2.14), and ``<zone>/sitter.json``
holds the same view for the lab.
"""
import argparse
import copy
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from . import config, postgres, zones

# Session timeout the sitters ask ZooKeeper for (Manta uses 60 s). A sitter
# killed with SIGKILL leaves its election node behind for this long.
SESSION_TIMEOUT = float(os.environ.get("MANTA_LAB_ZK_SESSION_TIMEOUT", "5"))
TICK = 1.0                   # re-evaluate at least this often
HEALTH_INTERVAL = 5.0        # probe a healthy postgres this often (manatee: 10 s)
PG_READY_TIMEOUT = 60.0
PEER_FIELDS = ("id", "ip", "pgUrl", "zoneId", "backupUrl")
STATE_KEYS = ("generation", "primary", "sync", "async", "deposed", "initWal", "freeze")
INITIAL_WAL = "0/00000000"

log = logging.getLogger("sitter")


# ---- manatee ZooKeeper layout: pure helpers (used by shard.py and tests) ----

def paths(shard_path):
    return {"root": shard_path, "state": f"{shard_path}/state",
            "election": f"{shard_path}/election", "history": f"{shard_path}/history"}


def compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def now_iso():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{datetime.now(timezone.utc).microsecond // 1000:03d}Z"


def peer_id(ip, pg_port, backup_port):
    return f"{ip}:{pg_port}:{backup_port}"


def peer_from_zone(zone):
    """The five-field manatee peer object of a lab postgres zone."""
    ip = config.HOST
    pg, bk = zone["ports"]["pg"], zone["ports"]["backup"]
    return {"id": peer_id(ip, pg, bk), "ip": ip, "pgUrl": postgres.pg_url(pg, ip),
            "zoneId": zone["uuid"], "backupUrl": f"http://{ip}:{bk}"}


def election_data(peer):
    return {"zoneId": peer["zoneId"], "ip": peer["ip"], "pgUrl": peer["pgUrl"],
            "backupUrl": peer["backupUrl"]}


def split_node(name):
    """Election child name -> (id, seq); the id is everything before the last '-'."""
    ident, _, seq = name.rpartition("-")
    if not ident or not seq.isdigit():
        raise ValueError(f"malformed election node name {name!r}")
    return ident, int(seq)


def peer_from_election(name, data):
    """manatee's peer object for an election node (with its compat fallbacks)."""
    ident, _ = split_node(name)
    obj = dict(data) if isinstance(data, dict) else {}
    obj["id"] = ident
    parts = ident.split(":")
    if "pgUrl" not in obj and len(parts) >= 2:
        obj["pgUrl"] = f"tcp://postgres@{parts[0]}:{parts[1]}/postgres"
    if "backupUrl" not in obj and len(parts) >= 2:
        # manatee's fallback uses the postgres port when a third field exists
        obj["backupUrl"] = f"http://{parts[0]}:{parts[1]}"
    for k in ("id", "ip", "pgUrl", "zoneId"):
        if not isinstance(obj.get(k), str):
            raise ValueError(f"election node {name!r}: field {k!r} missing or not a string")
    return obj


def active_peers(named_data):
    """{child name: data} -> active peers: highest seq per id, sorted by id string."""
    best = {}
    for name, data in named_data.items():
        ident, seq = split_node(name)
        if ident not in best or seq > best[ident][0]:
            best[ident] = (seq, name, data)
    return [peer_from_election(name, data) for _, (seq, name, data) in sorted(best.items())]


def parse_lsn(text):
    return postgres.parse_lsn(text)


def _validate_peer(p, what):
    if not isinstance(p, dict):
        raise ValueError(f"{what} is not a peer object")
    for k in ("id", "ip", "pgUrl", "zoneId"):
        if not isinstance(p.get(k), str):
            raise ValueError(f"{what}: field {k!r} missing or not a string")


def validate_state(state):
    """manatee's checks on every read (§1.3); raises ValueError."""
    if not isinstance(state, dict):
        raise ValueError("state is not an object")
    if not isinstance(state.get("generation"), int) or isinstance(state.get("generation"), bool):
        raise ValueError("generation must be a number")
    _validate_peer(state.get("primary"), "primary")
    if state.get("sync") is None:
        if not state.get("oneNodeWriteMode"):
            raise ValueError("sync is null but oneNodeWriteMode is not set")
    else:
        _validate_peer(state["sync"], "sync")
    if not isinstance(state.get("async"), list):
        raise ValueError("async must be an array")
    for i, a in enumerate(state["async"]):
        _validate_peer(a, f"async[{i}]")
    deposed = state.get("deposed", [])
    if not isinstance(deposed, list):
        raise ValueError("deposed must be an array")
    for i, d in enumerate(deposed):
        _validate_peer(d, f"deposed[{i}]")
    try:
        parse_lsn(state.get("initWal"))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"initWal {state.get('initWal')!r} is not an LSN") from None
    fr = state.get("freeze")
    if fr is not None and not isinstance(fr, (bool, dict)):
        raise ValueError("freeze must be null, a boolean or an object")
    if "oneNodeWriteMode" in state and not isinstance(state["oneNodeWriteMode"], bool):
        raise ValueError("oneNodeWriteMode must be a boolean")
    return state


def read_state(zk, shard_path):
    """(state or None, version or None)."""
    from kazoo.exceptions import NoNodeError
    try:
        data, stat = zk.get(paths(shard_path)["state"])
    except NoNodeError:
        return None, None
    return json.loads(data.decode()), stat.version


def write_state(zk, shard_path, mutate, history_prefix=None, backoff=0.1, attempts=100):
    """Compare-and-swap write of /state with its history node, in one multi-op.

    ``mutate(current_state_or_None)`` gets a private copy and returns the new
    state, or None for "nothing to write". On BadVersion (or NodeExists for a
    racing create) the state is re-read and ``mutate`` called again. The
    history child is ``<history_prefix>-<seq>``; the default prefix is the new
    generation (sitter writes), operator writes use "0". Returns
    (state, version, wrote).
    """
    from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
    p = paths(shard_path)
    zk.ensure_path(p["history"])
    for attempt in range(attempts):
        cur, version = read_state(zk, shard_path)
        new = mutate(copy.deepcopy(cur))
        if new is None:
            return cur, version, False
        validate_state(new)
        text = compact(new).encode()
        prefix = str(new["generation"]) if history_prefix is None else str(history_prefix)
        t = zk.transaction()
        if version is None:
            t.create(p["state"], text)
        else:
            t.set_data(p["state"], text, version=version)
        t.create(f"{p['history']}/{prefix}-", text, sequence=True)
        results = t.commit()
        errors = [r for r in results if isinstance(r, Exception)]
        if not errors:
            return new, (0 if version is None else version + 1), True
        real = [e for e in errors if type(e).__name__ != "RolledBackError"]
        if any(isinstance(e, (BadVersionError, NodeExistsError, NoNodeError)) for e in real):
            log.info("state write lost a race (%s, version %s); re-reading",
                     ", ".join(type(e).__name__ for e in real), version)
            time.sleep(backoff)
            continue
        raise real[0] if real else errors[0]
    raise RuntimeError(f"state write to {shard_path} did not converge after {attempts} attempts")


def chain(state):
    """[primary, sync, async0, ...] (sync omitted when null)."""
    out = [state["primary"]]
    if state.get("sync"):
        out.append(state["sync"])
    return out + list(state.get("async") or [])


def role_of(state, ident):
    """(role, async index) of a peer id in a state (manatee's derivation order)."""
    if state["primary"]["id"] == ident:
        return "primary", None
    if state.get("sync") and state["sync"]["id"] == ident:
        return "sync", None
    if any(d.get("id") == ident for d in state.get("deposed") or []):
        return "deposed", None
    for i, a in enumerate(state.get("async") or []):
        if a["id"] == ident:
            return "async", i
    return "unassigned", None


def upstream_of(state, ident):
    """The peer a standby streams from; the chain tail for unassigned peers."""
    role, i = role_of(state, ident)
    if role == "sync":
        return state["primary"]
    if role == "async":
        return state["sync"] if i == 0 else state["async"][i - 1]
    if role == "unassigned":
        return chain(state)[-1]
    return None


def url_port(pg_url):
    u = urlparse(pg_url)
    return u.hostname, u.port


def frozen(state):
    return bool(state and state.get("freeze"))


def rebuilt(state, **changes):
    """A state rebuilt from the known keys only (as manatee's primary does):
    unknown keys, promote and a falsy freeze are dropped."""
    out = {k: state[k] for k in ("generation", "primary", "sync", "async", "deposed", "initWal")
           if k in state}
    out.setdefault("deposed", [])
    if state.get("freeze"):
        out["freeze"] = state["freeze"]
    out.update(changes)
    return out


# ---- the daemon ---------------------------------------------------------------

class Postgres:
    """The sitter's postgres child."""

    def __init__(self, zone, log_path):
        self.zone = zone
        self.data = Path(zone["paths"]["data"])
        self.port = zone["ports"]["pg"]
        self.log_path = log_path
        self.proc = None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def exited(self):
        """Exit code if our child died on its own, else None."""
        if self.proc is not None and self.proc.poll() is not None:
            return self.proc.returncode
        return None

    def clear_stale(self):
        """A postmaster left by an earlier sitter of this zone (same data dir),
        or its zombie not yet reaped."""
        pid = postgres.postmaster_of(self.data)
        if pid:
            log.warning("stopping stale postmaster %d of %s", pid, self.data)
        postgres.kill_postmaster(self.data)

    def start(self):
        self.clear_stale()
        out = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [postgres.binary("postgres"), "-D", str(self.data)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                user=postgres.run_user(), cwd=str(self.data), close_fds=True)
        finally:
            out.close()
        log.info("postgres started, pid %d", self.proc.pid)

    def wait_ready(self, timeout, abort=lambda: False):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not abort():
            if not self.running():
                return False
            if postgres.ping(self.port, timeout=1):
                return True
            time.sleep(0.05)
        return False

    def reload(self):
        if self.running():
            self.proc.send_signal(signal.SIGHUP)

    def stop(self, mode="fast"):
        """fast = SIGINT (checkpoint), immediate = SIGQUIT (no checkpoint)."""
        if not self.running():
            self.proc = None
            return
        sig = signal.SIGINT if mode == "fast" else signal.SIGQUIT
        log.info("stopping postgres (%s)", mode)
        self.proc.send_signal(sig)
        for sig_next, wait in ((signal.SIGQUIT, 30 if mode == "fast" else 10), (signal.SIGKILL, 10)):
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                log.warning("postgres did not stop; sending %s", sig_next.name)
                self.proc.send_signal(sig_next)
        else:
            self.proc.wait(timeout=10)
        self.proc = None


class Sitter:
    def __init__(self, cfg, zone_uuid):
        self.cfg = cfg
        self.zone = zones.get(cfg, zone_uuid)
        self.me = peer_from_zone(self.zone)
        md = self.zone.get("metadata") or {}
        self.shard_path = md.get("MANATEE_SHARD_PATH") or f"/manatee/{self.zone['shard']}"
        self.p = paths(self.shard_path)
        self.root = Path(self.zone["paths"]["root"])
        self.pg = Postgres(self.zone, self.zone["paths"]["pg_log"])
        self.overrides = md.get("PG_CONFIG_OVERRIDES") or {}
        if isinstance(self.overrides, str):
            try:
                self.overrides = json.loads(self.overrides)
            except ValueError:
                self.overrides = {}
        self.setup = postgres.has_data(self.zone["paths"]["data"])
        self.wake = threading.Event()
        self.stopping = False
        self.zk = None
        self.node = None              # our election node's name
        self.node_session = None
        self.applied = None           # postgres config in force
        self.was_primary = False
        self.deposed = False          # latched until the sitter restarts
        self.role = "unknown"
        self.state = None
        self.version = None
        self.active = []
        self.fatal = None
        self.notes = {}               # throttled log messages
        self.election_cache = {}
        self.restore = None
        self.last_check = None
        self.last_probe = 0.0
        self.pg_error = None
        self.status_written = None

    # -- plumbing --------------------------------------------------------------
    def note(self, key, msg, *args, level=logging.INFO):
        """Log msg once per distinct (key, text) until the key's text changes."""
        text = msg % args if args else msg
        if self.notes.get(key) != text:
            self.notes[key] = text
            log.log(level, text)

    def on_signal(self, signum, _frame):
        log.info("received %s; shutting down", signal.Signals(signum).name)
        self.stopping = True
        self.wake.set()

    def on_zk_state(self, st):
        if st == "LOST":
            self.node = None
        self.wake.set()

    def connect(self):
        from kazoo.client import KazooClient
        from kazoo.retry import KazooRetry
        self.zk = KazooClient(
            hosts=self.cfg.zk_connect, timeout=SESSION_TIMEOUT,
            connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=1.0),
            command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=0.5))
        self.zk.add_listener(self.on_zk_state)
        while not self.stopping:
            try:
                self.zk.start(timeout=10)
                return True
            except Exception as exc:  # noqa: BLE001 - keep trying, as manatee does
                self.note("zk", "cannot connect to ZooKeeper %s: %s", self.cfg.zk_connect, exc,
                          level=logging.WARNING)
                time.sleep(1)
        return False

    def register(self):
        """Our election node, once per ZooKeeper session (manatee §1.2)."""
        from kazoo.exceptions import NoNodeError
        session = self.zk.client_id[0] if self.zk.client_id else None
        if self.node and self.node_session == session:
            try:
                if self.zk.exists(f"{self.p['election']}/{self.node}"):
                    return
            except NoNodeError:
                pass
        self.zk.ensure_path(self.p["election"])
        self.zk.ensure_path(self.p["history"])
        path = self.zk.create(f"{self.p['election']}/{self.me['id']}-",
                              compact(election_data(self.me)).encode(),
                              ephemeral=True, sequence=True)
        self.node = path.rsplit("/", 1)[1]
        self.node_session = session
        log.info("joined election under %s as %s", self.shard_path, self.node)
        self.write_status()

    def read_election(self):
        children = self.zk.get_children(self.p["election"])
        named = {}
        for c in children:
            if c not in self.election_cache:
                try:
                    data, _ = self.zk.get(f"{self.p['election']}/{c}")
                except Exception:  # noqa: BLE001 - vanished between calls
                    continue
                try:
                    self.election_cache[c] = json.loads(data.decode())
                except ValueError:
                    self.election_cache[c] = None
            named[c] = self.election_cache[c]
        for c in list(self.election_cache):
            if c not in named:
                del self.election_cache[c]
        return active_peers(named)

    # -- main loop -------------------------------------------------------------
    def run(self):
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        log.info("sitter for zone %s (%s) starting: id %s, shard path %s, data %s (setup=%s)",
                 self.zone["uuid"], self.zone["alias"], self.me["id"], self.shard_path,
                 self.zone["paths"]["data"], self.setup)
        self.start_status_server()
        if not self.connect():
            return self.shutdown()
        from kazoo.recipe.watchers import ChildrenWatch, DataWatch
        while not self.stopping:
            try:
                self.zk.ensure_path(self.p["election"])
                self.zk.ensure_path(self.p["history"])
                DataWatch(self.zk, self.p["state"], lambda *_: self.wake.set())
                ChildrenWatch(self.zk, self.p["election"], lambda *_: self.wake.set())
                break
            except Exception as exc:  # noqa: BLE001 - ZooKeeper went away; retry
                self.note("zk", "cannot set up watches under %s: %s", self.shard_path, exc,
                          level=logging.WARNING)
                time.sleep(TICK)
        while not self.stopping:
            try:
                self.evaluate()
            except Exception as exc:  # noqa: BLE001 - retry every tick, as manatee does
                from kazoo.exceptions import KazooException
                if isinstance(exc, KazooException):
                    log.warning("evaluation interrupted by ZooKeeper: %s %s",
                                type(exc).__name__, exc)
                else:
                    log.exception("evaluation failed: %s: %s", type(exc).__name__, exc)
                time.sleep(TICK)
            self.write_status()
            self.wake.wait(TICK)
            self.wake.clear()
        return self.shutdown()

    def shutdown(self):
        self.pg.stop("immediate")
        if self.zk is not None:
            try:
                self.zk.stop()      # closes the session: the election node goes at once
                self.zk.close()
            except Exception:  # noqa: BLE001
                pass
        self.node = None
        self.role = "stopped"
        self.write_status(force=True)
        log.info("sitter stopped")
        return 0

    def evaluate(self):
        if not self.zk.connected:
            self.note("zk", "ZooKeeper connection %s; waiting", self.zk.state, level=logging.WARNING)
            self.check_pg()
            return
        self.note("zk", "ZooKeeper connected")
        self.register()
        try:
            state, version = read_state(self.zk, self.shard_path)
            if state is not None:
                validate_state(state)
            active = self.read_election()
        except ValueError as exc:
            return self.go_fatal(str(exc))
        if self.fatal:
            log.info("state and election valid again; resuming")
            self.fatal = None
        if state is None and self.state is not None:
            # manatee does not notice a deleted /state: it keeps its cached copy
            # (and the lab sitter does no ZooKeeper duties until one exists again).
            self.note("deleted", "/state deleted under a running sitter: keeping the cached "
                      "state (generation %s)", self.state["generation"], level=logging.WARNING)
            self.active = active
            desired, self.role = self.desired(self.state)
            self.apply(desired)
            return
        self.notes.pop("deleted", None)
        self.state, self.version, self.active = state, version, active
        active_ids = {p["id"] for p in active}

        # 1. the role and the postgres configuration it implies
        desired, role = self.desired(state)
        self.role = role
        self.apply(desired)

        # 2. ZooKeeper duties of the role
        if state is None or self.deposed:
            return
        if role == "sync" and state["primary"]["id"] not in active_ids:
            self.try_takeover(state, active_ids)
        elif role == "primary":
            if state.get("oneNodeWriteMode"):
                self.note("onwm", "one-node-write mode state: not managed by the lab sitter")
                return
            if not state.get("sync") or state["sync"]["id"] not in active_ids:
                present = [a for a in state["async"] if a["id"] in active_ids]
                if present:
                    self.try_new_sync(state, present)
                    return     # manatee loops on this, even while frozen
            self.reconcile_asyncs(state, active)

    def go_fatal(self, msg):
        """manatee's sitter exits on a malformed state or election node and SMF
        restarts it in a loop: postgres is down (the contract is killed), the
        peer stays in the election (each restart registers a new node while
        the old session lives on). The lab sitter stays in that condition,
        re-reading every second, until the state is valid again."""
        if self.fatal != msg:
            log.error("fatal: %s: postgres stopped until this is fixed", msg)
        self.fatal = msg
        self.role = "fatal"
        if self.pg.running():
            self.pg.stop("immediate")
        self.applied = None

    def desired(self, state):
        """(postgres config, role name) for the current state."""
        if self.deposed:
            return {"role": "none"}, "deposed"
        if state is None:
            self.note("role", "no state for %s: unassigned, postgres stays down", self.shard_path)
            return {"role": "none"}, "unassigned"
        role, idx = role_of(state, self.me["id"])
        if self.was_primary and role != "primary":
            self.deposed = True
            log.warning("generation %s names %s primary: deposed, postgres stays down until "
                        "this peer is rebuilt", state["generation"], state["primary"]["id"])
            return {"role": "none"}, "deposed"
        if role == "primary":
            self.was_primary = True
            sync = state.get("sync")
            self.note("role", "generation %s: primary (sync %s)", state["generation"],
                      sync["id"] if sync else None)
            return {"role": "primary", "sync": sync["pgUrl"] if sync else None}, role
        if role == "deposed":
            self.note("role", "listed as deposed: postgres stays down")
            return {"role": "none"}, role
        up = upstream_of(state, self.me["id"])
        host, port = url_port(up["pgUrl"])
        name = role if role != "async" else f"async[{idx}]"
        self.note("role", "generation %s: %s, upstream %s", state["generation"], name, up["id"])
        return {"role": "standby", "upstream": [host, port], "upstream_id": up["id"]}, role

    # -- postgres --------------------------------------------------------------
    def check_pg(self):
        code = self.pg.exited()
        if code is not None:
            log.error("postgres exited with status %s; it will be restarted (see %s)",
                      code, self.pg.log_path)
            self.pg.proc = None
            self.applied = None
            self.pg_error = f"postgres exited with status {code}"
            time.sleep(TICK)

    def conf(self, desired):
        sock = postgres.socket_dir_for(self.root, self.pg.port)
        if sock:
            sock.mkdir(parents=True, exist_ok=True)
            postgres.chown(sock)
        if desired["role"] == "primary":
            return postgres.render_conf(self.pg.port, sock, "primary", sync_name=desired["sync"],
                                        overrides=self.overrides)
        return postgres.render_conf(self.pg.port, sock, "standby",
                                    upstream_port=desired["upstream"][1],
                                    app_name=self.me["pgUrl"], overrides=self.overrides)

    def ensure_data(self, desired):
        """A peer with no data restores it (standby) or initdbs (primary)."""
        data = self.zone["paths"]["data"]
        if postgres.has_data(data):
            return True
        logf = self.pg.log_path
        if desired["role"] == "primary":
            log.info("no data: initdb and moray schema (new cluster)")
            postgres.initdb(data, logf, "sitter")
            postgres.setup_moray(data, logf, storage=self.is_storage_shard(), component="sitter")
            return True
        host, port = url_port(self.state["primary"]["pgUrl"])
        log.info("no data: full restore (pg_basebackup) from the primary %s:%s", host, port)
        self.restore = {"uuid": str(uuid.uuid4()), "host": host, "port": port,
                        "dataset": data, "done": False, "size": None, "completed": None}
        try:
            postgres.basebackup(data, port, logf, "sitter")
            self.restore["done"] = True
        except Exception:
            self.restore["done"] = "failed"
            raise
        return True

    def is_storage_shard(self):
        return (self.zone.get("metadata") or {}).get("SERVICE_NAME") == self.cfg.shard_name(1)

    def apply(self, desired):
        self.check_pg()
        running = self.pg.running()
        if desired == self.applied and (running or desired["role"] == "none"):
            self.check_health()
            return
        if desired["role"] == "none":
            if running:
                self.pg.stop("fast")
            self.applied = desired
            return
        if running and self.applied:
            same_kind = self.applied["role"] == desired["role"]
            if same_kind:
                # sync change on the primary, upstream change on a standby: reload
                postgres.configure(self.zone["paths"]["data"], self.conf(desired),
                                   standby=desired["role"] == "standby")
                self.pg.reload()
                log.info("reconfigured postgres (%s) and reloaded", self.describe(desired))
                self.applied = desired
                return
            if self.applied["role"] == "primary":
                # never turn a primary into a standby (diverged WAL); cannot happen:
                # desired() deposes a primary that loses the role.
                raise RuntimeError("refusing to restart a primary as a standby")
            self.pg.stop("fast")       # standby -> primary: restart without recovery config
        elif running:
            self.pg.stop("fast")
        self.ensure_data(desired)
        postgres.configure(self.zone["paths"]["data"], self.conf(desired),
                           standby=desired["role"] == "standby")
        self.pg.start()
        self.applied = desired
        self.pg_error = "starting"
        if self.pg.wait_ready(min(PG_READY_TIMEOUT, 15), abort=lambda: self.stopping):
            log.info("postgres up as %s", self.describe(desired))
            self.pg_error = None
            self.last_check = now_iso()
        elif not self.stopping:
            self.check_pg()
            log.warning("postgres not accepting connections yet (%s)", self.describe(desired))

    def describe(self, desired):
        if desired["role"] == "primary":
            return f"primary, synchronous_standby_names {desired['sync']!r}"
        if desired["role"] == "standby":
            return f"standby of {desired['upstream_id']}"
        return "stopped"

    def check_health(self):
        """Probe postgres: every HEALTH_INTERVAL, or every tick while not healthy."""
        if not self.applied or self.applied["role"] == "none":
            return
        now = time.monotonic()
        if self.pg_error is None and now - self.last_probe < HEALTH_INTERVAL:
            return
        self.last_probe = now
        ok = postgres.ping(self.pg.port, timeout=1)
        if ok and self.pg_error:
            log.info("postgres answering (%s)", self.describe(self.applied))
        elif not ok and not self.pg_error:
            log.warning("postgres not answering on port %s", self.pg.port)
        self.pg_error = None if ok else "postgres not answering"
        self.last_check = now_iso()

    # -- ZooKeeper duties --------------------------------------------------------
    def try_takeover(self, state, active_ids):
        present = [a for a in state["async"] if a["id"] in active_ids]
        gen = state["generation"]
        if frozen(state):
            self.note("duty", "primary %s gone, but the shard is frozen: no takeover",
                      state["primary"]["id"])
            return
        if not present:
            self.note("duty", "would takeover (primary gone), but no async peers present")
            return
        if not postgres.ping(self.pg.port, timeout=1):
            self.note("duty", "primary gone, but postgres is not online: no takeover yet")
            return
        try:
            lsn = postgres.replay_lsn(self.pg.port)
        except Exception as exc:  # noqa: BLE001
            self.note("duty", "cannot read replay LSN: %s", exc)
            return
        if lsn is None or parse_lsn(lsn) < parse_lsn(state["initWal"]):
            self.note("duty", "primary gone, but replay %s < initWal %s: not caught up",
                      lsn, state["initWal"])
            return

        def mutate(cur):
            if (cur is None or cur["generation"] != gen or frozen(cur)
                    or not cur.get("sync") or cur["sync"]["id"] != self.me["id"]):
                return None
            live = [a for a in cur["async"] if a["id"] in active_ids]
            if not live:
                return None
            return {"generation": gen + 1, "primary": cur["sync"], "sync": live[0],
                    "async": live[1:], "deposed": list(cur.get("deposed") or []) + [cur["primary"]],
                    "initWal": lsn}

        new, _, wrote = write_state(self.zk, self.shard_path, mutate, backoff=1.0)
        if wrote:
            log.warning("took over as primary: generation %s, sync %s, deposed %s, initWal %s",
                        new["generation"], new["sync"]["id"], state["primary"]["id"], lsn)
            self.wake.set()

    def try_new_sync(self, state, present):
        gen = state["generation"]
        if frozen(state):
            self.note("duty", "sync gone, but the shard is frozen: no new sync")
            return
        if not postgres.ping(self.pg.port, timeout=1):
            self.note("duty", "sync gone, but postgres is not online: no new sync yet")
            return
        lsn = postgres.current_lsn(self.pg.port)
        ids = {a["id"] for a in present}

        def mutate(cur):
            if cur is None or cur["generation"] != gen or frozen(cur) \
                    or cur["primary"]["id"] != self.me["id"]:
                return None
            live = [a for a in cur["async"] if a["id"] in ids]
            if not live:
                return None
            return {"generation": gen + 1, "primary": cur["primary"], "sync": live[0],
                    "async": live[1:], "deposed": list(cur.get("deposed") or []),
                    "initWal": lsn}

        new, _, wrote = write_state(self.zk, self.shard_path, mutate, backoff=1.0)
        if wrote:
            log.warning("sync gone: declared generation %s with sync %s",
                        new["generation"], new["sync"]["id"])
            self.wake.set()

    def reconcile_asyncs(self, state, active):
        def new_list(cur, active):
            ids = {p["id"] for p in active}
            taken = {cur["primary"]["id"]}
            if cur.get("sync"):
                taken.add(cur["sync"]["id"])
            taken |= {d["id"] for d in cur.get("deposed") or []}
            keep = [a for a in cur["async"] if a["id"] in ids]
            taken |= {a["id"] for a in keep}
            return keep + [{k: p[k] for k in PEER_FIELDS if k in p}
                           for p in active if p["id"] not in taken]

        if [a["id"] for a in new_list(state, active)] == [a["id"] for a in state["async"]]:
            return

        def mutate(cur):
            if cur is None or cur["primary"]["id"] != self.me["id"]:
                return None
            lst = new_list(cur, self.read_election())
            if [a["id"] for a in lst] == [a["id"] for a in cur["async"]]:
                return None
            return rebuilt(cur, **{"async": lst})

        new, _, wrote = write_state(self.zk, self.shard_path, mutate)
        if wrote:
            log.info("async list now [%s] (generation %s%s)",
                     ", ".join(a["id"] for a in new["async"]), new["generation"],
                     ", frozen" if frozen(new) else "")
            self.wake.set()

    # -- status ------------------------------------------------------------------
    def status(self):
        st = self.state
        return {
            "pid": os.getpid(),
            "zone": self.zone["uuid"],
            "id": self.me["id"],
            "shard_path": self.shard_path,
            "role": self.role,
            "registered": bool(self.node),
            "election_node": self.node,
            "generation": st["generation"] if st else None,
            "frozen": frozen(st),
            "pg": ("stopped" if not self.pg.running() else
                   "online" if not self.pg_error else "starting"),
            "pg_config": self.applied,
            "pg_error": self.pg_error,
            "fatal": self.fatal,
            "zkpeers": [p["id"] for p in self.active],
        }

    def write_status(self, force=False):
        st = self.status()
        if not force and st == self.status_written:
            return
        self.status_written = st
        f = self.root / "sitter.json"
        tmp = f.with_name("sitter.json.tmp")
        tmp.write_text(json.dumps({**st, "updated": now_iso()}, indent=2) + "\n")
        os.replace(tmp, f)

    def start_status_server(self):
        sitter = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/ping":
                    healthy = sitter.pg.running() and not sitter.pg_error
                    if sitter.applied is None or sitter.applied.get("role") == "none":
                        return self.reply(503, {"healthy": False, "error": "PG not inited"})
                    return self.reply(200 if healthy else 503,
                                      {"healthy": healthy, "error": sitter.pg_error,
                                       "lastCheck": sitter.last_check})
                if self.path == "/state":
                    return self.reply(200, {"id": sitter.me["id"], "role": sitter.role,
                                            "zkstate": sitter.state,
                                            "zkpeers": sitter.active})
                if self.path == "/restore":
                    return self.reply(200, {"restore": sitter.restore})
                return self.reply(404, {"code": "ResourceNotFound", "message": self.path})

        try:
            srv = ThreadingHTTPServer((config.HOST, self.zone["ports"]["backup"]), Handler)
        except OSError as exc:
            log.warning("status server not started on %s:%s: %s", config.HOST,
                        self.zone["ports"]["backup"], exc)
            return
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, name="status", daemon=True).start()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="manta_lab.sitter", description=__doc__.split("\n")[0])
    ap.add_argument("--home", required=True)
    ap.add_argument("--zone", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    cfg = config.load(args.home)
    return Sitter(cfg, args.zone).run()


if __name__ == "__main__":
    sys.exit(main())
