#!/usr/bin/env python3
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Copy throughput of manta.ops.evacuate_copy's engine against curl, same run, same servers.

* 1 MiB objects: ``--big`` objects are written on storage node 1 (real files served
  by its nginx). Baseline: curl (``--parallel --parallel-max C``) GETs them from node 1's
  nginx into node 2's root. Candidate: the copy engine pulls the same objects from the
  same nginx into node 2's root with C copies in flight, checking the MD5 while
  streaming, fsync'ing file and directory, renaming, and reading each copy back through
  node 2's nginx (HEAD). Target: candidate rate >= 0.6 x curl's.
* 4 KiB objects: ``--small`` objects into one destination; objects/s (target >= 500),
  with curl's rate for reference.

    .venv/bin/python bench/evacuate_copy_bench.py [--big 200] [--small 5000] [--concurrency 8]
"""
import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
import time

from evacuate_common import bench_lab, best_of, save

from ansible_collections.manta.ops.plugins.module_utils import evacuate_copy as EC


def make_objects(root, owner, n, size):
    d = os.path.join(root, owner)
    os.makedirs(d, exist_ok=True)
    tasks = []
    for i in range(n):
        oid = f"bench-{size}-{i:06d}"
        data = os.urandom(size)
        with open(os.path.join(d, oid), "wb") as fh:
            fh.write(data)
        tasks.append([i, owner, oid, size, base64.b64encode(hashlib.md5(data).digest()).decode(),
                      ["src"]])
    return tasks


def curl_copy(tasks, src_url, dest_dir, conc):
    shutil.rmtree(dest_dir, ignore_errors=True)
    os.makedirs(dest_dir)
    with tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False) as fh:
        for t in tasks:
            fh.write(f'url = "{src_url}/{t[1]}/{t[2]}"\noutput = "{dest_dir}/{t[2]}"\n')
        cfg = fh.name
    t0 = time.monotonic()
    subprocess.run(["curl", "-sS", "--fail", "--parallel", "--parallel-max", str(conc), "-K", cfg],
                   check=True)
    dt = time.monotonic() - t0
    os.unlink(cfg)
    n = len(os.listdir(dest_dir))
    assert n == len(tasks), f"curl wrote {n} of {len(tasks)} files"
    shutil.rmtree(dest_dir)
    return dt


def curl_verified_copy(tasks, src_url, dest_dir, conc):
    """The same move with curl, then what the engine also does: check every file's MD5
    (md5sum, in parallel) and make the files durable (sync -f, i.e. syncfs)."""
    shutil.rmtree(dest_dir, ignore_errors=True)
    os.makedirs(dest_dir)
    with tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False) as fh:
        for t in tasks:
            fh.write(f'url = "{src_url}/{t[1]}/{t[2]}"\noutput = "{dest_dir}/{t[2]}"\n')
        cfg = fh.name
    want = {t[2]: base64.b64decode(t[4]).hex() for t in tasks}
    t0 = time.monotonic()
    subprocess.run(["curl", "-sS", "--fail", "--parallel", "--parallel-max", str(conc), "-K", cfg],
                   check=True)
    p = subprocess.run(f"cd {dest_dir} && ls | xargs -P {conc} -n 16 md5sum", shell=True,
                       capture_output=True, text=True, check=True)
    subprocess.run(["sync", "-f", dest_dir], check=True)
    dt = time.monotonic() - t0
    got = {ln.split()[1]: ln.split()[0] for ln in p.stdout.splitlines()}
    assert got == want, "curl copies with a bad MD5"
    os.unlink(cfg)
    shutil.rmtree(dest_dir)
    return dt


def engine_copy(tasks, src_url, dest_root, dest_url, conc, owner):
    shutil.rmtree(os.path.join(dest_root, owner), ignore_errors=True)
    c = EC.Copier(dest_root, {"src": src_url}, concurrency=conc, verify_url=dest_url)
    t0 = time.monotonic()
    res = c.run(tasks)
    dt = time.monotonic() - t0
    bad = [o for _, o in res if o.status != "copied" or not o.fetched]
    assert not bad, f"{len(bad)} copies failed: {bad[0].reason} {bad[0].detail}"
    shutil.rmtree(os.path.join(dest_root, owner))
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=200)
    ap.add_argument("--small", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--small-concurrency", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    lab = bench_lab()
    nodes = {s["storage_id"]: s for s in lab.status["storage"]}
    ids = sorted(nodes)
    src, dst = nodes[ids[0]], nodes[ids[1]]
    owner = "evacbench"
    out = {"source": src["storage_id"], "destination": dst["storage_id"]}
    try:
        big = make_objects(src["root"], owner, a.big, 1 << 20)
        cdir = os.path.join(dst["root"], "curlbench")
        b, bv, c = best_of(a.repeat,
                           lambda: curl_copy(big, src["url"], cdir, a.concurrency),
                           lambda: curl_verified_copy(big, src["url"], cdir, a.concurrency),
                           lambda: engine_copy(big, src["url"], dst["root"], dst["url"],
                                               a.concurrency, owner))
        mib = a.big
        out["big"] = {"objects": a.big, "object_bytes": 1 << 20, "concurrency": a.concurrency,
                      "curl_s": round(b, 3), "curl_md5_sync_s": round(bv, 3), "engine_s": round(c, 3),
                      "curl_MiB_per_s": round(mib / b, 1),
                      "curl_md5_sync_MiB_per_s": round(mib / bv, 1),
                      "engine_MiB_per_s": round(mib / c, 1),
                      "ratio": round(b / c, 2), "ratio_vs_curl_md5_sync": round(bv / c, 2)}
        print(f"1 MiB x {a.big}: curl {mib / b:.1f} MiB/s, curl + md5sum + sync {mib / bv:.1f} MiB/s, "
              f"evacuate_copy {mib / c:.1f} MiB/s (MD5 while streaming + fsync + rename + HEAD); "
              f"ratio {b / c:.2f} vs curl (target >= 0.6), {bv / c:.2f} vs curl + md5sum + sync",
              flush=True)
        shutil.rmtree(os.path.join(src["root"], owner))

        small = make_objects(src["root"], owner, a.small, 4096)
        b, c = best_of(max(1, a.repeat - 1),
                       lambda: curl_copy(small, src["url"], os.path.join(dst["root"], "curlbench"),
                                         a.small_concurrency),
                       lambda: engine_copy(small, src["url"], dst["root"], dst["url"],
                                           a.small_concurrency, owner))
        out["small"] = {"objects": a.small, "object_bytes": 4096,
                        "concurrency": a.small_concurrency,
                        "curl_objects_per_s": round(a.small / b, 1),
                        "engine_objects_per_s": round(a.small / c, 1), "ratio": round(b / c, 2)}
        print(f"4 KiB x {a.small}: curl {a.small / b:.0f} objects/s, evacuate_copy "
              f"{a.small / c:.0f} objects/s into one destination (target >= 500)", flush=True)
    finally:
        shutil.rmtree(os.path.join(src["root"], owner), ignore_errors=True)
    save("copy", out)


if __name__ == "__main__":
    main()
