#!/usr/bin/env python3
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Metadata update rate per shard: manta.ops.evacuate_metadata's writer (etag-conditional
batched UPDATEs straight on the shard primary) against moray's own path (putObject with
the etag, through the lab's moray), same shard, same rows, same run.

``--rows`` seeded objects on one shard get their evacuated shark swapped to another
node and back; every update is conditional on the etag it read, as in production.
Target: >= 5,000 rows/s per shard (the tech review needs 161/s per shard).

    .venv/bin/python bench/evacuate_metadata_bench.py [--rows 20000]
"""
import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2

from evacuate_common import bench_lab, save

from ansible_collections.manta.ops.plugins.module_utils import evacuate_metadata as M


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--moray-rows", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    lab = bench_lab()
    st = lab.status
    dom = st["domain"]
    lab.run("seed", "--objects", int(a.rows * 3.2))
    shard = f"2.moray.{dom}"
    dsn = lab.primary_dsn(shard)
    node, fake = f"1.stor.{dom}", f"99.stor.{dom}"
    c = psycopg2.connect(dsn)
    cur = c.cursor()
    cur.execute("SELECT _key, _value FROM manta WHERE type = 'object' AND _value LIKE %s "
                "ORDER BY _key LIMIT %s", (f'%"{node}"%', a.rows))
    rows = []
    for i, (k, v) in enumerate(cur.fetchall()):
        d = json.loads(v)
        rows.append({"oid": i, "key": k, "node": node, "dest": fake, "object_id": d["objectId"],
                     "md5": d["contentMD5"]})
    c.close()
    back = [dict(r, node=fake, dest=node) for r in rows]
    dcs = {fake: "lab-dc9", node: "lab-dc1"}
    rates = []
    for _ in range(a.repeat):
        for rs in (rows, back):
            w = M.ShardWriter(shard, lambda: psycopg2.connect(dsn), dcs, batch_size=a.batch,
                              parallel=a.parallel)
            t = time.monotonic()
            fates = w.apply(rs)
            dt = time.monotonic() - t
            w.close()
            assert {f[1] for f in fates} == {"done"}, set(f[1:3] for f in fates)
            rates.append(len(rs) / dt)
    best = max(rates)
    median = sorted(rates)[len(rates) // 2]

    # moray's path: getObject + putObject(etag) per object, 8 clients in parallel
    from manta_lab import rpc
    murl = next(m["url"] for m in st["shards"][shard]["morays"])
    mc = rpc.Client(murl, timeout=30)
    sub = rows[:a.moray_rows]

    def swap(r, frm, to):
        rec = mc.get_object("manta", r["key"])
        v = rec["value"]
        v["sharks"] = [{"datacenter": dcs[to], "manta_storage_id": to}
                       if s["manta_storage_id"] == frm else s for s in v["sharks"]]
        mc.put_object("manta", r["key"], v, etag=rec["_etag"])

    t = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda r: swap(r, node, fake), sub))
    moray_rate = len(sub) / (time.monotonic() - t)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda r: swap(r, fake, node), sub))
    out = {"shard": shard, "rows": len(rows), "batch": a.batch, "parallel": a.parallel,
           "rows_per_s_best": round(best), "rows_per_s_median": round(median),
           "moray_putobject_rows_per_s": round(moray_rate),
           "ratio_vs_target_5000": round(best / 5000, 2), "ratio_vs_needed_161": round(best / 161, 1),
           "ratio_vs_moray": round(best / moray_rate, 1)}
    print(f"{shard}: {len(rows)} etag-conditional updates, best {best:.0f} rows/s, median "
          f"{median:.0f} rows/s (target >= 5000: ratio {best / 5000:.2f}; the review needs 161/s: "
          f"x{best / 161:.0f}); moray getObject+putObject(etag), 8 clients: {moray_rate:.0f} rows/s",
          flush=True)
    save("metadata", out)


if __name__ == "__main__":
    main()
