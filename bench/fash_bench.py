#!/usr/bin/env python3
"""Benchmark: manta-fash (this collection) against node-fash 3.0.1, same machine, same inputs, same run.

    .venv/bin/python bench/fash_bench.py                 # the full run (about 8 minutes: node's remap)
    .venv/bin/python bench/fash_bench.py --node-remap 1000   # scaled-down node remap baseline (stated)

Measures, as operators run them (the ``fash`` and ``manta-fash`` commands; wall clock and CPU time):

1. ``create`` of a 1,000,000-vnode ring over 3 pnodes            target: >= 5x faster than node-fash
2. ``remap-vnode`` of 10,000 random vnodes to a new pnode          target: >= 100x faster
3. ``remap-vnode`` of all 333,334 vnodes of one pnode to a new one target: <= 5 s, <= 500 MB peak RSS
   (node-fash cannot take such a list on one command line; it is timed on this side only)

The LevelDB dumps of the two rings are compared after steps 1 and 2 (``--no-verify`` skips it).
Results are printed and written to bench/results/fash.json.
"""
import argparse
import json
import os
import pathlib
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
NODE_FASH = ROOT / ".venv" / "fash-oracle" / "node_modules" / ".bin" / "fash"
MANTA_FASH = ROOT / ".venv" / "bin" / "manta-fash"
PNODES = ["tcp://%d.moray.example.com:2020" % i for i in range(1, 6)]


def _median(values):
    return sorted(values)[len(values) // 2]


def _cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# label -> list of CPU seconds (user + sys) of each run: the RUSAGE_CHILDREN delta around it, which counts
# the command and every process it forked and waited for (manta-fash's table builders included). Wall
# time on a shared, loaded machine mostly measures waiting for a CPU; CPU time is the steadier comparison.
CPU = {}


def run(cmd, label=None):
    """Run a command; return (wall seconds, None, stdout)."""
    c0 = _cpu_children()
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True)
    wall = time.perf_counter() - t0
    if label:
        CPU.setdefault(label, []).append(_cpu_children() - c0)
    if proc.returncode != 0:
        raise SystemExit("command failed (%d): %s\n%s" % (proc.returncode, " ".join(map(str, cmd))[:300],
                                                          proc.stderr.decode()[-2000:]))
    return wall, None, proc.stdout


# manta-fash run through this wrapper reports its own peak RSS (VmHWM). The kernel's
# ru_maxrss of a child would also count the pages of this (large) benchmark
# process that the child shared between fork and exec.
_WRAP = ("import sys\n"
         "from ansible_collections.manta.ops.plugins.module_utils.fash.cli import main\n"
         "rc = main(sys.argv[1:])\n"
         "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
         "sys.stderr.write('\\nVMHWM_KB=%s\\n' % hwm[0])\n"
         "sys.exit(rc)\n")


def run_measured(args, label=None):
    """Run ``manta-fash ARGS``; return (wall seconds, peak RSS MB)."""
    cmd = [str(ROOT / ".venv" / "bin" / "python"), "-c", _WRAP] + [str(a) for a in args]
    c0 = _cpu_children()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if label:
        CPU.setdefault(label, []).append(_cpu_children() - c0)
    err = proc.stderr.decode()
    if proc.returncode != 0:
        raise SystemExit("manta-fash failed (%d): %s\n%s" % (proc.returncode, " ".join(map(str, args))[:300], err))
    hwm = [line for line in err.splitlines() if line.startswith("VMHWM_KB=")]
    return wall, int(hwm[-1].split("=")[1]) / 1024.0


