#!/usr/bin/env python3
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Scan rate of manta.ops.evacuate_scan against `COPY (SELECT _value FROM manta) TO STDOUT`
on the same shard, in the same run.

The shard's `manta` table gets ``--rows`` realistic object rows (moray's columns, the
_value of reference/evacuate.md §1.3, two sharks each among ``--nodes`` storage ids,
so one node holds about 2/nodes of them; the default region is the seed's KR region of
1014 storage nodes, of which it plans to evacuate 90, one rack, at a time). The
candidate is the module's whole scan: windows of ``_id``, the server-side
pre-filter, the exact JSON check, and the matches stored in a job store on the
storage shard's primary (as the module does: ``--parallel`` window queries and
as many job-store writers, progress included). Cases: ``--evacuate`` lists how many
nodes are evacuated at once (default 1, 90 and 250: one node, the seed's rack, the
seed's 25% of the region). Rates are table rows per second; best of ``--repeat``
runs, baseline and candidate interleaved.

    .venv/bin/python bench/evacuate_scan_bench.py [--rows 300000] [--nodes 1014] [--evacuate 1,90,250]
"""
import argparse
import base64
import hashlib
import io
import os
import time
import uuid

import psycopg2

from evacuate_common import bench_lab, best_of, save

from ansible_collections.manta.ops.plugins.module_utils import evacuate_metadata as M
from ansible_collections.manta.ops.plugins.module_utils import evacuate_scan as S
from ansible_collections.manta.ops.plugins.module_utils.evacuate_store import JobStore


def esc(s):
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def node_id(n, domain):
    """Storage ids of a region of many nodes; none is a real lab node."""
    return f"{100 + n}.stor.{domain}"


def cleanup(dsn):
    owner = str(uuid.uuid5(uuid.NAMESPACE_URL, "bench-owner"))
    c = psycopg2.connect(dsn)
    with c.cursor() as cur:
        cur.execute("DELETE FROM manta WHERE _key LIKE %s", (f"/{owner}/stor/scanbench/%",))
    c.commit()
    c.close()


def bench_rows(dsn, nodes):
    """Bench rows already in the shard for a region of ``nodes`` (0: none, or another region)."""
    owner = str(uuid.uuid5(uuid.NAMESPACE_URL, "bench-owner"))
    c = psycopg2.connect(dsn)
    with c.cursor() as cur:
        cur.execute("SELECT count(*) FROM manta WHERE _key LIKE %s",
                    (f"/{owner}/stor/scanbench/n{nodes}-%",))
        n = cur.fetchone()[0]
    c.close()
    return n


def fill(dsn, rows, nodes, domain):
    """Realistic rows, COPYed in (the directory-count trigger runs as for real rows)."""
    owner = str(uuid.uuid5(uuid.NAMESPACE_URL, "bench-owner"))
    now = int(time.time() * 1000)
    dcs = ["dc1", "dc2", "dc3"]
    c = psycopg2.connect(dsn)
    cur = c.cursor()
    batch = io.StringIO()
    for i in range(rows):
        d = f"/{owner}/stor/scanbench/n{nodes}-d{i // 100:05d}"
        name = f"f{i:07d}.dat"
        oid = str(uuid.UUID(int=(i * 2654435761) % (1 << 122), version=4))
        a, b = i % nodes, (i * 37 + 1) % nodes
        if a == b:
            b = (b + 1) % nodes
        v = {"dirname": d, "key": f"{d}/{name}", "headers": {}, "mtime": now, "name": name,
             "owner": owner, "roles": [], "type": "object", "contentLength": 4096,
             "contentMD5": base64.b64encode(hashlib.md5(oid.encode()).digest()).decode(),
             "contentType": "application/octet-stream", "etag": oid, "objectId": oid,
             "sharks": [{"datacenter": dcs[a % 3], "manta_storage_id": node_id(a, domain)},
                        {"datacenter": dcs[(a + 1) % 3] if b % 3 == a % 3 else dcs[b % 3],
                         "manta_storage_id": node_id(b, domain)}], "vnode": i % 4096}
        s = M.value_string(v)
        batch.write("\t".join(esc(x) for x in (v["key"], s, M.etag_of(s), str(now), str(i % 4096),
                                                d, name, owner, oid, "object")) + "\n")
        if (i + 1) % 50000 == 0 or i + 1 == rows:
            batch.seek(0)
            cur.copy_expert("COPY manta (_key, _value, _etag, _mtime, _vnode, dirname, name, owner, "
                            "objectid, type) FROM STDIN", batch)
            c.commit()
            batch = io.StringIO()
    c.close()
    c = psycopg2.connect(dsn)
    c.autocommit = True
    c.cursor().execute("VACUUM ANALYZE manta")
    c.close()


class Sink(io.RawIOBase):
    def __init__(self):
        self.n = 0

    def write(self, b):
        self.n += len(b)
        return len(b)

    def writable(self):
        return True


def baseline(dsn):
    c = psycopg2.connect(dsn)
    t = time.monotonic()
    c.cursor().copy_expert("COPY (SELECT _value FROM manta) TO STDOUT", Sink())
    dt = time.monotonic() - t
    c.close()
    return dt


def candidate(dsn, job_dsn, nodes, chunk, parallel):
    """The module's scan: windows, pre-filter, exact check, matches + progress stored."""
    jconn = psycopg2.connect(job_dsn)
    store = JobStore(jconn, "evac_bench")
    store.ensure_schema()
    job = "scanbench-" + uuid.uuid4().hex[:8]
    store.create_job(job, [{"storage_id": n} for n in nodes], {}, {})
    c0 = psycopg2.connect(dsn)
    cols = S.id_columns(c0)
    starts = {}
    for col in cols:
        store.start_scan(job, 1, "s", col, S.max_id(c0, col))
        starts[col] = 0
    c0.close()
    sk = S.StoreSink(JobStore(psycopg2.connect(job_dsn), "evac_bench"), job, 1, "s",
                     writers=parallel,
                     new_store=lambda: JobStore(psycopg2.connect(job_dsn), "evac_bench"))
    t = time.monotonic()
    st = S.ShardScan("s", lambda: psycopg2.connect(dsn), nodes, sk.sink, start=starts, chunk=chunk,
                     parallel=parallel).run()
    sk.close()
    dt = time.monotonic() - t
    cur = jconn.cursor()
    cur.execute("SELECT count(DISTINCT key) FROM evac_bench.objects WHERE job = %s", (job,))
    candidate.objects = cur.fetchone()[0]
    cur.execute("DELETE FROM evac_bench.objects WHERE job = %s", (job,))
    cur.execute("DELETE FROM evac_bench.scan_progress WHERE job = %s", (job,))
    cur.execute("DELETE FROM evac_bench.jobs WHERE job = %s", (job,))
    jconn.commit()
    jconn.close()
    candidate.matched = st["matched"]
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300000)
    ap.add_argument("--nodes", type=int, default=1014, help="storage nodes in the region")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=S.DEFAULT_CHUNK)
    ap.add_argument("--evacuate", default="1,90,250",
                    help="comma-separated: how many nodes each case evacuates at once")
    ap.add_argument("--parallel", type=int, default=3)
    ap.add_argument("--keep", action="store_true",
                    help="leave the rows in the shard at the end, and reuse them when present")
    a = ap.parse_args()
    lab = bench_lab()
    st = lab.status
    dom = st["domain"]
    shard = f"2.moray.{dom}"
    dsn = lab.primary_dsn(shard)
    job_dsn = lab.primary_dsn(f"1.moray.{dom}")
    t0 = time.monotonic()
    if not (a.keep and bench_rows(dsn, a.nodes) == a.rows):
        cleanup(dsn)
        fill(dsn, a.rows, a.nodes, dom)
    c = psycopg2.connect(dsn)
    cur = c.cursor()
    cur.execute("SELECT count(*), pg_size_pretty(pg_total_relation_size('manta')) FROM manta")
    total, size = cur.fetchone()
    c.close()
    print(f"{shard}: {total} rows ({size}) after adding {a.rows} in {time.monotonic() - t0:.1f}s")
    cases = []
    for k in (int(x) for x in a.evacuate.split(",")):
        if not 1 <= k <= a.nodes:
            ap.error(f"--evacuate: {k} is not between 1 and --nodes ({a.nodes})")
        ids = [node_id(7, dom)] if k == 1 else [node_id(i, dom) for i in range(k)]
        cases.append((f"{k}/{a.nodes}", ids))
    out = {"rows": total, "table_size": size, "nodes_in_region": a.nodes, "cases": []}
    for name, nodes in cases:
        b, s = best_of(a.repeat, lambda: baseline(dsn),
                       lambda: candidate(dsn, job_dsn, nodes, a.chunk, a.parallel))
        ratio = b / s
        row = {"case": name, "nodes": len(nodes), "matched": candidate.matched,
               "objects_matched": candidate.objects,
               "selectivity": round(candidate.objects / total, 4),
               "baseline_rows_per_s": round(total / b), "scan_rows_per_s": round(total / s),
               "baseline_s": round(b, 3), "scan_s": round(s, 3), "ratio": round(ratio, 2),
               "load": [round(x, 2) for x in os.getloadavg()]}
        out["cases"].append(row)
        print(f"{name:<9} nodes: copies {row['matched']:>7}, rows {row['selectivity'] * 100:.1f}%  "
              f"COPY {row['baseline_rows_per_s']:>9} rows/s  scan {row['scan_rows_per_s']:>9} rows/s  "
              f"ratio {ratio:.2f} (target >= 0.5)  load {row['load'][0]}", flush=True)
    if not a.keep:
        cleanup(dsn)
    save("scan", out)


if __name__ == "__main__":
    main()
