#!/usr/bin/env python3
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Benchmark: deleting one hot vnode whose rows are scattered through the table (RFD 103's case).

A throwaway primary (no standby) holds N background rows of one shard plus
H rows of one hot vnode, all inserted in random order, so the hot vnode's rows
(and ids) are spread over every page, as a big directory written over years
is. Compared on identical copies: one ``DELETE ... WHERE _vnode = ANY('{v}')``
against moray_delete with strategy ``vnode`` (the ``_vnode`` index, which
auto picks for a small share of the table) and ``auto``.

This is the case where a "LIMIT n" batch can go quadratic: if the planner
scans the table (or a bitmap of the whole vnode) for every batch, each batch
re-reads the rows earlier batches deleted. The batch sub-select is ordered by
``_vnode`` so that the planner walks ``<t>__vnode_idx`` and stops after n live
rows.

    .venv/bin/python bench/moray_hot_vnode_bench.py [--rows 300000] [--hot 100000] [--batch 1000]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moray_bench_common import ScratchPG, copy_database, machine, save_result, seed  # noqa: E402

from ansible_collections.manta.ops.plugins.module_utils import moray_delete, moray_pg  # noqa: E402
from ansible_collections.manta.ops.plugins.module_utils import throttle as th  # noqa: E402
from ansible_collections.manta.ops.plugins.module_utils.fash.topology import Topology  # noqa: E402

HOT = 7


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=300000)
    ap.add_argument("--hot", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    pg = ScratchPG().start()
    try:
        topo = Topology.create(["tcp://1.m:2020", "tcp://2.m:2020"], 4096)
        admin = pg.connect("postgres")
        conn = pg.connect("moray")
        cur = conn.cursor()
        seed(conn, topo, "tcp://1.m:2020", args.rows, analyze=False)
        cur.execute("SET session_replication_role = replica")
        cur.execute("CREATE TEMP TABLE t AS SELECT _key, _value, _etag, _mtime, _vnode, dirname, name, owner, "
                    "objectid, type FROM manta UNION ALL SELECT '/hot/stor/big/' || g, repeat('x', 600), "
                    "'ABCDEF01', 0, %s, '/hot/stor/big', g::text, 'hot', g::text, 'object' "
                    "FROM generate_series(1, %s) g", (HOT, args.hot))
        cur.execute("TRUNCATE manta")
        cur.execute("ALTER SEQUENCE manta_serial RESTART WITH 1")
        cur.execute("INSERT INTO manta (_key, _value, _etag, _mtime, _vnode, dirname, name, owner, objectid, type) "
                    "SELECT * FROM t ORDER BY random()")
        cur.execute("DROP TABLE t")
        cur.execute("VACUUM ANALYZE manta")
        conn.close()
        copy_database(admin, "moray", "single")
        c = pg.connect("single")
        t0 = time.monotonic()
        c.cursor().execute("DELETE FROM manta WHERE _vnode = ANY(%s::bigint[])", ([HOT],))
        single = time.monotonic() - t0
        c.close()
        out = {"single_delete_seconds": round(single, 3)}
        for strategy in ("vnode", "auto"):
            copy_database(admin, "moray", "cand")
            target = moray_pg.resolve("s", dsn=pg.dsn("cand"))
            r = moray_delete.delete_vnode_rows("s", target, [HOT], force=True, strategy=strategy,
                                               throttle=th.Throttle(dict(th.UNTHROTTLED, batch_size=args.batch)))
            assert r["rows_deleted"] == args.hot and r["verified"]
            out[strategy] = {"delete_seconds": r["seconds"]["delete"], "plan": r["strategy"]["manta"],
                             "ratio": round(single / r["seconds"]["delete"], 3)}
            admin.cursor().execute("DROP DATABASE cand")
        summary = {"benchmark": "moray_hot_vnode", "rows": args.rows, "hot_rows": args.hot,
                   "batch_size": args.batch, **out, "machine": machine()}
        path = save_result("moray_hot_vnode", summary)
        print(f"one DELETE {single:.2f}s | vnode plan {out['vnode']['delete_seconds']}s (ratio {out['vnode']['ratio']}) "
              f"| auto ({out['auto']['plan']}) {out['auto']['delete_seconds']}s (ratio {out['auto']['ratio']}); "
              f"saved {path}")
        return 0
    finally:
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
