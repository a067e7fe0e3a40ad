#!/usr/bin/env python3
"""Benchmark of playbooks/reshard.yml on the lab: the write-blocked window and the check-mode rehearsal.

For each size (default 20,000 and 1,000,000 rows) a fresh one-shard lab is brought up and seeded with that
many objects (so the shard being split holds that many rows); all the labs first, then, one size right after
the other (so that the windows are measured minutes apart, under comparable load: the 1M seeding alone takes
minutes, and the machine is shared):

  1. `reshard.yml --check --diff` (the rehearsal) is timed;
  2. the reshard of shard 1 into shard 2 (split=balanced, defaults otherwise) runs, and the write-blocked
     window is read from the plan's journal (first electric-moray serving the transitional ring -> last one
     serving the final ring, each from the process's own /status), with the time of every phase, the
     cutover's own timings, each electric-moray swap (stopped -> serving) and the load average.

It prints one line per size, the ratio of the windows (big / small) against the 1.5x budget, and writes
bench/results/reshard_window.json. Targets (docs/bench-reshard.md): window <= 10 s at 20,000 rows,
window(1M) <= 1.5 x window(20k), rehearsal < 60 s.

    .venv/bin/python bench/reshard_window.py [--sizes 20000,1000000] [--base-port 7500,6000] [--keep] [--tag T]

Only the labs it creates are brought down (by `lab down`, which stops processes by pid).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = str(REPO / ".venv" / "bin" / "python")
ANSIBLE = str(REPO / ".venv" / "bin" / "ansible-playbook")
sys.path.insert(0, str(REPO / "lab"))


def lab(home, *args, timeout=3600):
    r = subprocess.run([PY, "-m", "manta_lab.cli", "--home", home, *map(str, args)], capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"lab {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def play(home, *args, timeout=7200):
    env = dict(os.environ, LAB_HOME=home, ANSIBLE_NOCOLOR="1")
    t0 = time.monotonic()
    r = subprocess.run([ANSIBLE, "-i", str(REPO / "inventories" / "lab"), str(REPO / "playbooks" / "reshard.yml"),
                        *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"reshard.yml {' '.join(args)} failed after {dt:.0f}s:\n{r.stdout[-6000:]}")
    return dt, r.stdout


def journal(zk_connect):
    from kazoo.client import KazooClient
    c = KazooClient(hosts=zk_connect)
    c.start()
    try:
        docs = [json.loads(c.get(f"/manta_ops/reshard/plans/{k}")[0])
                for k in c.get_children("/manta_ops/reshard/plans")]
    finally:
        c.stop()
        c.close()
    return sorted(docs, key=lambda d: d["created"])[-1]


def window_parts(doc):
    """Where the window went: every electric-moray's swaps (stopped -> serving, each from the process's own
    /status), relative to the window's start, and the gaps between them."""
    from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
    w = rj.window(doc)
    t0 = w.get("start_ts")
    if not t0:
        return None
    rel = lambda t: round(t - t0, 3) if isinstance(t, (int, float)) else None  # noqa: E731
    swaps = []
    for name, rec in sorted((doc["props"].get("em_swaps") or {}).items()):
        for kind in ("transitional", "final"):
            r = rec.get(kind) or {}
            swaps.append({"em": name, "ring": kind, "stopped": rel(r.get("stopped_ts")),
                          "serving": rel(r.get("serving_ts")),
                          "restart_s": round(r["serving_ts"] - r["stopped_ts"], 3)
                          if r.get("stopped_ts") and r.get("serving_ts") else None})
    return {"swaps": sorted(swaps, key=lambda x: (x["serving"] is None, x["serving"] or 0))}


def free_base(preferred):
    sys.path.insert(0, str(REPO / "tests"))
    from labhandle import _free_base_port
    return int(preferred) if preferred else _free_base_port()


