"""`lab`: run the miniature Manta.

    lab up [--shards N] [--emorays N] [--storage-nodes N] [--vnodes N] [--base-port P]
    lab down
    lab status [--json]
    lab seed [--objects N] [--via-rpc]
    lab load --rate R --duration S [--log F] | lab load --verify LOG
    lab svcadm <zone> enable|disable|restart <service>
    lab zones [--json]

Global: --home DIR (default $LAB_HOME or <repo>/.lab).
Sizes and ports are fixed by the first `up` and kept in <home>/lab.json.
"""
import argparse
import json
import sys
import time

from . import config, procs, zones
from .config import LabError

MAX_VNODES = 1_000_000
MAX_SHARDS = 32
MAX_EMORAYS = 16
MAX_STORAGE = 64


class UsageError(Exception):
    pass


def _positive(name, lo, hi):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be between {lo} and {hi}, got {v}")
        return v
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"lab: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser():
    p = _Parser(prog="lab", description="A miniature Manta on one machine.")
    p.add_argument("--home", help="lab directory (default $LAB_HOME or <repo>/.lab)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    up = sub.add_parser("up", help="start the lab (creating it on first use)")
    up.add_argument("--shards", type=_positive("--shards", 1, MAX_SHARDS))
    up.add_argument("--emorays", type=_positive("--emorays", 1, MAX_EMORAYS))
    up.add_argument("--storage-nodes", type=_positive("--storage-nodes", 2, MAX_STORAGE))
    up.add_argument("--vnodes", type=_positive("--vnodes", 1, MAX_VNODES))
    up.add_argument("--base-port", type=_positive("--base-port", 1024, 60000))

    sub.add_parser("down", help="stop every process the lab started (data is kept)")

    st = sub.add_parser("status", help="show every endpoint")
    st.add_argument("--json", action="store_true")

    seed = sub.add_parser("seed", help="write directories and objects")
    seed.add_argument("--objects", type=_positive("--objects", 1, 10_000_000), default=20_000)
    seed.add_argument("--via-rpc", action="store_true", help="write every row through electric-moray")

    load = sub.add_parser("load", help="live writers and readers through electric-moray")
    load.add_argument("--rate", type=_positive("--rate", 1, 100_000))
    load.add_argument("--duration", type=_positive("--duration", 1, 86_400))
    load.add_argument("--log", help="append acknowledged writes here")
    load.add_argument("--verify", metavar="LOG", help="verify the writes recorded in LOG")

    sv = sub.add_parser("svcadm", help="zone-local service control, as svcadm in a zone")
    sv.add_argument("zone", help="zone uuid, uuid prefix or alias")
    sv.add_argument("action", choices=["enable", "disable", "restart"])
    sv.add_argument("service")

    zs = sub.add_parser("zones", help="list the lab's zones")
    zs.add_argument("--json", action="store_true")
    return p


# ---- up / down -------------------------------------------------------------

def _step(name, fn, *args):
    t0 = time.monotonic()
    out = fn(*args)
    print(f"lab: {name} ok ({time.monotonic() - t0:.1f}s)", file=sys.stderr)
    return out


def up(cfg, args):
    from . import apis, emoray, moray, ring, shard, storage, zookeeper
    first = not cfg.path("lab.json").exists()
    for attr, opt in (("shards", "shards"), ("emorays", "emorays"),
                      ("storage_nodes", "storage_nodes"), ("vnodes", "vnodes"),
                      ("base_port", "base_port")):
        val = getattr(args, opt, None)
        if val is None:
            continue
        if not first and getattr(cfg, attr) != val:
            raise UsageError(f"--{opt.replace('_', '-')} {val}: this lab was created with "
                             f"{getattr(cfg, attr)}; `lab down` and remove {cfg.home} to change it")
        setattr(cfg, attr, val)
    if first:
        lo, hi = config.port_block(cfg.base_port)
        elo, ehi = config.ephemeral_range()
        if lo <= ehi and hi >= elo:
            raise UsageError(f"--base-port {cfg.base_port}: the lab's ports {lo}-{hi} overlap the "
                             f"kernel's ephemeral range {elo}-{ehi}; choose a base port at most "
                             f"{elo - (hi - lo) - 1}")
        for port in _fixed_ports(cfg):
            if not config.port_free(port):
                raise UsageError(f"port {port} on 127.0.0.1 is in use; choose --base-port")
        cfg.save()
    t0 = time.monotonic()
    _step("zookeeper", zookeeper.start, cfg)
    for n in range(1, cfg.shards + 1):
        _step(f"shard {cfg.shard_name(n)}", shard.ensure, cfg, cfg.shard_name(n))
    _step("apis", apis.start, cfg)
    _step("sapi bootstrap", apis.bootstrap.ensure, cfg)
    for n in range(1, cfg.shards + 1):
        _step(f"moray {cfg.shard_name(n)}", moray.ensure, cfg, cfg.shard_name(n))
    _step("ring", ring.ensure, cfg)
    _step("storage", storage.ensure, cfg)
    _step("electric-moray", emoray.ensure, cfg)
    # Zones provisioned later through SAPI (new peers, morays) come back too.
    for z in zones.all_zones(cfg):
        zones.start(cfg, z)
    for n in range(1, cfg.shards + 1):
        shard.wait_healthy(cfg, cfg.shard_name(n), 60)
    st = write_status(cfg)
    print(f"lab: up in {time.monotonic() - t0:.1f}s; status: {cfg.path('status.json')}", file=sys.stderr)
    return st


def _fixed_ports(cfg):
    ports = [cfg.port(n) for n in config.PORT_OFFSETS]
    ports += [cfg.emoray_port(i) for i in range(1, cfg.emorays + 1)]
    ports += [cfg.emoray_status_port(i) for i in range(1, cfg.emorays + 1)]
    ports += [cfg.storage_port(k) for k in range(1, cfg.storage_nodes + 1)]
    return ports


def down(cfg):
    """Stop every zone, the APIs and ZooKeeper: only pids the lab recorded."""
    from . import apis, zookeeper
    order = {"electric-moray": 0, "storage": 1, "moray": 2, "postgres": 3}
    for z in sorted(zones.all_zones(cfg), key=lambda z: order.get(z["kind"], 9)):
        zones.stop(cfg, z)
    apis.stop(cfg)
    zookeeper.stop(cfg)
    # Anything else the lab started and recorded (e.g. a stray load run).
    for name in procs.names(cfg):
        procs.stop(cfg, name)
    with cfg.locked(STATUS_LOCK):
        st = cfg.path("status.json")
        if st.exists():
            data = json.loads(st.read_text())
            data["up"] = False
            _write_json_atomic(st, data)


# ---- status ------------------------------------------------------------------

def status(cfg):
    """Every endpoint, DSN and path of the lab, with live service states."""
    from . import emoray, moray, shard, storage
    out = {
        "home": cfg.home,
        "up": bool(procs.alive(cfg, "zookeeper")),
        "domain": cfg.domain,
        "region": cfg.region,
        "datacenters": cfg.datacenters,
        "servers": cfg.servers,
        "zookeeper": {"connect": cfg.zk_connect, "host": config.HOST,
                      "port": cfg.port("zookeeper"), "log": str(cfg.log("zookeeper"))},
        "apis": {"sapi": cfg.url("sapi"), "imgapi": cfg.url("imgapi"), "vmapi": cfg.url("vmapi"),
                 "log": str(cfg.log("apis"))},
        "vnodes": cfg.vnodes,
        "shards": {},
        "electric_moray": emoray.describe(cfg),
        "storage": storage.describe(cfg),
    }
    for n in range(1, cfg.shards + 1):
        name = cfg.shard_name(n)
        out["shards"][name] = {"pnode": cfg.pnode(name), **shard.describe(cfg, name),
                               "morays": moray.describe(cfg, name)}
    # Shards created later (a reshard's new shard: its morays may come before its peers) show up too.
    known = set(out["shards"])
    for z in zones.all_zones(cfg, kind="postgres") + zones.all_zones(cfg, kind="moray"):
        s = z.get("shard")
        if s and s not in known:
            known.add(s)
            out["shards"][s] = {"pnode": cfg.pnode(s), **shard.describe(cfg, s),
                                "morays": moray.describe(cfg, s)}
    out["zones"] = [{"uuid": z["uuid"], "alias": z["alias"], "kind": z["kind"],
                     "shard": z.get("shard"), "datacenter": z.get("datacenter"),
                     "server_uuid": z.get("server_uuid"), "services": zones.states(cfg, z)}
                    for z in zones.all_zones(cfg)]
    return out


STATUS_LOCK = ".status.lock"


def _write_json_atomic(path, data):
    """Write ``path`` whole or not at all: a temporary file of its own in the same directory, then a
    rename over it, so a reader (the lab inventory, `cat`) never sees a half-written file and two
    writers never share a temporary file."""
    import os
    import tempfile
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_status(cfg):
    """Compute the status and write ``<home>/status.json`` atomically. Writers (`lab up`, `lab status`,
    the lab VMAPI after each job that creates, reprovisions or destroys a zone) are serialised by a lock
    held from the computation to the rename, so the file last written is always the latest view."""
    with cfg.locked(STATUS_LOCK):
        st = status(cfg)
        _write_json_atomic(cfg.path("status.json"), st)
    return st


def print_status(st):
    print(f"lab {'up' if st['up'] else 'DOWN'}: {st['home']}")
    print(f"  zookeeper      {st['zookeeper']['connect']}")
    for k in ("sapi", "imgapi", "vmapi"):
        print(f"  {k:<14} {st['apis'][k]}")
    for name, sh in st["shards"].items():
        print(f"  shard {name}")
        for p in sh.get("peers", []):
            print(f"    {p.get('role', '?'):<8} {p.get('alias', ''):<40} {p.get('dsn', '')}")
        for m in sh.get("morays", []):
            print(f"    moray    {m.get('url', '')}")
    for e in st["electric_moray"]:
        print(f"  electric-moray {e.get('url', '')} status {e.get('status_url', '')}")
    for s in st["storage"]:
        print(f"  storage {s.get('storage_id', ''):<24} {s.get('datacenter', ''):<8} {s.get('url', '')}")


# ---- main --------------------------------------------------------------------

def main(argv=None):
    args = build_parser().parse_args(argv)
    cfg = config.load(args.home)
    try:
        if args.cmd == "up":
            with cfg.locked(".up.lock"):
                st = up(cfg, args)
            print_status(st)
        elif args.cmd == "down":
            with cfg.locked(".up.lock"):
                down(cfg)
            print("lab: down (data kept in %s)" % cfg.home)
        elif args.cmd == "status":
            _require_created(cfg)
            # computed live (zone records, ZooKeeper, processes); status.json is refreshed on the way
            st = None
            if cfg.path("status.json").exists() and procs.alive(cfg, "zookeeper"):
                try:
                    st = write_status(cfg)
                except OSError:       # a lab home this user cannot write: report only
                    st = None
            st = st or status(cfg)
            if args.json:
                print(json.dumps(st, indent=2))
            else:
                print_status(st)
        elif args.cmd == "seed":
            _require_created(cfg)
            from . import seed
            print(json.dumps(seed.run(cfg, args.objects, via_rpc=args.via_rpc), indent=2))
        elif args.cmd == "load":
            _require_created(cfg)
            from . import load
            if args.verify:
                if args.rate or args.duration:
                    raise UsageError("--verify LOG takes no --rate/--duration")
                res = load.verify(cfg, args.verify)
                print(json.dumps(res, indent=2))
                return 0 if res.get("ok") else 1
            if not (args.rate and args.duration):
                raise UsageError("lab load needs --rate R and --duration S (or --verify LOG)")
            print(json.dumps(load.run(cfg, args.rate, args.duration, args.log), indent=2))
        elif args.cmd == "svcadm":
            _require_created(cfg)
            zone = zones.find(cfg, args.zone)
            state = zones.svcadm(cfg, zone, args.action, args.service)
            print(f"{zone['alias']} {args.service}: {state}")
        elif args.cmd == "zones":
            _require_created(cfg)
            zs = zones.all_zones(cfg)
            if args.json:
                print(json.dumps(zs, indent=2))
            else:
                for z in zs:
                    print(f"{z['uuid']} {z['kind']:<15} {z['alias']:<40} {zones.states(cfg, z)}")
    except UsageError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"lab: failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _require_created(cfg):
    if not cfg.path("lab.json").exists():
        raise UsageError(f"no lab at {cfg.home}; run `lab up` first")


if __name__ == "__main__":
    sys.exit(main())
