#!/usr/bin/env python3
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Benchmark: p99 latency of single-row writes to other vnodes while moray_vnode_rows deletes.

On a lab shard's primary (or --scratch / --lab-home), with N seeded rows
(default 1,000,000), a writer inserts one row per transaction (autocommit, so
each waits for the synchronous standby, as a moray putObject does; libmanta's
directory-count trigger fires) into existing directories of the vnodes that
are *not* being deleted, at a fixed rate (default 100/s), and records each
write's latency.

The measurement alternates windows (default 30 s each): idle, busy, idle,
busy, ... During a busy window the real module runs (a subprocess started as
Ansible starts it) with the DEFAULT throttle, deleting the rows of every second
vnode of the shard; at the end of the window it is killed and the next busy
window resumes it from its progress file. A last busy window runs unthrottled
for contrast. Reported: p50/p99 of idle and default-throttle windows (pooled),
the ratio p99(busy)/p99(idle) (target <= 2), the delete rate achieved, and the
unthrottled p99 for comparison.

    .venv/bin/python bench/moray_p99_bench.py [--rows N] [--windows K] [--window S] [--rate R]
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moray_bench_common import (bench_env, copy_database, drop_databases, half_the_vnodes, machine,  # noqa: E402
                                save_result, seeded, wait_replayed)

from ansible_collections.manta.ops.plugins.module_utils import throttle as th  # noqa: E402

SEED_DB = "bench_seed"
DB = "bench_p99"
MODULE = "ansible_collections.manta.ops.plugins.modules.moray_vnode_rows"


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * len(xs))) - 1))
    return xs[k]


class Writer(threading.Thread):
    def __init__(self, env, dirs, rate):
        super().__init__(daemon=True)
        self.env = env
        self.dirs = dirs
        self.rate = rate
        self.samples = []          # (t, latency)
        self.stop = threading.Event()

    def run(self):
        conn = self.env.connect(DB)
        cur = conn.cursor()
        rnd = random.Random(9)
        nxt = time.monotonic()
        i = 0
        while not self.stop.is_set():
            d, v, owner = rnd.choice(self.dirs)
            i += 1
            name = f"w{os.getpid()}-{i}"
            t0 = time.monotonic()
            cur.execute("INSERT INTO manta (_key, _value, _etag, _vnode, dirname, name, owner, objectid, type) "
                        "VALUES (%s, %s, 'ABCDEF01', %s, %s, %s, %s, %s, 'object')",
                        (f"{d}/{name}", '{"bench":"p99"}', v, d, name, owner, name))
            t1 = time.monotonic()
            self.samples.append((t0, t1 - t0))
            nxt += 1.0 / self.rate
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()
        conn.close()

    def between(self, a, b):
        return [lat for t, lat in self.samples if a <= t < b]


