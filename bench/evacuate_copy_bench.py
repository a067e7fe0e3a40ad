#!/usr/bin/env python3
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Copy throughput of manta.ops.evacuate_copy's engine against curl, same run, same servers.

* 1 MiB objects (issue #7's target): ``--big`` objects (default 1024, 1 GiB) are
  written on storage node 1 (real files served by its nginx) and made durable.
  Baseline: plain curl (``--parallel --parallel-max C``) GETs them from node 1's nginx
  into a directory under node 2's root. Candidate: the copy engine (the whole of what
  ``evacuate_copy`` runs) pulls the same objects from the same nginx into node 2's
  root with the same C in flight: the idempotence check of each destination path,
  MD5 verified while streaming, temp file, fsync of file and directory, rename, and
  each copy read back through node 2's nginx (HEAD). Target: candidate >= 0.6 x curl.
* ``--rounds`` interleaved rounds (every other round in reverse order, so neither
  side always runs first); both sides' best and median and the median of the
  per-round ratios are reported, with the load average around each round and the CPU
  seconds each side used (the machine is shared: the figures mean little without it).
* Between rounds, untimed, each side's copies are flushed (``sync -f``) and moved out of
  the node's root into a trash directory deleted at the end: every timed run starts
  with an empty destination, no dirty data of the previous run to write back, and no
  mass of just-deleted inodes (ext4 without a journal scans recently deleted inodes
  on every create, which made both sides pay for the previous round's cleanup).
* Secondary figures: curl + ``md5sum`` of every file + ``sync -f`` (``--verified-rounds``),
  and the engine re-run over copies already in place (idempotence: nothing fetched).
* 4 KiB objects: ``--small`` objects into one destination; objects/s (target >= 500),
  with curl's rate for reference.

    .venv/bin/python bench/evacuate_copy_bench.py [--big 1024] [--rounds 5] [--concurrency 8]
        [--small 5000] [--verified-rounds 2]

``$LAB_HOME`` measures a running lab; otherwise the bench brings up its own
(``$BENCH_LAB_BASE_PORT`` picks its base port).
"""
import argparse
import base64
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time

from evacuate_common import bench_lab, rounds, save

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
    subprocess.run(["sync", "-f", d], check=True)
    return tasks


class Trash:
    """Untimed cleaning between rounds: flush a directory, move it out of the node's
    root (same filesystem: a rename), delete everything at the end."""

    def __init__(self, near):
        self.dir = tempfile.mkdtemp(prefix="copybench-trash-", dir=os.path.dirname(near))
        self.n = 0

    def take(self, path):
        if os.path.exists(path):
            subprocess.run(["sync", "-f", path], check=True)
            self.n += 1
            os.rename(path, os.path.join(self.dir, str(self.n)))

    def empty(self, final=False):
        shutil.rmtree(self.dir, ignore_errors=True)
        if not final:
            os.makedirs(self.dir)


def _cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _curl_config(tasks, src_url, dest_dir):
    with tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False) as fh:
        for t in tasks:
            fh.write(f'url = "{src_url}/{t[1]}/{t[2]}"\noutput = "{dest_dir}/{t[2]}"\n')
        return fh.name


def curl_copy(tasks, src_url, dest_dir, conc, cpu=None):
    """Plain curl: the same GETs from the same nginx into the destination's filesystem."""
    shutil.rmtree(dest_dir, ignore_errors=True)
    os.makedirs(dest_dir)
    cfg = _curl_config(tasks, src_url, dest_dir)
    c0 = _cpu(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run(["curl", "-sS", "--no-progress-meter", "--fail", "--parallel", "--parallel-max", str(conc), "-K", cfg],
                   check=True)
    dt = time.monotonic() - t0
    if cpu is not None:
        cpu.append(_cpu(resource.RUSAGE_CHILDREN) - c0)
    os.unlink(cfg)
    n = len(os.listdir(dest_dir))
    assert n == len(tasks), f"curl wrote {n} of {len(tasks)} files"
    return dt


def curl_verified_copy(tasks, src_url, dest_dir, conc):
    """The same move with curl, then what the engine also does: check every file's MD5
    (md5sum, in parallel) and make the files durable (sync -f, i.e. syncfs)."""
    shutil.rmtree(dest_dir, ignore_errors=True)
    os.makedirs(dest_dir)
    cfg = _curl_config(tasks, src_url, dest_dir)
    want = {t[2]: base64.b64decode(t[4]).hex() for t in tasks}
    t0 = time.monotonic()
    subprocess.run(["curl", "-sS", "--no-progress-meter", "--fail", "--parallel", "--parallel-max", str(conc), "-K", cfg],
                   check=True)
    p = subprocess.run(f"cd {dest_dir} && ls | xargs -P {conc} -n 16 md5sum", shell=True,
                       capture_output=True, text=True, check=True)
    subprocess.run(["sync", "-f", dest_dir], check=True)
    dt = time.monotonic() - t0
    got = {ln.split()[1]: ln.split()[0] for ln in p.stdout.splitlines()}
    assert got == want, "curl copies with a bad MD5"
    os.unlink(cfg)
    return dt


def engine_copy(tasks, src_url, dest_root, dest_url, conc, owner, cpu=None, stats=None,
                expect="fetched", md5="auto"):
    """The copy engine as evacuate_copy runs it (verify_url set: HEAD through nginx).
    ``md5="hashlib"``: the engine with OpenSSL's MD5 instead of the SIMD lanes."""
    if expect == "fetched":
        shutil.rmtree(os.path.join(dest_root, owner), ignore_errors=True)
    c = EC.Copier(dest_root, {"src": src_url}, concurrency=conc, verify_url=dest_url, md5=md5)
    c0 = _cpu(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    res = c.run(tasks)
    dt = time.monotonic() - t0
    if cpu is not None:
        cpu.append(_cpu(resource.RUSAGE_SELF) - c0)
    if stats is not None:
        stats.append(c.stats())
    bad = [o for _, o in res if o.status != "copied" or o.reason != expect]
    assert not bad, f"{len(bad)} copies not {expect}: {bad[0].reason} {bad[0].detail}"
    return dt


def check_copies(tasks, dest_root, owner, sample=16):
    """Untimed: a sample of the engine's copies has the right bytes."""
    step = max(1, len(tasks) // sample)
    for t in tasks[::step]:
        assert EC.md5_b64_of_file(os.path.join(dest_root, owner, t[2])) == t[4], t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=1024, help="1 MiB objects (default 1024 = 1 GiB)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--verified-rounds", type=int, default=2,
                    help="rounds of the secondary curl + md5sum + sync comparison (0: none)")
    ap.add_argument("--small", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--small-concurrency", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the small-object test")
    a = ap.parse_args()
    lab = bench_lab()
    nodes = {s["storage_id"]: s for s in lab.status["storage"]}
    ids = sorted(nodes)
    src, dst = nodes[ids[0]], nodes[ids[1]]
    owner = "evacbench"
    out = {"source": src["storage_id"], "destination": dst["storage_id"],
           "load_at_start": [round(x, 2) for x in os.getloadavg()]}
    cdir = os.path.join(dst["root"], "curlbench")
    edir = os.path.join(dst["root"], owner)
    trash = Trash(dst["root"])
    try:
        big = make_objects(src["root"], owner, a.big, 1 << 20)
        mib = a.big
        cpu = {"curl": [], "engine": [], "engine_hashlib": []}
        stats = []

        def between(name):
            if name != "curl":
                check_copies(big, dst["root"], owner)
            trash.take(cdir if name == "curl" else edir)

        res = rounds(a.rounds, {
            "curl": lambda: curl_copy(big, src["url"], cdir, a.concurrency, cpu["curl"]),
            "engine": lambda: engine_copy(big, src["url"], dst["root"], dst["url"], a.concurrency,
                                          owner, cpu["engine"], stats),
            # the same engine with OpenSSL's MD5 (before the lanes), for the same-run gain
            "engine_hashlib": lambda: engine_copy(big, src["url"], dst["root"], dst["url"],
                                                  a.concurrency, owner, cpu["engine_hashlib"],
                                                  md5="hashlib"),
        }, between=between)
        ratios = [r["curl"] / r["engine"] for r in res["rounds"]]
        per_round = []
        for k, r in enumerate(res["rounds"]):
            per_round.append({"order": r["order"], "load_1min": r["load"],
                              "curl_MiB_per_s": round(mib / r["curl"], 1),
                              "engine_MiB_per_s": round(mib / r["engine"], 1),
                              "engine_hashlib_MiB_per_s": round(mib / r["engine_hashlib"], 1),
                              "ratio": round(ratios[k], 3),
                              "curl_cpu_s": round(cpu["curl"][k], 3),
                              "engine_cpu_s": round(cpu["engine"][k], 3),
                              "engine_hashlib_cpu_s": round(cpu["engine_hashlib"][k], 3),
                              "md5": stats[k]["md5"],
                              "engine_commit_batches": stats[k]["commit_batches"],
                              "engine_dir_syncs": stats[k]["dir_syncs"]})
        big_out = {"objects": a.big, "object_bytes": 1 << 20, "concurrency": a.concurrency,
                   "rounds": per_round,
                   "curl_MiB_per_s_best": round(mib / res["curl"]["best"], 1),
                   "curl_MiB_per_s_median": round(mib / res["curl"]["median"], 1),
                   "engine_MiB_per_s_best": round(mib / res["engine"]["best"], 1),
                   "engine_MiB_per_s_median": round(mib / res["engine"]["median"], 1),
                   "ratio_best": round(res["curl"]["best"] / res["engine"]["best"], 3),
                   "ratio_median": round(res["curl"]["median"] / res["engine"]["median"], 3),
                   "ratio_median_of_rounds": round(statistics.median(ratios), 3),
                   "ratio_max_of_rounds": round(max(ratios), 3),
                   "curl_cpu_s_per_GiB": round(statistics.median(cpu["curl"]) * 1024 / mib, 3),
                   "engine_cpu_s_per_GiB": round(statistics.median(cpu["engine"]) * 1024 / mib, 3),
                   "engine_hashlib_MiB_per_s_best": round(mib / res["engine_hashlib"]["best"], 1),
                   "engine_hashlib_cpu_s_per_GiB": round(
                       statistics.median(cpu["engine_hashlib"]) * 1024 / mib, 3),
                   "lanes_gain_best": round(res["engine_hashlib"]["best"] / res["engine"]["best"], 3)}
        for k, r in enumerate(per_round):
            print(f"round {k + 1} ({'/'.join(r['order'])}, load {r['load_1min'][0]:.1f}->"
                  f"{r['load_1min'][1]:.1f}): curl {r['curl_MiB_per_s']:.0f} MiB/s "
                  f"({r['curl_cpu_s']:.2f} cpu s), evacuate_copy {r['engine_MiB_per_s']:.0f} MiB/s "
                  f"({r['engine_cpu_s']:.2f} cpu s, {r['md5']['engine']}, "
                  f"{r['md5'].get('chunks_per_batch', 1)} chunks/batch), ratio {r['ratio']:.2f}; "
                  f"with hashlib {r['engine_hashlib_MiB_per_s']:.0f} MiB/s "
                  f"({r['engine_hashlib_cpu_s']:.2f} cpu s)", flush=True)
        print(f"1 MiB x {a.big}, {a.concurrency} in flight: curl best {big_out['curl_MiB_per_s_best']:.0f} "
              f"/ median {big_out['curl_MiB_per_s_median']:.0f} MiB/s; evacuate_copy best "
              f"{big_out['engine_MiB_per_s_best']:.0f} / median {big_out['engine_MiB_per_s_median']:.0f} "
              f"MiB/s (idempotence check + MD5 while streaming + temp file + fsync file and dir + "
              f"rename + HEAD); ratio best/best {big_out['ratio_best']:.2f}, median/median "
              f"{big_out['ratio_median']:.2f}, median of rounds {big_out['ratio_median_of_rounds']:.2f} "
              f"(target >= 0.6); the engine with hashlib's MD5 best "
              f"{big_out['engine_hashlib_MiB_per_s_best']:.0f} MiB/s (lanes gain "
              f"{big_out['lanes_gain_best']:.2f}x)", flush=True)

        # idempotence: the same tasks again, every copy already in place
        engine_copy(big, src["url"], dst["root"], dst["url"], a.concurrency, owner)
        t = engine_copy(big, src["url"], dst["root"], dst["url"], a.concurrency, owner,
                        expect="present")
        big_out["rerun_present_MiB_per_s"] = round(mib / t, 1)
        print(f"re-run over copies in place (MD5 of each, fsync, HEAD, nothing fetched): "
              f"{mib / t:.0f} MiB/s", flush=True)
        trash.take(edir)

        if a.verified_rounds:
            vr = rounds(a.verified_rounds, {
                "curl_md5_sync": lambda: curl_verified_copy(big, src["url"], cdir, a.concurrency),
                "engine": lambda: engine_copy(big, src["url"], dst["root"], dst["url"],
                                              a.concurrency, owner),
            }, between=lambda name: trash.take(cdir if name != "engine" else edir))
            big_out["curl_md5_sync_MiB_per_s_best"] = round(mib / vr["curl_md5_sync"]["best"], 1)
            big_out["engine_MiB_per_s_best_vs_verified"] = round(mib / vr["engine"]["best"], 1)
            big_out["ratio_vs_curl_md5_sync"] = round(vr["curl_md5_sync"]["best"] / vr["engine"]["best"], 3)
            print(f"secondary: curl + md5sum + sync -f {mib / vr['curl_md5_sync']['best']:.0f} MiB/s, "
                  f"evacuate_copy {mib / vr['engine']['best']:.0f} MiB/s (best of "
                  f"{a.verified_rounds}); ratio {big_out['ratio_vs_curl_md5_sync']:.2f}", flush=True)
        out["big"] = big_out
        trash.empty()
        shutil.rmtree(os.path.join(src["root"], owner))

        if a.small:
            small = make_objects(src["root"], owner, a.small, 4096)
            sr = rounds(max(1, a.repeat), {
                "curl": lambda: curl_copy(small, src["url"], cdir, a.small_concurrency),
                "engine": lambda: engine_copy(small, src["url"], dst["root"], dst["url"],
                                              a.small_concurrency, owner),
            }, between=lambda name: trash.take(cdir if name == "curl" else edir))
            b, c = sr["curl"]["best"], sr["engine"]["best"]
            out["small"] = {"objects": a.small, "object_bytes": 4096,
                            "concurrency": a.small_concurrency,
                            "curl_objects_per_s": round(a.small / b, 1),
                            "engine_objects_per_s": round(a.small / c, 1),
                            "engine_objects_per_s_median": round(a.small / sr["engine"]["median"], 1),
                            "ratio": round(b / c, 2)}
            print(f"4 KiB x {a.small}: curl {a.small / b:.0f} objects/s, evacuate_copy "
                  f"{a.small / c:.0f} objects/s (median {a.small / sr['engine']['median']:.0f}) "
                  f"into one destination (target >= 500)", flush=True)
    finally:
        trash.empty(final=True)
        shutil.rmtree(cdir, ignore_errors=True)
        shutil.rmtree(edir, ignore_errors=True)
        shutil.rmtree(os.path.join(src["root"], owner), ignore_errors=True)
    out["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    save("copy", out)


if __name__ == "__main__":
    main()