def dumps_equal(a, b):
    """Compare two rings key by key, streaming (both dumps never sit in memory)."""
    import plyvel
    da, db = plyvel.DB(a), plyvel.DB(b)
    try:
        sentinel = object()
        from itertools import zip_longest
        for x, y in zip_longest(da.iterator(), db.iterator(), fillvalue=sentinel):
            if x != y:
                return False
        return True
    finally:
        da.close()
        db.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vnodes", type=int, default=1000000)
    ap.add_argument("--remap", type=int, default=10000, help="vnodes in the remap benchmark (default 10000)")
    ap.add_argument("--node-remap", type=int, default=None,
                    help="remap only this many vnodes with node-fash and scale its time linearly (stated in "
                         "the output); default: the same count as --remap")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each manta-fash step; the median is used")
    ap.add_argument("--no-verify", action="store_true", help="do not compare the LevelDB dumps")
    ap.add_argument("--steps", default="create,remap,pnode", help="comma-separated subset of create,remap,pnode")
    ap.add_argument("--nice", type=int, default=0,
                    help="run at this nice value (negative needs root): on a shared machine, shields both sides' "
                         "measurements from other work alike")
    ap.add_argument("--workdir", help="where to build the rings (default: a temporary directory)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fash.json"))
    args = ap.parse_args()
    if args.nice:
        os.nice(args.nice)
    if not NODE_FASH.exists():
        raise SystemExit("node-fash is not installed: run scripts/setup.sh")
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="fash-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    n = args.vnodes
    pn = ", ".join(PNODES[:3])
    res = {"vnodes": n, "pnodes": 3, "nice": os.nice(0),
           "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}}
    print("fash benchmark: %d vnodes, 3 pnodes, work dir %s, load %.2f %.2f %.2f, nice %d"
          % ((n, work) + os.getloadavg() + (os.nice(0),)))

    # 1. create ----------------------------------------------------------------
    node_ring, py_ring = work / "node_ring", work / "py_ring"
    node_times, times = [], []
    for i in range(args.repeat):          # interleaved, so both see the same machine load
        shutil.rmtree(node_ring, ignore_errors=True)
        node_times.append(run([NODE_FASH, "create", "-v", n, "-b", "leveldb", "-l", node_ring, "-p", pn],
                              "node_create")[0])
        shutil.rmtree(py_ring, ignore_errors=True)
        t, rss = run_measured(["create", "-v", n, "-b", "leveldb", "-l", py_ring, "-p", pn], "py_create")
        times.append(t)
    t_node = _median(node_times)
    t_py = _median(times)
    cpu_node = _median(CPU["node_create"])
    cpu_py = _median(CPU["py_create"])
    res["create"] = {"node_s": t_node, "node_runs_s": node_times, "python_s": t_py, "python_runs_s": times,
                     "ratio": t_node / t_py, "python_peak_rss_mb": rss, "ok": t_node / t_py >= 5,
                     "node_cpu_s": cpu_node, "node_cpu_runs_s": CPU["node_create"],
                     "python_cpu_s": cpu_py, "python_cpu_runs_s": CPU["py_create"],
                     "cpu_ratio": cpu_node / cpu_py, "load_after": os.getloadavg()}
    print("create     medians of %d runs each          node-fash   manta-fash    ratio   (target >= 5x wall)"
          % len(times))
    print("           wall                           %8.2f s   %8.3f s   %5.1fx"
          % (t_node, t_py, t_node / t_py))
    print("           CPU (user+sys, with children)  %8.2f s   %8.3f s   %5.1fx"
          % (cpu_node, cpu_py, cpu_node / cpu_py))
    print("           runs (wall/CPU): node-fash %s; manta-fash %s"
          % (", ".join("%.2f/%.2f" % x for x in zip(node_times, CPU["node_create"])),
             ", ".join("%.3f/%.3f" % x for x in zip(times, CPU["py_create"]))))
    if not args.no_verify:
        same = dumps_equal(str(node_ring), str(py_ring))
        res["create"]["dumps_identical"] = same
        print("           LevelDB dumps identical: %s" % same)

    steps = set(args.steps.split(","))
    # 2. remap 10,000 ------------------------------------------------------------
    if "remap" in steps:
        bench_remap(args, res, work, n, node_ring, py_ring)
    if "pnode" in steps:
        bench_pnode(args, res, work, py_ring)
    ok = all(res[k]["ok"] for k in ("create", "remap", "remap_pnode") if k in res)
    res["targets_met"] = ok
    print("targets met: %s" % ok)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print("results written to %s" % out)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def bench_remap(args, res, work, n, node_ring, py_ring):
    rnd = random.Random(42)
    sample = sorted(rnd.sample(range(n), args.remap))
    k_node = args.node_remap or args.remap
    node_sample = sample[:k_node]
    vfile = work / "remap.txt"
    vfile.write_text(",".join(map(str, sample)))
    print("remap      node-fash: remapping %d vnodes (node-fash 3.0.1 takes minutes for 10,000)..." % k_node,
          flush=True)
    t_node_raw, _, _ = run([NODE_FASH, "remap-vnode", "-b", "leveldb", "-l", node_ring, "-p", PNODES[3],
                            "-v", ",".join(map(str, node_sample))])
    t_node = t_node_raw * (args.remap / float(k_node))
    times = []
    for i in range(args.repeat):
        ring = work / ("py_remap_%d" % i)
        shutil.rmtree(ring, ignore_errors=True)
        shutil.copytree(py_ring, ring)
        t, rss = run_measured(["remap-vnode", "-q", "-b", "leveldb", "-l", ring, "-p", PNODES[3],
                               "-v", "@%s" % vfile])
        times.append(t)
    t_py = sorted(times)[len(times) // 2]
    res["remap"] = {"vnodes": args.remap, "node_vnodes_measured": k_node, "node_measured_s": t_node_raw,
                    "node_s": t_node, "node_scaled": k_node != args.remap, "python_s": t_py,
                    "python_runs_s": times, "ratio": t_node / t_py, "python_peak_rss_mb": rss,
                    "ok": t_node / t_py >= 100}
    print("remap      node-fash %8.2f s%s   manta-fash %6.3f s   ratio %6.1fx   (target >= 100x)"
          % (t_node, " (scaled from %d vnodes in %.2f s)" % (k_node, t_node_raw) if k_node != args.remap else "",
             t_py, t_node / t_py))
    if not args.no_verify and k_node == args.remap:
        same = dumps_equal(str(node_ring), str(work / "py_remap_0"))
        res["remap"]["dumps_identical"] = same
        print("           LevelDB dumps identical: %s" % same)


def bench_pnode(args, res, work, py_ring):
    # 3. remap a whole pnode (333,334 vnodes) -------------------------------------
    ring = work / "py_whole"
    shutil.rmtree(ring, ignore_errors=True)
    shutil.copytree(py_ring, ring)
    _, _, out = run([MANTA_FASH, "get-vnodes", "-l", ring, PNODES[0]])
    vs = json.loads(out)
    wfile = work / "whole.txt"
    wfile.write_text("\n".join(map(str, vs)))
    times = []
    rsses = []
    for i in range(args.repeat):
        r = work / ("py_whole_%d" % i)
        shutil.rmtree(r, ignore_errors=True)
        shutil.copytree(py_ring, r)
        t, rss = run_measured(["remap-vnode", "-q", "-b", "leveldb", "-l", r, "-p", PNODES[4],
                               "-v", "@%s" % wfile])
        times.append(t)
        rsses.append(rss)
    t_py = sorted(times)[len(times) // 2]
    res["remap_pnode"] = {"vnodes": len(vs), "python_s": t_py, "python_runs_s": times,
                          "python_peak_rss_mb": max(rsses)}
    print("remap pnode %d vnodes: manta-fash %.3f s, peak RSS %.0f MB   (target <= 5 s, <= 500 MB)"
          % (len(vs), t_py, max(rsses)))
    res["remap_pnode"]["ok"] = t_py <= 5 and max(rsses) <= 500


if __name__ == "__main__":
    sys.exit(main())
