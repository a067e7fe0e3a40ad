# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Shared by the evacuation benchmarks (bench/evacuate_*_bench.py).

* :func:`bench_lab` - a lab of the bench's own (``lab up`` in a fresh home under
  /var/tmp on a free base port below 30000, or ``$BENCH_LAB_BASE_PORT``, brought
  down by pid at exit), or the running lab named by ``$LAB_HOME`` (left as it is);
* :func:`best_of` - interleaved baseline/candidate timing, best of N (the machine
  is shared, so single runs are noisy);
* :func:`rounds` - interleaved rounds that keep every time (best, median, and
  per-round pairs for paired ratios), with the load average around each round;
* :func:`save` - results as JSON under bench/results/ (git-ignored).
"""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = [sys.executable, "-m", "manta_lab.cli"]
sys.path.insert(0, str(REPO / "lab"))
sys.path.insert(0, str(REPO / "tests"))


class BenchLab:
    def __init__(self, home, own):
        self.home = home
        self.own = own

    def run(self, *args, timeout=900):
        p = subprocess.run([*LAB, "--home", self.home, *map(str, args)], capture_output=True,
                           text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"lab {' '.join(map(str, args))}: {p.stdout}\n{p.stderr}")
        return p.stdout

    @property
    def status(self):
        return json.loads(self.run("status", "--json"))

    def env(self):
        st = self.status
        return {"LAB_HOME": self.home, "MANTA_ZK_SERVERS": st["zookeeper"]["connect"],
                "MANTA_SAPI_URL": st["apis"]["sapi"]}

    def primary_dsn(self, shard):
        for p in self.status["shards"][shard]["peers"]:
            if p.get("role") == "primary":
                return p["dsn"]
        raise RuntimeError(f"no primary for {shard}")

    def down(self):
        if self.own:
            subprocess.run([*LAB, "--home", self.home, "down"], capture_output=True, timeout=300)
            shutil.rmtree(self.home, ignore_errors=True)


def _free_base():
    from manta_lab import config
    for base in (27000, 12000, 15000, 18000, 21000):
        probe = [base + o for o in (0, 10, 11, 12, 101, 102, 151, 152)]
        probe += [base + 300 + k for k in range(1, 33)] + list(range(base + 1000, base + 1040))
        if all(config.port_free(p) for p in probe):
            return base
    raise RuntimeError("no free lab base port below 30000")


def bench_lab(storage_nodes=None):
    """The lab to measure on: $LAB_HOME if set (kept), else a fresh one (removed at exit)."""
    if os.environ.get("LAB_HOME"):
        return BenchLab(os.environ["LAB_HOME"], own=False)
    home = tempfile.mkdtemp(prefix="evac-bench-", dir="/var/tmp")
    os.chmod(home, 0o755)
    lab = BenchLab(home, own=True)
    atexit.register(lab.down)
    args = ["up", "--base-port", os.environ.get("BENCH_LAB_BASE_PORT") or _free_base()]
    if storage_nodes:
        args += ["--storage-nodes", storage_nodes]
    t0 = time.monotonic()
    lab.run(*args)
    print(f"bench lab up in {time.monotonic() - t0:.1f}s at {home}", flush=True)
    return lab


def best_of(n, *fns):
    """Run fns interleaved n times; returns the best (smallest) time of each."""
    best = [float("inf")] * len(fns)
    for _ in range(n):
        for i, fn in enumerate(fns):
            t = fn()
            best[i] = min(best[i], t)
    return best


def rounds(n, fns, between=None, alternate=True):
    """Run the named callables ``fns`` ({name: fn() -> seconds}) in ``n`` interleaved
    rounds; with ``alternate`` every other round runs them in reverse order, so no side
    always runs first (or right after the other). ``between(name)`` runs untimed after
    each call. Returns {"rounds": [{name: seconds, "load": [1-min load before, after]}],
    name: {"best", "median", "all"}}."""
    import statistics
    names = list(fns)
    out = {"rounds": []}
    for r in range(n):
        order = names if not alternate or r % 2 == 0 else names[::-1]
        rec = {"order": order, "load": [round(os.getloadavg()[0], 2)]}
        for name in order:
            rec[name] = fns[name]()
            if between is not None:
                between(name)
        rec["load"].append(round(os.getloadavg()[0], 2))
        out["rounds"].append(rec)
    for name in names:
        ts = [rec[name] for rec in out["rounds"]]
        out[name] = {"best": min(ts), "median": statistics.median(ts), "all": ts}
    return out


def save(name, data):
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"evacuate_{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    data = dict(data, machine={"cpus": os.cpu_count(), "load": os.getloadavg()})
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"results: {path}")
    return path