def prepare(n, base):
    """A fresh one-shard lab seeded with ``n`` objects: (home, status, figures)."""
    home = tempfile.mkdtemp(prefix=f"manta-lab-bench-reshard-{n}-", dir="/var/tmp")
    os.chmod(home, 0o755)
    out = {"rows_seeded": n, "base_port": int(base)}
    t0 = time.monotonic()
    lab(home, "up", "--shards", "1", "--base-port", base)
    out["lab_up_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    lab(home, "seed", "--objects", n)
    out["seed_s"] = round(time.monotonic() - t0, 1)
    return home, json.loads(lab(home, "status", "--json")), out


def measure(home, st, out):
    """The rehearsal, then the reshard of shard 1 into shard 2, read back from the plan's journal."""
    from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
    d = st["domain"]
    args = ["-e", f"shard=1.moray.{d}", "-e", f"new_shard=2.moray.{d}", "-e", "split=balanced"]
    dt, text = play(home, *args, "--check", "--diff")
    out["rehearsal_s"] = round(dt, 1)
    out["loadavg_before_reshard"] = [round(x, 2) for x in os.getloadavg()]
    dt, text = play(home, *args)
    out["reshard_s"] = round(dt, 1)
    out["loadavg_after_reshard"] = [round(x, 2) for x in os.getloadavg()]
    doc = journal(st["zookeeper"]["connect"])
    summ = rj.summary(doc)
    out["window_s"] = summ["window"]["seconds"]
    out["window_parts"] = window_parts(doc)
    out["phases_s"] = {r["phase"]: r["seconds"] for r in summ["phases"]}
    out["window_timings"] = doc["props"].get("window_timings")
    out["rows_moved"] = ((doc["props"].get("census") or {}).get("moving") or {}).get("rows")
    out["shard_rows"] = out["rows_moved"] + ((doc["props"].get("census") or {}).get("staying") or {}).get("rows", 0) \
        if out["rows_moved"] is not None else None
    out["vnodes_moved"] = summ["vnodes_moving"]
    out["delete"] = doc["props"].get("delete_result", {}).get("rows_per_second")
    return out


def down(home, keep):
    subprocess.run([PY, "-m", "manta_lab.cli", "--home", home, "down"], capture_output=True, timeout=600)
    if not keep:
        shutil.rmtree(home, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,1000000")
    ap.add_argument("--base-port", help="base port of each size's lab, comma-separated (one lab per size, all up "
                                        "at once); default: free blocks")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--tag", help="write bench/results/reshard_window-<tag>.json instead")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    bases = [x for x in (a.base_port or "").split(",") if x]
    if bases and len(bases) != len(sizes):
        raise SystemExit(f"--base-port: give one base port per size ({len(sizes)}), got {a.base_port}")
    res = {"host": os.uname().nodename, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "runs": {},
           "method": "every size's lab is brought up and seeded first; then the reshards run back to back, so "
                     "that the windows are measured minutes apart under comparable load"}
    labs = []
    try:
        # every lab first (the 1M seeding takes minutes: the machine's load drifts meanwhile) ...
        for i, n in enumerate(sizes):
            base = bases[i] if bases else str(free_base(None))
            labs.append((n,) + prepare(n, base))
            print(f"{n:>9} rows: lab up {labs[-1][3]['lab_up_s']}s, seeded in {labs[-1][3]['seed_s']}s", flush=True)
        # ... then the measured reshards, one right after the other
        for n, home, st, out in labs:
            r = measure(home, st, out)
            res["runs"][str(n)] = r
            print(f"{n:>9} rows: window {r['window_s']:.2f}s  rehearsal {r['rehearsal_s']:.1f}s  "
                  f"load {r['loadavg_before_reshard'][0]:.1f}-{r['loadavg_after_reshard'][0]:.1f}  "
                  f"reshard {r['reshard_s']:.0f}s  (seed {r['seed_s']:.0f}s, shard rows {r.get('shard_rows')}, "
                  f"moved {r.get('rows_moved')} rows / {r['vnodes_moved']} vnodes)", flush=True)
    finally:
        for n, home, st, out in labs:
            down(home, a.keep)
    res["loadavg_end"] = os.getloadavg()
    if len(sizes) >= 2:
        small, big = res["runs"][str(sizes[0])], res["runs"][str(sizes[-1])]
        ratio = big["window_s"] / small["window_s"]
        res["ratio"] = round(ratio, 3)
        print(f"window ratio {sizes[-1]}/{sizes[0]} rows: {ratio:.2f} (budget 1.50) "
              f"{'OK' if ratio <= 1.5 else 'OVER'}; window at {sizes[0]}: {small['window_s']:.2f}s (budget 10s) "
              f"{'OK' if small['window_s'] <= 10 else 'OVER'}; rehearsal max "
              f"{max(r['rehearsal_s'] for r in res['runs'].values()):.1f}s (budget 60s)")
    out = REPO / "bench" / "results" / "reshard_window.json"
    if a.tag:
        out = REPO / "bench" / "results" / f"reshard_window-{a.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
