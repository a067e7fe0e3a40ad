"""minnow: a storage node's capacity heartbeat (evacuate.md §1.4).

Every ``MINNOW_INTERVAL`` seconds (zone metadata, default 5) the daemon
upserts one record into bucket ``manta_storage`` on STORAGE_MORAY_SHARD
(shard 1) through that shard's moray:

    key   = manta_storage_id (e.g. "1.stor.lab.manta.test")
    value = {availableMB, percentUsed, filesystem, statvfs, timestamp (ms),
             hostname, datacenter, server_uuid, zone_uuid, manta_compute_id,
             manta_storage_id}

Capacity is simulated: ``CAPACITY_MB`` (zone metadata) minus the bytes under
the node's root (``availableMB = floor(free / 1 MiB)``, ``percentUsed =
ceil(used / total * 100)``). The zone record is re-read every beat, so
`storage.set_capacity` takes effect without a restart. The root is rescanned
in a background thread (a full walk of a large node takes a while), so a beat
is never late because of it.

Run: ``python -m manta_lab.minnow --home <home> --zone <uuid>``.
"""
import argparse
import math
import os
import signal
import sys
import threading
import time

from . import config, moray, rpc, zones

BUCKET = "manta_storage"
FRSIZE = 4096


def used_bytes(root):
    """Bytes of regular files under root (nginx temp files included)."""
    total = 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            total += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        pass
        except OSError:
            pass
    return total


def record(cfg, zone, used):
    md = zone["metadata"]
    cap_mb = float(md.get("CAPACITY_MB", 10240))
    total = int(cap_mb * 1024 * 1024)
    free = max(0, total - used)
    pct = 100 if total <= 0 else min(100, math.ceil(used / total * 100))
    server = cfg.server(zone.get("server_uuid")) or {}
    blocks = total // FRSIZE
    bfree = free // FRSIZE
    return {
        "availableMB": free // (1024 * 1024),
        "percentUsed": pct,
        "filesystem": zone["paths"]["root"],
        "statvfs": {"bsize": FRSIZE, "frsize": FRSIZE, "blocks": blocks, "bfree": bfree,
                    "bavail": bfree, "files": 1 << 24, "ffree": 1 << 23, "favail": 1 << 23,
                    "fsid": 0, "flag": 0, "namemax": 255},
        "timestamp": int(time.time() * 1000),
        "hostname": zone["uuid"],
        "datacenter": zone.get("datacenter"),
        "server_uuid": zone.get("server_uuid"),
        "zone_uuid": zone["uuid"],
        "manta_compute_id": server.get("hostname"),
        "manta_storage_id": zone["storage_id"],
    }


class Minnow:
    def __init__(self, cfg, zone_uuid):
        self.cfg = cfg
        self.zone_uuid = zone_uuid
        self.zone = zones.get(cfg, zone_uuid)
        self.used = None
        self.stop = threading.Event()
        self.client = None
        self.client_url = None

    def scanner(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            self.used = used_bytes(self.zone["paths"]["root"])
            took = time.monotonic() - t0
            # rescan often when cheap, rarely when the node is big (a walk of
            # a node holding 500k files takes seconds: keep it under ~5% CPU)
            self.stop.wait(max(1.0, took * 20))

    def _client(self):
        urls = moray.resolve(self.cfg, self.shard)
        if not urls:
            raise rpc.RpcError("NoBackendsError", f"no moray for {self.shard}", 503)
        if self.client_url not in urls:
            self.client = rpc.Client(urls[0], timeout=10)
            self.client_url = urls[0]
        return self.client

    @property
    def shard(self):
        return self.zone["metadata"].get("STORAGE_MORAY_SHARD") or self.cfg.shard_name(1)

    def beat(self):
        try:
            self.zone = zones.get(self.cfg, self.zone_uuid)
        except Exception:  # noqa: BLE001 - keep the last record we had
            pass
        if self.used is None:
            self.used = used_bytes(self.zone["paths"]["root"])
        rec = record(self.cfg, self.zone, self.used)
        try:
            self._client().put_object(BUCKET, rec["manta_storage_id"], rec)
            return True
        except rpc.RpcError as exc:
            self.client_url = None
            print(f"{time.strftime('%FT%T')} heartbeat failed: {exc}", flush=True)
            return False

    def run(self):
        threading.Thread(target=self.scanner, daemon=True, name="scan").start()
        ok_once = False
        while not self.stop.is_set():
            t0 = time.monotonic()
            ok = self.beat()
            if ok and not ok_once:
                print(f"{time.strftime('%FT%T')} minnow {self.zone['storage_id']}: "
                      f"first heartbeat written to {self.shard}", flush=True)
                ok_once = True
            try:
                interval = float(self.zone["metadata"].get("MINNOW_INTERVAL", 5))
            except (TypeError, ValueError):
                interval = 5.0
            # retry a failed beat sooner
            wait = interval if ok else min(interval, 1.0)
            self.stop.wait(max(0.05, wait - (time.monotonic() - t0)))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="manta_lab.minnow")
    ap.add_argument("--home", required=True)
    ap.add_argument("--zone", required=True)
    args = ap.parse_args(argv)
    cfg = config.load(args.home)
    m = Minnow(cfg, args.zone)
    signal.signal(signal.SIGTERM, lambda *_: m.stop.set())
    print(f"{time.strftime('%FT%T')} minnow {m.zone['storage_id']} pid {os.getpid()} "
          f"-> {BUCKET} on {m.shard}", flush=True)
    m.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
