#!/usr/bin/env python3
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Benchmark: the vnode census vs ``SELECT count(*)`` on the same table.

On a lab shard's primary (or --scratch / --lab-home, as moray_delete_bench),
with N seeded rows (default 1,000,000) in ``manta``, each round times, in
alternating order after one warm-up of each:

* baseline: ``SELECT count(*) FROM manta``;
* census, default (``bytes=sampled``): ``moray_census.take`` on ``manta``, which
  is what moray_vnode_rows_info runs per table: exact rows per vnode from
  Moray's partial ``_vnode`` index plus a ~50,000-row page sample for bytes;
* census rows only (``bytes=none``): the index alone;
* census with exact bytes (``bytes=exact``): sum(octet_length(_value)) over
  every row (reads the whole heap), reported for information.

Reported: medians and the ratios census/count(*) (target <= 1.5 for the
default and rows-only census).

    .venv/bin/python bench/moray_census_bench.py [--rows N] [--rounds R] [--scratch | --lab-home DIR]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moray_bench_common import bench_env, machine, median, save_result, seeded  # noqa: E402

from ansible_collections.manta.ops.plugins.module_utils import moray_census, moray_tables  # noqa: E402

SEED_DB = "bench_seed"


def timed(fn):
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--scratch", action="store_true")
    ap.add_argument("--lab-home")
    args = ap.parse_args()
    env = bench_env(args)
    try:
        seeded_info = seeded(env, SEED_DB, args.rows)
        print(f"seeded {SEED_DB}: {seeded_info}", flush=True)
        conn = env.connect(SEED_DB)
        cur = conn.cursor()
        cur.execute("VACUUM (ANALYZE) manta")      # as autovacuum leaves a settled table
        table = moray_tables.discover(conn, ["manta"])["manta"]

        def count():
            cur.execute("SELECT count(*) FROM manta")
            return cur.fetchone()[0]

        def census(mode):
            return moray_census.take(conn, env.shard, [table], bytes_mode=mode)

        runs = {"count": count, "census_sampled": lambda: census("sampled"),
                "census_rows": lambda: census("none"), "census_exact": lambda: census("exact")}
        for fn in runs.values():             # warm the cache
            fn()
        times = {k: [] for k in runs}
        n = count()
        for i in range(args.rounds):
            order = list(runs) if i % 2 == 0 else list(reversed(list(runs)))
            for k in order:
                secs, out = timed(runs[k])
                if k != "count":
                    assert out.total_rows == n, (out.total_rows, n)
                times[k].append(secs)
        med = {k: median(v) for k, v in times.items()}
        exact = census("exact")
        sampled = census("sampled")
        vnodes = len(exact.rows["manta"])
        err = [abs(sampled.bytes["manta"][v] - b) / float(b) for v, b in exact.bytes["manta"].items() if b]
        bytes_error = {"total": round(abs(sampled.total_bytes - exact.total_bytes) / float(exact.total_bytes), 5),
                       "per_vnode_median": round(median(err), 4), "per_vnode_p90": round(sorted(err)[int(0.9 * len(err))], 4),
                       "method": sampled.bytes_method["manta"]}
        ratio_sampled = round(med["census_sampled"] / med["count"], 3)
        ratio_rows = round(med["census_rows"] / med["count"], 3)
        ratio_exact = round(med["census_exact"] / med["count"], 3)
        cur.execute("EXPLAIN SELECT count(*) FROM manta")
        plan_count = [r[0] for r in cur.fetchall()]
        cur.execute("EXPLAIN SELECT _vnode, count(*) FROM manta WHERE _vnode IS NOT NULL GROUP BY _vnode")
        plan_rows = [r[0] for r in cur.fetchall()]
        conn.close()
        summary = {"benchmark": "moray_census", "server": "scratch" if args.scratch else "lab shard",
                   "rows": n, "vnodes": vnodes, "rounds": args.rounds,
                   "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
                   "median_seconds": {k: round(v, 4) for k, v in med.items()},
                   "ratio_census_default_to_count": ratio_sampled, "ratio_census_rows_to_count": ratio_rows,
                   "ratio_census_exact_bytes_to_count": ratio_exact, "sampled_bytes_error": bytes_error,
                   "target_ratio": 1.5, "plans": {"count": plan_count, "census_rows": plan_rows},
                   "machine": machine()}
        summary["pass"] = ratio_sampled <= 1.5 and ratio_rows <= 1.5
        path = save_result("moray_census", summary)
        print(f"count(*) {med['count']:.3f}s | census default (rows + sampled bytes) {med['census_sampled']:.3f}s "
              f"| rows only {med['census_rows']:.3f}s | rows + exact bytes {med['census_exact']:.3f}s "
              f"(medians of {args.rounds}, {n} rows, {vnodes} vnodes)")
        print(f"sampled bytes vs exact: total off by {bytes_error['total']:.3%}, per vnode median "
              f"{bytes_error['per_vnode_median']:.2%}, p90 {bytes_error['per_vnode_p90']:.2%} ({bytes_error['method']})")
        print(f"RESULT census/count(*) time ratio: default {ratio_sampled}, rows only {ratio_rows} "
              f"(exact bytes {ratio_exact}, information only); target <= 1.5: "
              f"{'PASS' if summary['pass'] else 'FAIL'}; saved {path}")
        return 0 if summary["pass"] else 1
    finally:
        env.stop()


if __name__ == "__main__":
    sys.exit(main())