def module_proc(args_dict):
    payload = dict(args_dict, _ansible_check_mode=False, _ansible_diff=False,
                   _ansible_tmpdir=tempfile.gettempdir())
    fd, argfile = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, fh)
    proc = subprocess.Popen([sys.executable, "-m", MODULE, argfile], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, argfile


def busy_window(mod_args, seconds):
    """Run the module for ``seconds`` (or until it finishes); return (t0, t1, finished, result)."""
    proc, argfile = module_proc(mod_args)
    t0 = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=seconds)
        finished = True
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)       # our own child, by pid
        out, _ = proc.communicate()
        finished = False
    t1 = time.monotonic()
    os.unlink(argfile)
    result = None
    if finished and out.strip():
        result = json.loads(out[out.index("{"):])
    return t0, t1, finished, result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--windows", type=int, default=3, help="busy windows at the default throttle")
    ap.add_argument("--window", type=float, default=30.0, help="seconds per window")
    ap.add_argument("--rate", type=float, default=100.0, help="writes per second")
    ap.add_argument("--scratch", action="store_true")
    ap.add_argument("--lab-home")
    ap.add_argument("--settings", help="JSON throttle settings to test instead of the defaults")
    args = ap.parse_args()
    settings = dict(th.DEFAULTS, **(json.loads(args.settings) if args.settings else {}))
    env = bench_env(args)
    work = Path(tempfile.mkdtemp(prefix="moray-p99-"))
    try:
        seeded(env, SEED_DB, args.rows)
        victims = half_the_vnodes(env)
        vset = set(victims)
        topo = env.topology()
        others = [p for p in topo.pnodes() if p != env.pnode]
        after = topo.copy()
        after.remap(victims, others[0])       # the ring after a split: victims are another shard's
        ring = work / "ring.json"
        ring.write_text(after.to_json())

        def fresh():
            admin = env.connect("postgres")
            copy_database(admin, SEED_DB, DB)
            admin.close()
            wait_replayed(env)
            conn = env.connect(DB)
            cur = conn.cursor()
            cur.execute("SELECT DISTINCT ON (_vnode) dirname, _vnode, owner FROM manta "
                        "WHERE NOT (_vnode = ANY(%s::bigint[])) ORDER BY _vnode LIMIT 500", (victims,))
            dirs = cur.fetchall()
            conn.close()
            assert dirs and not {v for _, v, _ in dirs} & vset
            w = Writer(env, dirs, args.rate)
            w.start()
            time.sleep(3)                      # let the writer settle
            return w

        def idle_window(w, out, windows):
            a = time.monotonic()
            time.sleep(args.window)
            lat = w.between(a, time.monotonic())
            out += lat
            windows.append({"kind": "idle", "samples": len(lat), "p99_ms": round(pct(lat, 99) * 1000, 2)})

        base_args = {"shard": env.shard, "dsn": env.dsn(DB), "ring": str(ring), "vnodes": victims,
                     "force": True, "progress_file": str(work / "progress.json")}
        # --- phase A: the default throttle, resumed window after window -----------------------
        writer = fresh()
        idle, busy, windows = [], [], []
        finished = False
        for i in range(args.windows):
            idle_window(writer, idle, windows)
            t0, t1, finished, result = busy_window(dict(base_args, **settings), args.window)
            lat = writer.between(t0, t1)
            busy += lat
            windows.append({"kind": "busy (default throttle)", "samples": len(lat),
                            "p99_ms": round(pct(lat, 99) * 1000, 2), "finished": finished})
            print(f"window {i + 1}: idle p99 {windows[-2]['p99_ms']} ms, busy p99 {windows[-1]['p99_ms']} ms",
                  flush=True)
            if finished:
                break
        idle_window(writer, idle, windows)
        prog = json.loads((work / "progress.json").read_text())
        writer.stop.set()
        writer.join()
        # --- phase B: the same delete unthrottled, on a fresh copy, for contrast ---------------
        (work / "progress.json").unlink()
        writer = fresh()
        u_idle, u_busy = [], []
        idle_window(writer, u_idle, windows)
        t0, t1, _, _ = busy_window(dict(base_args, **th.UNTHROTTLED), args.window)
        lat = writer.between(t0, t1)
        u_busy += lat
        windows.append({"kind": "busy (unthrottled)", "samples": len(lat), "p99_ms": round(pct(lat, 99) * 1000, 2)})
        idle_window(writer, u_idle, windows)
        uprog = json.loads((work / "progress.json").read_text())
        unthrottled = {"samples": len(u_busy), "p50_ms": round(pct(u_busy, 50) * 1000, 2),
                       "p99_ms": round(pct(u_busy, 99) * 1000, 2), "idle_p99_ms": round(pct(u_idle, 99) * 1000, 2),
                       "ratio_p99": round(pct(u_busy, 99) / pct(u_idle, 99), 3),
                       "rows_per_second": uprog.get("average_rows_per_second"), "settings": th.UNTHROTTLED}
        writer.stop.set()
        writer.join()
        idle_p99, busy_p99 = pct(idle, 99), pct(busy, 99)
        # rows deleted at the default throttle: the progress file's count across resumed attempts
        summary = {
            "benchmark": "moray_p99", "server": "scratch" if args.scratch else "lab shard",
            "rows_seeded": args.rows, "write_rate": args.rate, "window_seconds": args.window,
            "settings": settings, "windows": windows,
            "idle": {"samples": len(idle), "p50_ms": round(pct(idle, 50) * 1000, 2),
                     "p99_ms": round(idle_p99 * 1000, 2)},
            "busy": {"samples": len(busy), "p50_ms": round(pct(busy, 50) * 1000, 2),
                     "p99_ms": round(busy_p99 * 1000, 2)},
            "ratio_p99": round(busy_p99 / idle_p99, 3),
            "default_throttle_rows_per_second": prog.get("average_rows_per_second"),
            "unthrottled": unthrottled, "target_ratio": 2.0, "machine": machine(),
        }
        summary["pass"] = summary["ratio_p99"] <= 2.0
        path = save_result("moray_p99", summary)
        print(f"idle p99 {summary['idle']['p99_ms']} ms ({len(idle)} writes) | default-throttle p99 "
              f"{summary['busy']['p99_ms']} ms ({len(busy)} writes), deleting ~"
              f"{summary['default_throttle_rows_per_second']} rows/s"
              + f" | unthrottled: p99 {unthrottled['p99_ms']} ms vs idle {unthrottled['idle_p99_ms']} ms "
              f"(x{unthrottled['ratio_p99']}) at ~{unthrottled['rows_per_second']} rows/s")
        print(f"RESULT p99 busy/idle ratio at the default throttle: {summary['ratio_p99']}; target <= 2: "
              f"{'PASS' if summary['pass'] else 'FAIL'}; saved {path}")
        return 0 if summary["pass"] else 1
    finally:
        try:
            drop_databases(env, DB)
        finally:
            env.stop()
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
