#!/usr/bin/env python3
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Benchmark: batched vnode delete (moray_vnode_rows, unthrottled) vs one DELETE.

On a lab shard's primary (a private lab is brought up unless --lab-home names
a running one; --scratch uses a throwaway primary + sync standby instead), a
moray database is seeded with N rows (default 1,000,000) routed by the lab's
ring to the shard. Each round makes two identical file-level copies
(CREATE DATABASE ... TEMPLATE, STRATEGY FILE_COPY, then CHECKPOINT) and
deletes the rows of every second vnode of the shard:

* baseline: RFD 103's ``DELETE FROM manta_directory_counts WHERE _vnode =
  ANY(v)`` then ``DELETE FROM manta WHERE _vnode = ANY(v)``, one statement each;
* candidate: ``moray_delete.delete_vnode_rows`` with the unthrottled settings
  (throttle.UNTHROTTLED), force (no owner copy in this database), which is
  exactly what the module runs.

Each copy is dropped as soon as its side is timed, so that autovacuum of its
half-deleted table never runs under the other side's measurement, and each
side starts only once the standbys (same CPUs) have replayed all WAL so far.

The two alternate in order from round to round. Reported: rows/s of each, the
ratio of the candidate's *delete phase* to the baseline (the acceptance figure,
target >= 0.7) and of its *end-to-end* run (census + delete + verify).

    .venv/bin/python bench/moray_delete_bench.py [--rows N] [--rounds R] [--scratch | --lab-home DIR]
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moray_bench_common import (bench_env, copy_database, drop_databases, half_the_vnodes, machine,  # noqa: E402
                                median, save_result, seeded, wait_replayed)

from ansible_collections.manta.ops.plugins.module_utils import moray_delete, moray_pg  # noqa: E402
from ansible_collections.manta.ops.plugins.module_utils import throttle as th  # noqa: E402

SEED_DB = "bench_seed"


def fresh_copy(env, name):
    admin = env.connect("postgres")
    copy_database(admin, SEED_DB, name)
    admin.close()
    wait_replayed(env)
    time.sleep(1.0)


def baseline(env, victims):
    fresh_copy(env, "bench_base")
    conn = env.connect("bench_base")
    cur = conn.cursor()
    t0 = time.monotonic()
    cur.execute("DELETE FROM manta_directory_counts WHERE _vnode = ANY(%s::bigint[])", (victims,))
    n = cur.rowcount
    cur.execute("DELETE FROM manta WHERE _vnode = ANY(%s::bigint[])", (victims,))
    n += cur.rowcount
    secs = time.monotonic() - t0
    conn.close()
    # drop it now: autovacuum of its 500k dead rows must not run under the other side's timing
    drop_databases(env, "bench_base")
    return {"rows": n, "seconds": round(secs, 3), "rows_per_second": round(n / secs, 1)}


def candidate(env, victims, settings):
    fresh_copy(env, "bench_cand")
    target = moray_pg.resolve(env.shard, dsn=env.dsn("bench_cand"))
    t0 = time.monotonic()
    r = moray_delete.delete_vnode_rows(env.shard, target, victims, force=True,
                                       throttle=th.Throttle(settings), progress_path=None)
    total = time.monotonic() - t0
    drop_databases(env, "bench_cand")
    n = r["rows_deleted"]
    d = r["seconds"]["delete"]
    return {"rows": n, "delete_seconds": d, "total_seconds": round(total, 3),
            "rows_per_second": round(n / d, 1), "end_to_end_rows_per_second": round(n / total, 1),
            "phases": r["seconds"], "strategy": r["strategy"], "verified": r["verified"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scratch", action="store_true", help="throwaway primary + sync standby instead of a lab")
    ap.add_argument("--lab-home", help="use this running lab instead of bringing one up")
    ap.add_argument("--settings", default=None, help="JSON throttle settings for the candidate "
                                                     "(default: throttle.UNTHROTTLED)")
    args = ap.parse_args()
    settings = dict(th.UNTHROTTLED, **(json.loads(args.settings) if args.settings else {}))
    env = bench_env(args)
    try:
        t0 = time.monotonic()
        seeded_info = seeded(env, SEED_DB, args.rows)
        print(f"seeded {SEED_DB}: {seeded_info} in {time.monotonic() - t0:.1f}s", flush=True)
        victims = half_the_vnodes(env)
        rounds = []
        for i in range(args.rounds):
            order = ("base", "cand") if i % 2 == 0 else ("cand", "base")
            res = {}
            for kind in order:
                res[kind] = baseline(env, victims) if kind == "base" else candidate(env, victims, settings)
            assert res["base"]["rows"] == res["cand"]["rows"], res
            res["ratio_delete"] = round(res["cand"]["rows_per_second"] / res["base"]["rows_per_second"], 3)
            res["ratio_end_to_end"] = round(res["cand"]["end_to_end_rows_per_second"]
                                            / res["base"]["rows_per_second"], 3)
            rounds.append(res)
            print(f"round {i + 1}: baseline {res['base']['rows']} rows in {res['base']['seconds']}s "
                  f"({res['base']['rows_per_second']:.0f}/s) | batched delete {res['cand']['delete_seconds']}s "
                  f"({res['cand']['rows_per_second']:.0f}/s), end-to-end {res['cand']['total_seconds']}s | "
                  f"ratio {res['ratio_delete']} (end-to-end {res['ratio_end_to_end']})", flush=True)
        summary = {
            "benchmark": "moray_delete", "server": "scratch" if args.scratch else "lab shard",
            "shard": env.shard, "rows_seeded": args.rows, "vnodes_deleted": len(victims),
            "rows_deleted": rounds[0]["base"]["rows"], "settings": settings, "rounds": rounds,
            "median_ratio_delete": median([r["ratio_delete"] for r in rounds]),
            "median_ratio_end_to_end": median([r["ratio_end_to_end"] for r in rounds]),
            "target_ratio": 0.7, "machine": machine(),
        }
        summary["pass"] = summary["median_ratio_delete"] >= 0.7
        path = save_result("moray_delete", summary)
        print(f"RESULT batched/single DELETE rate ratio: median {summary['median_ratio_delete']} "
              f"(end-to-end {summary['median_ratio_end_to_end']}); target >= 0.7: "
              f"{'PASS' if summary['pass'] else 'FAIL'}; saved {path}")
        return 0 if summary["pass"] else 1
    finally:
        try:
            drop_databases(env, "bench_base", "bench_cand")
        finally:
            env.stop()


if __name__ == "__main__":
    sys.exit(main())
